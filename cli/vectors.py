"""Commands over stored vectors: add, list, show, log, tag, untag, deprecate, rm, export."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pvreg.cli.output import emit_json, fmt_norm, say, short, table
from pvreg.cli.state import open_registry
from pvreg.registry.errors import UserError
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.schemas.evaluation import EvaluationRecord

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
RefArg = Annotated[str, typer.Argument(help="NAME, NAME@N, NAME@ALIAS or sha256:HEX.", show_default=False)]


def describe(meta: VectorMeta) -> str:
    return f"{meta.ref}  sha256:{short(meta.sha256)}  norm={fmt_norm(meta.norm)}"


def add(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="Vector name (optional when the file is a pvreg export).", show_default=False),
    ] = None,
    vector: Annotated[Path | None, typer.Option("--vector", help="A safetensors (or .bin) delta file.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model path, or a known base fingerprint.")] = None,
    positive: Annotated[
        Path | None, typer.Option("--positive", help="Checkpoint (or LoRA adapter) trained on the preference data.")
    ] = None,
    negative: Annotated[
        Path | None,
        typer.Option("--negative", help="Checkpoint (or LoRA adapter) trained with chosen/rejected swapped."),
    ] = None,
    finetuned: Annotated[
        Path | None, typer.Option("--finetuned", help="Fine-tuned checkpoint; the vector is finetuned - base.")
    ] = None,
    lora: Annotated[
        Path | None, typer.Option("--lora", help="PEFT LoRA adapter directory; the vector is its dense delta.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Stored dtype for built vectors: float32, bfloat16 or float16.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset the vector was trained on, e.g. PKU-SafeRLHF:helpful.")
    ] = None,
    sign: Annotated[
        int | None, typer.Option("--sign", help="+1 if the delta points toward the preference, -1 if away.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="Description of the vector name.")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Message for this version.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE metadata tag (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a vector and store it as the next version of NAME."""
    tags = parse_tags(tag or [])
    with open_registry(ctx) as reg:
        meta = reg.add(
            name,
            vector,
            base=base,
            positive=positive,
            negative=negative,
            finetuned=finetuned,
            lora=lora,
            dtype=dtype,
            dataset=dataset,
            sign=sign,
            description=description,
            message=message,
            tags=tags,
        )
    emit_json(meta) if as_json else say(describe(meta))


def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """One row per vector name: its latest version and how many there are."""
    with open_registry(ctx) as reg:
        entries = reg.list()
    if as_json:
        emit_json(entries)
        return
    if not entries:
        say("no vectors registered")
        return
    table(
        ["NAME", "LATEST", "VERSIONS", "BASE", "DATASET", "SIGN", "NORM"],
        [
            [
                e.name,
                e.version,
                e.versions,
                e.base_label or short(e.base_fingerprint),
                e.dataset or "-",
                f"{e.sign:+d}",
                fmt_norm(e.norm),
            ]
            for e in entries
        ],
    )


def show(ctx: typer.Context, ref: RefArg, as_json: JsonOpt = False) -> None:
    """Everything known about one version."""
    with open_registry(ctx) as reg:
        meta = reg.show(ref)
        base = reg.base_info(meta.base_fingerprint)
        evaluations = reg.evaluations(ref)  # the ref as given: a legacy name may not parse
    if as_json:
        # The version's metadata, plus its latest stored evaluation (what the text form shows) and how many exist.
        latest = evaluations[-1].model_dump(mode="json") if evaluations else None
        emit_json({**meta.model_dump(mode="json"), "evaluations": len(evaluations), "latest_evaluation": latest})
        return
    rows = [
        ("ref", meta.ref),
        ("state", meta.state),
        ("sha256", meta.sha256),
        ("size", f"{meta.size_bytes} bytes"),
        ("base", meta.base_fingerprint + (f" ({base.label})" if base and base.label else "")),
        ("dataset", meta.dataset or "-"),
        ("sign", f"{meta.sign:+d}"),
        ("norm", f"{meta.norm:.6g}"),
        ("dtype", meta.dtype),
        ("tensors", f"{meta.num_tensors} ({meta.num_params} parameters)"),
        ("kind", meta.kind),
        ("created", meta.created_at.isoformat()),
        ("aliases", ", ".join(meta.aliases) or "-"),
        ("tags", ", ".join(f"{k}={v}" for k, v in meta.tags.items()) or "-"),
        ("parents", ", ".join(_parent(p.ref, p.coefficient) for p in meta.parents) or "-"),
        ("message", meta.message or "-"),
        ("description", meta.description or "-"),
    ]
    rows.extend(_training_rows(meta.provenance.get("training")))
    if evaluations:
        rows.extend(evaluation_rows(evaluations[-1], len(evaluations)))
    for k, v in rows:
        say(f"{k + ':' if k else '':<13}{v}")


def target_text(record: EvaluationRecord) -> str:
    """What an evaluation measured, in compose-token form (or the model's fingerprint)."""
    t = record.target
    if t.kind == "model":
        return f"model {short(t.model_fingerprint, 16)}"
    return " ".join(f"{x['ref']}:{x['coefficient']:g}" for x in (t.spec or {}).get("terms", []))


def evaluation_rows(record: EvaluationRecord, count: int) -> list[tuple[str, str]]:
    """The latest stored evaluation of a version: one row per eval set, every metric with its interval."""
    created = record.created_at.strftime("%Y-%m-%d %H:%M:%S") if record.created_at else "-"
    rows = [("evaluated", f"#{record.id} {created}: {target_text(record)} ({count} evaluation(s); pvreg evals REF)")]
    for label, metrics in record.metrics.items():
        values = ", ".join(f"{m}={v.value:.4g} [{v.ci_low:.4g}, {v.ci_high:.4g}]" for m, v in metrics.items())
        rows.append(("", f"{label}: {values}"))
    return rows


def _training_rows(record: object) -> list[tuple[str, str]]:
    """The training summary of a vector made by ``pvreg train``."""
    if not isinstance(record, dict):
        return []
    opts, data = record.get("options") or {}, record.get("data") or {}
    rows = [
        (
            "trained",
            f"{record.get('method')} DPO, seed {opts.get('seed')}, lr {opts.get('lr')}, "
            f"beta {opts.get('beta')}, {record.get('wall_seconds', 0):.0f} s on {record.get('device')}",
        ),
        ("data", f"{data.get('rows')} pairs, sha256:{short(str(data.get('sha256', '')))}"),
    ]
    for run in ("positive", "negative"):
        m = record.get(run) or {}
        acc = m.get("eval_reward_accuracy")
        rows.append(
            (
                f"run {run[:3]}",
                f"{m.get('steps')} steps, loss {m.get('train_loss')}, eval loss "
                f"{m.get('eval_loss')}, reward accuracy {acc}",
            )
        )
    return rows


def _parent(ref: str, coefficient: float | None) -> str:
    return ref if coefficient is None else f"{ref}:{coefficient:g}"


def log(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Vector name.")], as_json: JsonOpt = False
) -> None:
    """All versions of NAME, newest first, with lineage."""
    with open_registry(ctx) as reg:
        metas = reg.log(name)
    if as_json:
        emit_json(metas)
        return
    table(
        ["VERSION", "STATE", "SHA256", "KIND", "NORM", "CREATED", "ALIASES", "PARENTS", "MESSAGE"],
        [
            [
                m.version,
                m.state,
                short(m.sha256),
                m.kind,
                fmt_norm(m.norm),
                m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                ",".join(m.aliases) or "-",
                ",".join(_parent(p.ref, p.coefficient) for p in m.parents) or "-",
                m.message or "-",
            ]
            for m in metas
        ],
    )


def tag(ctx: typer.Context, ref: RefArg, alias: Annotated[str, typer.Argument(help="Alias, e.g. prod.")]) -> None:
    """Point ALIAS of the vector at REF (moving it if it exists)."""
    with open_registry(ctx) as reg:
        meta = reg.tag(ref, alias)
    say(f"{meta.name}@{alias} -> {meta.ref}")


def untag(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Vector name.")],
    alias: Annotated[str, typer.Argument(help="Alias to remove.")],
) -> None:
    """Remove ALIAS from vector NAME."""
    with open_registry(ctx) as reg:
        reg.untag(name, alias)
    say(f"removed {name}@{alias}")


def deprecate(ctx: typer.Context, ref: RefArg) -> None:
    """Mark a version deprecated (a bare NAME no longer resolves to it)."""
    with open_registry(ctx) as reg:
        meta = reg.deprecate(ref)
    say(f"deprecated {meta.ref}")


def rm(ctx: typer.Context, ref: RefArg) -> None:
    """Remove a version's metadata (its blob stays until gc)."""
    with open_registry(ctx) as reg:
        meta = reg.rm(ref)
    say(f"removed {meta.ref} (blob sha256:{short(meta.sha256)} stays until gc)")


def export(
    ctx: typer.Context,
    ref: RefArg,
    file: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the vector with its metadata embedded (pvreg add restores it)."""
    with open_registry(ctx) as reg:
        out = reg.export(ref, file, force=force)
    say(f"wrote {out}")


def parse_tags(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--tag``) to a dict; a malformed pair is bad input."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or len(key) > 128:
            raise UserError(f"invalid tag {pair!r}: expected KEY=VALUE with a key of 1-128 characters")
        tags[key.strip()] = value
    return tags
