"""``pvreg export-lora``: argument parsing and rendering only (the work is :meth:`Registry.export_lora`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pvreg.cli.output import emit_json, say, short, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt
from pvreg.registry.errors import SpecError, UserError


def export_lora(
    ctx: typer.Context,
    tokens: Annotated[
        list[str] | None,
        typer.Argument(
            help="REF, or terms REF[:COEF] such as helpful:1 harmless:-0.5 (bare REF = 1).", show_default=False
        ),
    ] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="YAML/JSON ComposeSpec file instead of terms.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Adapter directory to write (required).")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model dir (default: the registry's known local copy).")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Dense vectors: truncated SVD of this rank.")] = None,
    energy: Annotated[
        float | None, typer.Option("--energy", help="Dense vectors: smallest rank keeping this energy, per module.")
    ] = None,
    max_rank: Annotated[
        int | None, typer.Option("--max-rank", help="Re-factorise modules above this rank (vllm/sglang: 256).")
    ] = None,
    target: Annotated[str, typer.Option("--target", help="peft, vllm, sglang or lorax.")] = "peft",
    non_lora: Annotated[
        str, typer.Option("--non-lora", help="Norms, biases, embeddings, lm_head: refuse, drop or carry (peft).")
    ] = "refuse",
    dtype: Annotated[str | None, typer.Option("--dtype", help="Adapter dtype (default float32).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a vector or a mix Σ η·s·φ as a PEFT LoRA adapter, with its measured error."""
    from pvreg.registry.merge.spec import load_spec_file

    if spec is not None and tokens:
        raise SpecError("give the terms either as tokens or with --spec FILE, not both")
    if spec is None and not tokens:
        raise SpecError("nothing to export: give REF[:COEF] terms or --spec FILE")
    if out is None:
        raise UserError("--out DIR is required: the adapter directory to write")
    terms = load_spec_file(spec) if spec is not None else list(tokens or [])
    with open_registry(ctx) as reg:
        result = reg.export_lora(
            terms,
            out=out,
            base=base,
            rank=rank,
            energy=energy,
            max_rank=max_rank,
            target=target,
            non_lora=non_lora,
            dtype=dtype,
            force=force,
        )
    if as_json:
        emit_json(result)
        return
    r = result.report
    terms_text = " ".join(f"{t.ref}:{t.coefficient:g}{'' if t.exact else ' (svd)'}" for t in r.terms)
    say(f"exported {terms_text} -> {result.out} ({result.target})")
    ranks = [m.rank for m in r.modules]
    say(
        f"{len(r.modules)} LoRA modules, rank {min(ranks, default=0)}-{max(ranks, default=0)}; "
        f"relative error {r.overall_error:.3g} overall, {r.lora_error:.3g} on the LoRA modules"
    )
    if r.dropped:
        say(f"dropped {len(r.dropped)} tensor(s), {r.dropped_share:.3g} of the norm: see export_report.json")
    if r.carried:
        say(f"carried {len(r.carried)} tensor(s) as full weights (modules_to_save)")
    worst = sorted(r.modules, key=lambda m: -m.error)[:5]
    if worst and worst[0].error > 0:
        table(["MODULE", "RANK", "ERROR"], [[m.tensor, m.rank, f"{m.error:.3g}"] for m in worst])
    say(f"adapter sha256:{short(result.output_fingerprint)}  composition #{result.composition_id}")
