"""``pvreg sweep``: evaluate a grid of coefficients with one base load, storing every point as it is measured.

Per point: apply the composition (the ``fixed`` terms plus each axis at its η) in
place, score, revert bit-exactly (:func:`pvreg.registry.merge.apply.apply`).  The
base's reference log-probs for KL are computed once, before the first point.
Each point is stored as an evaluation the moment it is measured; a point whose
key (resolved spec, base fingerprint, eval set sha256s, options) is already
stored is reused, not measured again, so a re-run after Ctrl-C or with a wider
grid costs only the new points, and a changed eval file is measured afresh.

``--out`` is checked by the output guard before any model loads, and the files
are staged and published atomically.  Ctrl-C keeps the measured points (they
are already stored), writes the partial CSV/JSON, and ends with
:class:`SweepInterruptedError` (exit 130).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pvreg.registry.errors import GridError, OutputExistsError, SweepInterruptedError, opt
from pvreg.registry.evaluation.evalfiles import eval_files, load_eval_sets
from pvreg.registry.evaluation.evaluate import (
    Composition,
    composition_target,
    make_record,
    require_writable,
    resolve_composition,
    store_record,
)
from pvreg.registry.evaluation.measure import Measurer, ScoreOptions, check_device, evaluation_key, load_model
from pvreg.registry.storage import catalog

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store
    from pvreg.schemas.compose import ComposeSpec, ComposeTerm
    from pvreg.schemas.evaluation import SweepPoint, SweepResult


class SweepProgress(Protocol):
    """What the CLI's bar implements: the number of points, then one call per point."""

    def start(self, total: int) -> None: ...

    def advance(self, *, reused: bool) -> None: ...


def _axes_and_fixed(axes: Sequence[str], fixed: Sequence[str]) -> tuple[list[Any], list[ComposeTerm]]:
    from pvreg.registry.errors import InvalidReferenceError
    from pvreg.registry.evaluation.grid import parse_grid
    from pvreg.registry.merge.spec import parse_token
    from pvreg.registry.refs import parse_ref

    grid = parse_grid(axes)
    for axis in grid:
        try:
            parse_ref(axis.ref)
        except InvalidReferenceError as exc:
            raise GridError(f"sweep axis {axis.ref!r} is not a vector reference: {exc}") from None
    return grid, [parse_token(t) for t in fixed]


def _check_out(store: Store, out: Path, comp: Composition, files: Sequence[Path], *, force: bool) -> None:
    """The output guard: never the registry, the base, a blob or an eval file; not over a non-empty dir."""
    from pvreg.registry.storage.outputs import Protected, check_output, registry_paths

    protected = registry_paths(store.settings)
    protected.append(Protected(comp.base_path, "the base model"))
    for ref in comp.refs:
        protected.append(Protected(store.blob_path(ref), f"the blob of {ref}"))
    protected.extend(Protected(f, "an eval file") for f in files)
    check_output(out, protected)
    if out.is_symlink() and not force:
        raise OutputExistsError(f"{out}: already exists (a symbolic link; use {opt('force', True)} to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory; {opt('out')} is a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out}: already exists and is not empty (use {opt('force', True)} to replace it)")


def _point_spec(comp: Composition, fixed_n: int, etas: Sequence[float]) -> ComposeSpec:
    """The resolved spec with the axis terms (after the ``fixed`` ones) at this point's η."""
    terms = [
        t if i < fixed_n else t.model_copy(update={"coefficient": float(etas[i - fixed_n])})
        for i, t in enumerate(comp.spec.terms)
    ]
    return comp.spec.model_copy(update={"terms": terms})


def sweep(
    store: Store,
    axes: Sequence[str],
    *,
    base: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    pairs: Sequence[str | os.PathLike[str]] = (),
    text: Sequence[str | os.PathLike[str]] = (),
    choices: Sequence[str | os.PathLike[str]] = (),
    fixed: Sequence[str] = (),
    options: ScoreOptions | None = None,
    method: dict[str, Any] | None = None,
    force: bool = False,
    progress: SweepProgress | None = None,
) -> SweepResult:
    """Evaluate every point of the grid; write ``sweep.csv``, ``sweep.json`` and plots to ``out``."""
    from pvreg.schemas.compose import ComposeSpec, ComposeTerm
    from pvreg.schemas.evaluation import SweepPoint

    options = options or ScoreOptions()
    require_writable(store, "sweep")
    grid, fixed_terms = _axes_and_fixed(axes, fixed)
    sets = load_eval_sets(pairs=pairs, text=text, choices=choices, limit=options.limit)
    terms = [*fixed_terms, *(ComposeTerm(ref=a.ref, coefficient=1.0) for a in grid)]
    comp = resolve_composition(store, ComposeSpec(terms=terms), base, **(method or {}))
    out_path = Path(out)
    _check_out(store, out_path, comp, eval_files(sets), force=force)
    _require_matplotlib(len(grid))
    check_device(options.device)

    axis_refs = [t.ref for t in comp.spec.terms[len(fixed_terms) :]]
    fixed_map = {t.ref: t.coefficient for t in comp.spec.terms[: len(fixed_terms)]}
    from pvreg.registry.evaluation.grid import grid_points

    points = grid_points(grid)
    label = " ".join(f"{r}={','.join(f'{v:g}' for v in a.values)}" for r, a in zip(axis_refs, grid, strict=True))
    kl = any(s.kind == "text" for s in sets)
    done: list[SweepPoint] = []
    measured = reused = 0
    model: Any = None
    measurer: Measurer | None = None
    if progress is not None:
        progress.start(len(points))
    try:
        for point in points:
            etas = [point[a.ref] for a in grid]
            spec = _point_spec(comp, len(fixed_terms), etas)
            target = composition_target(comp, spec)
            key = evaluation_key(target, sets, options, kl=kl)
            with store.read() as conn:
                stored = catalog.evaluation_by_key(conn, key)
            if stored is not None:
                record = stored.model_copy(update={"reused": True})
                reused += 1
            else:
                if measurer is None:  # the one base load, only once a point needs measuring
                    model, tokenizer = load_model(comp.base_path, options.device, "base")
                    measurer = Measurer(model, tokenizer, sets, options)
                    if kl:
                        measurer.compute_references()
                record = _measure_point(store, measurer, spec, key, target, sets, options, label)
                measured += 1
            coefficients = dict(zip(axis_refs, etas, strict=True))
            done.append(SweepPoint(coefficients=coefficients, evaluation=record))
            if progress is not None:
                progress.advance(reused=stored is not None)
    except KeyboardInterrupt:
        result = _result(axis_refs, fixed_map, done, measured, reused, complete=False)
        written = _publish(store, result, out_path, force=force) if done else []
        where = f"; partial results in {out_path}" if written else ""
        raise SweepInterruptedError(
            f"interrupted after {len(done)} of {len(points)} points ({measured} measured and stored){where}",
            result=result.model_copy(update={"files": written, "out": str(out_path) if written else None}),
        ) from None
    finally:
        del model, measurer
    result = _result(axis_refs, fixed_map, done, measured, reused, complete=True)
    files = _publish(store, result, out_path, force=force)
    return result.model_copy(update={"files": files, "out": str(out_path)})


def _measure_point(
    store: Store,
    measurer: Measurer,
    spec: ComposeSpec,
    key: str,
    target: Any,
    sets: Sequence[Any],
    options: ScoreOptions,
    label: str,
) -> Any:
    from pvreg.registry.merge.apply import apply

    started = time.perf_counter()
    with apply(store, measurer.model, spec):
        metrics = measurer.measure()
    record = make_record(
        key,
        target,
        sets,
        metrics,
        options,
        refs=[t.ref for t in spec.terms],
        sweep=label,
        seconds=time.perf_counter() - started,
    )
    return store_record(store, record)


def _result(
    axes: list[str], fixed: dict[str, float], done: list[SweepPoint], measured: int, reused: int, *, complete: bool
) -> SweepResult:
    from pvreg.schemas.evaluation import SweepResult

    return SweepResult(axes=axes, fixed=fixed, points=done, measured=measured, reused=reused, complete=complete)


def _publish(store: Store, result: SweepResult, out: Path, *, force: bool) -> list[str]:
    """Stage every file beside ``out`` and rename the directory into place (``force`` replaces)."""
    from pvreg.registry.evaluation.sweepfiles import write_all
    from pvreg.registry.storage.staging import publish_dir, staging

    with staging(store.settings.pending_dir, out) as (tmp, rewrite):
        files = write_all(result, tmp)
        publish_dir(tmp, out, rewrite, force=force)
    return files


def _require_matplotlib(n_axes: int) -> None:
    """Plots are drawn only at the end: refuse up front rather than after an hour of scoring."""
    if n_axes not in (1, 2):
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from pvreg.registry.errors import MissingDependencyError

        raise MissingDependencyError(
            "sweep plots need matplotlib, which is not installed: pip install 'pvreg[eval]'"
        ) from None
