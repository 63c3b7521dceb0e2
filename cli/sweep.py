"""``pvreg sweep``: argument parsing, the progress bar and rendering only (the work is :meth:`Registry.sweep`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pvreg.cli.evaluate import (
    BatchOpt,
    BootstrapOpt,
    ChoicesOpt,
    DensityOpt,
    DeviceOpt,
    KlTopKOpt,
    LimitOpt,
    MethodOpt,
    PairsOpt,
    SeedOpt,
    TextOpt,
)
from pvreg.cli.output import emit_json, say
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt


class PointProgress:
    """A rich bar on a TTY (points done / total, measured vs reused, ETA); nothing otherwise."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._reused = 0

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("points ({task.fields[reused]} already stored)"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("sweep", total=total, reused=0)

    def advance(self, *, reused: bool) -> None:
        if self._progress is None:
            return
        self._reused += int(reused)
        self._progress.update(self._task, advance=1, reused=self._reused)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def sweep(
    ctx: typer.Context,
    axes: Annotated[
        list[str] | None,
        typer.Argument(
            help="NAME=GRID axes: start:stop:step or a comma list, e.g. helpful=-1:2:0.5.", show_default=False
        ),
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model dir (default: the registry's known local copy).")
    ] = None,
    pairs: PairsOpt = None,
    text: TextOpt = None,
    choices: ChoicesOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for sweep.csv, sweep.json and plots.")] = None,
    fixed: Annotated[
        list[str] | None, typer.Option("--fixed", help="REF:COEF held constant at every point (repeatable).")
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = None,
    seed: SeedOpt = 0,
    n_bootstrap: BootstrapOpt = 1000,
    kl_top_k: KlTopKOpt = None,
    method: MethodOpt = None,
    density: DensityOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a grid of coefficients (one base load; each point apply -> score -> revert, stored at once)."""
    from pvreg.registry.errors import EvalError

    if out is None:
        raise EvalError("a sweep needs --out DIR for sweep.csv, sweep.json and the plots")
    bar = PointProgress(enabled=not quiet)
    try:
        with open_registry(ctx) as reg:
            result = reg.sweep(
                axes or [],
                base=base,
                out=out,
                pairs=pairs or [],
                text=text or [],
                choices=choices or [],
                fixed=fixed or [],
                limit=limit,
                batch_size=batch_size,
                device=device,
                seed=seed,
                n_bootstrap=n_bootstrap,
                kl_top_k=kl_top_k,
                method=method,
                density=density,
                force=force,
                progress=bar,
            )
    finally:
        bar.close()
    if as_json:
        emit_json(result)
        return
    say(
        f"swept {' x '.join(result.axes)}: {len(result.points)} points, {result.measured} measured, "
        f"{result.reused} already stored -> {result.out}"
    )
    say(f"wrote {', '.join(result.files)}")
