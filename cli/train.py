"""``pvreg train``: make a preference vector from preference pairs (θ+ and label-swapped θ− with DPO)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from pvreg.cli.output import emit_json, say
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt, describe, parse_tags

if TYPE_CHECKING:
    from pvreg.schemas.training import TrainOptionsKwargs


class StepProgress:
    """A rich bar (steps, loss, ETA) on a TTY for ``TrainProgress``; nothing otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None

    def start(self, total_steps: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("DPO θ+ then θ−"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, loss="-")

    def step(self, n: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=n, loss=f"{loss:.4f}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Vector name to register the new version under.", show_default=False)],
    base: Annotated[Path, typer.Option("--base", help="Base model directory (weights, config, tokenizer).")],
    data: Annotated[Path, typer.Option("--data", help="Preference pairs: JSONL/JSON, parquet or a datasets dir.")],
    dataset_label: Annotated[
        str | None, typer.Option("--dataset-label", help="Dataset label stored with the vector.")
    ] = None,
    method: Annotated[str | None, typer.Option("--method", help="lora (default) or full.")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", help="LoRA rank r (default 8).")] = None,
    lora_alpha: Annotated[float | None, typer.Option("--lora-alpha", help="LoRA alpha (default 16).")] = None,
    lora_targets: Annotated[
        list[str] | None, typer.Option("--lora-targets", help="Module names to adapt (repeat; default: all linear).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps per run.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Epochs per run (instead of --steps).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="DPO beta (default 0.1).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pairs per step (default 4).")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Gradient accumulation steps.")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens of prompt + completion.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the split, the order and both runs.")] = None,
    eval_fraction: Annotated[
        float | None, typer.Option("--eval-fraction", help="Held-out share (default 0.1).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu (default) or cuda.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for training.")] = None,
    keep_checkpoints: Annotated[
        Path | None, typer.Option("--keep-checkpoints", help="Keep θ+ and θ− here (positive/, negative/).")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Version message.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train θ+ on the pairs and θ− on the same pairs swapped (DPO), and register φ = θ+ − θ−."""
    tags = parse_tags(tag or [])
    given = {
        "method": method,
        "steps": steps,
        "epochs": epochs,
        "lr": lr,
        "beta": beta,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "max_length": max_length,
        "seed": seed,
        "eval_fraction": eval_fraction,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_targets": lora_targets,
        "device": device,
        "threads": threads,
    }
    # Options not given take TrainOptions' defaults; the values are validated there, with their names.
    options = cast("TrainOptionsKwargs", {k: v for k, v in given.items() if v is not None})
    progress = StepProgress()
    try:
        with open_registry(ctx) as reg:
            meta = reg.train(
                name,
                base=base,
                data=data,
                dataset_label=dataset_label,
                **options,
                keep_checkpoints=keep_checkpoints,
                message=message,
                tags=tags,
                progress=progress,
            )
    finally:
        progress.close()
    if as_json:
        emit_json(meta)
        return
    say(describe(meta))
    record = meta.provenance.get("training", {})
    for run in ("positive", "negative"):
        m = record.get(run) or {}
        acc = m.get("eval_reward_accuracy")
        say(
            f"  θ{'+' if run == 'positive' else '−'}: {m.get('steps')} steps, train loss {m.get('train_loss', 0):.4f}"
            + (f", held-out reward accuracy {acc:.3f}" if acc is not None else "")
        )
