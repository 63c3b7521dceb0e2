"""``pvreg eval``, ``pvreg evals`` and ``pvreg sweep``: argument parsing and rendering only.

All work is :meth:`Registry.evaluate` / :meth:`Registry.sweep`; torch and
transformers load there, never at CLI start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pvreg.cli.output import emit_json, say, short, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt, target_text
from pvreg.registry.errors import EvalError, SpecError

if TYPE_CHECKING:
    from pvreg.schemas.evaluation import EvaluationRecord

PairsOpt = Annotated[
    list[str] | None,
    typer.Option("--pairs", help="[LABEL=]PATH preference pairs (any format `pvreg train` reads; repeatable)."),
]
TextOpt = Annotated[
    list[str] | None,
    typer.Option("--text", help="[LABEL=]PATH plain text: perplexity and KL from the base (repeatable)."),
]
ChoicesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--choices", help="[LABEL=]PATH JSONL question/choices/answer: multiple-choice accuracy (repeatable)."
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Score only the first N items of every set.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu (default), cuda, cuda:1, mps.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap intervals.")]
BootstrapOpt = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples per 95% interval.")]
KlTopKOpt = Annotated[
    int | None,
    typer.Option("--kl-top-k", help="KL over the base's K most likely tokens per position (default: full vocabulary)."),
]
MethodOpt = Annotated[str | None, typer.Option("--method", help="Merge method: linear (default), ties, dare_*.")]
DensityOpt = Annotated[float | None, typer.Option("--density", help="Kept fraction for ties/dare.")]


def _terms(tokens: list[str] | None, spec: Path | None) -> Any:
    from pvreg.registry.merge.spec import load_spec_file

    if spec is not None and tokens:
        raise SpecError("give the terms either as tokens or with --spec FILE, not both")
    if spec is not None:
        return load_spec_file(spec)
    return list(tokens) if tokens else None


def _ci(v: Any) -> str:
    return f"[{v.ci_low:.4g}, {v.ci_high:.4g}]"


def render(record: EvaluationRecord) -> None:
    """One table row per eval set and metric."""
    t = record.target
    on_base = f" on base {short(t.base_fingerprint, 16)}" if t.base_fingerprint else ""
    say(f"evaluation #{record.id}: {target_text(record)}{on_base}")
    kinds = {s.label: s for s in record.eval_sets}
    rows: list[list[Any]] = []
    for label, metrics in record.metrics.items():
        s = kinds.get(label)
        for name, v in metrics.items():
            rows.append([label, s.kind if s else "-", name, f"{v.value:.4g}", _ci(v), v.n])
    for name, value in record.scalar_metrics.items():
        rows.append(["lm-eval", "lm-eval", name, f"{value:.4g}", "-", "-"])
    table(["SET", "KIND", "METRIC", "VALUE", "95% CI", "N"], rows)


def eval_(
    ctx: typer.Context,
    tokens: Annotated[
        list[str] | None,
        typer.Argument(help="Composition terms REF[:COEF] (applied in memory on --base).", show_default=False),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Evaluate this model directory instead.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="YAML/JSON ComposeSpec file instead of terms.")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model dir (default: the registry's known local copy).")
    ] = None,
    pairs: PairsOpt = None,
    text: TextOpt = None,
    choices: ChoicesOpt = None,
    lm_eval_task: Annotated[
        list[str] | None,
        typer.Option("--lm-eval-task", help="lm-evaluation-harness task name or YAML path (repeatable)."),
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = None,
    seed: SeedOpt = 0,
    n_bootstrap: BootstrapOpt = 1000,
    kl_top_k: KlTopKOpt = None,
    method: MethodOpt = None,
    density: DensityOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure a model, or a composition applied in memory on its base; the result is stored."""
    terms = _terms(tokens, spec)
    if model is not None and terms is not None:
        raise EvalError("give either --model DIR or composition terms (with --base), not both")
    with open_registry(ctx) as reg:
        record = reg.evaluate(
            terms,
            model=model,
            base=base,
            pairs=pairs or [],
            text=text or [],
            choices=choices or [],
            lm_eval_tasks=lm_eval_task or [],
            limit=limit,
            batch_size=batch_size,
            device=device,
            seed=seed,
            n_bootstrap=n_bootstrap,
            kl_top_k=kl_top_k,
            method=method,
            density=density,
        )
    if as_json:
        emit_json(record)
        return
    render(record)


def headline(record: EvaluationRecord) -> str:
    """The first metric of every set, for one-line listings (``evals``, ``show``)."""
    parts = []
    for label, metrics in record.metrics.items():
        if metrics:
            name, v = next(iter(metrics.items()))
            parts.append(f"{label}: {name}={v.value:.4g} {_ci(v)}")
    return "; ".join(parts) or "-"


def evals(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="Only evaluations of compositions with this version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stored evaluations (of one version's compositions, with REF)."""
    with open_registry(ctx) as reg:
        records = reg.evaluations(ref)
    if as_json:
        emit_json(records)
        return
    if not records:
        say("no evaluations recorded")
        return
    rows = []
    for r in records:
        target = target_text(r)
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-"
        rows.append([r.id, created, target, ",".join(s.label for s in r.eval_sets), headline(r)])
    table(["ID", "CREATED", "TARGET", "SETS", "RESULTS"], rows)
    sys.stdout.flush()
