"""``pvreg compose`` and ``pvreg compositions``: argument parsing and rendering only.

All work is :meth:`Registry.compose`; torch is imported there, never at CLI
start-up, so ``pvreg --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pvreg.cli.output import emit_json, say, short, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt
from pvreg.registry.errors import SpecError


def compose(
    ctx: typer.Context,
    tokens: Annotated[
        list[str] | None,
        typer.Argument(
            help="Terms REF[:COEF], e.g. helpful:1 harmless@prod:-0.5 sha256:1f2e3d4c:0.3 (bare REF = 1).",
            show_default=False,
        ),
    ] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="YAML/JSON ComposeSpec file instead of tokens.")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model dir (default: the registry's known local copy).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output model directory (or .safetensors with --vector-only).")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="linear (default), ties, dare_linear or dare_ties.")
    ] = None,
    density: Annotated[float | None, typer.Option("--density", help="Kept fraction for ties/dare, in (0, 1].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for dare_* (default 0).")] = None,
    normalize: Annotated[
        bool | None, typer.Option("--normalize/--no-normalize", help="Scale each vector to unit L2 norm first.")
    ] = None,
    accumulate: Annotated[str | None, typer.Option("--accumulate", help="float32 (default) or float64.")] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Output dtype (default: the base's, per tensor).")
    ] = None,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Max shard size: bytes, 500MB, 2GB, 1GiB.")] = "5GB",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    vector_only: Annotated[bool, typer.Option("--vector-only", help="Write the combined vector, not a model.")] = False,
    register: Annotated[
        str | None, typer.Option("--register", help="Store the combined vector as NAME (with --vector-only).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cpu (default) or cuda: where a model's tensors are combined.")
    ] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge vectors into a base model: θ = θ_base + Σ η·s·φ."""
    from pvreg.cli.progress import TensorProgress
    from pvreg.registry.merge.spec import load_spec_file

    if spec is not None and tokens:
        raise SpecError("give the terms either as tokens or with --spec FILE, not both")
    if spec is None and not tokens:
        raise SpecError("nothing to compose: give REF[:COEF] tokens or --spec FILE")
    terms = load_spec_file(spec) if spec is not None else list(tokens or [])
    with open_registry(ctx) as reg, TensorProgress("composing", enabled=not quiet) as bar:
        result = reg.compose(
            terms,
            base=base,
            out=out,
            method=method,
            density=density,
            seed=seed,
            normalize=normalize,
            accumulate=accumulate,
            dtype=dtype,
            shard_size=shard_size,
            force=force,
            vector_only=vector_only,
            register=register,
            progress=bar,
            device=device,
        )
    if as_json:
        emit_json(result)
        return
    terms_text = " ".join(f"{t.ref}:{t.coefficient:g}" for t in result.spec.terms)
    where = result.out or "(registry only)"
    say(f"composed {terms_text} ({result.spec.method}) -> {where}")
    say(f"fingerprint {result.output_fingerprint}  composition #{result.composition_id}")
    if result.registered is not None:
        say(f"registered {result.registered.ref}  sha256:{short(result.registered.sha256)}")


def compositions(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every recorded compose run."""
    with open_registry(ctx) as reg:
        records = reg.compositions()
    if as_json:
        emit_json(records)
        return
    if not records:
        say("no compositions recorded")
        return
    table(
        ["ID", "CREATED", "METHOD", "TERMS", "KIND", "OUTPUT", "FINGERPRINT"],
        [
            [
                r.id,
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.method,
                " ".join(f"{t['ref']}:{t['coefficient']:g}" for t in r.spec.get("terms", [])),
                r.output_kind,
                r.output_path or "-",
                short(r.output_fingerprint),
            ]
            for r in records
        ],
    )
    sys.stdout.flush()
