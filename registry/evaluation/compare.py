"""``similarity`` and ``diff`` of registered vectors: resolve, check, stream the statistics, draw.

The statistics themselves are :mod:`pvreg.registry.evaluation.similarity` (streaming, float64);
this module turns references into blob paths and signs, refuses what cannot be compared
before any tensor is read — unknown references, fewer than two vectors, vectors made for
different bases, an unknown grouping, a plot file that would land on the registry or an
input — every problem in one error, and writes the optional cosine heatmap atomically.

Registered vectors are compared as what compose adds, sᵢ·φᵢ (stored sign times blob), so a
vector registered with ``sign=-1`` has cosine −1 with its own blob registered with ``sign=1``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pvreg.registry.errors import (
    BaseMismatchError,
    EvalError,
    MissingDependencyError,
    OutputExistsError,
    PvregError,
    UnsafeOutputError,
    opt,
    raise_problems,
)

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store
    from pvreg.schemas.evaluation import DiffReport, GroupBy, SimilarityReport
    from pvreg.schemas.vector import VectorMeta

#: The groupings ``by`` accepts, in the order the messages list them.
GROUPINGS: tuple[str, ...] = ("tensor", "layer", "module-type")


def _resolve(store: Store, refs: Sequence[str], problems: list[PvregError]) -> list[VectorMeta]:
    """Each reference's version (a failure is added to ``problems``), then the one-base check."""
    metas: list[VectorMeta] = []
    for found in store.resolve_many(list(refs)):
        if isinstance(found, PvregError):
            problems.append(found)
        else:
            metas.append(found)
    bases = {m.base_fingerprint for m in metas}
    if len(bases) > 1:
        first = metas[0]
        other = next(m for m in metas if m.base_fingerprint != first.base_fingerprint)
        listing = ", ".join(f"{m.ref} -> {m.base_fingerprint[:16]}" for m in metas)
        problems.append(
            BaseMismatchError(
                f"cannot compare vectors made for different bases: {first.ref} is on base "
                f"{first.base_fingerprint[:16]} but {other.ref} is on {other.base_fingerprint[:16]} ({listing})",
                expected=first.base_fingerprint,
                actual=other.base_fingerprint,
            )
        )
    return metas


def _blobs(store: Store, metas: Sequence[VectorMeta], problems: list[PvregError]) -> list[Path]:
    paths: list[Path] = []
    for m in metas:
        try:
            paths.append(store.blob_path(m.ref))
        except PvregError as exc:
            problems.append(exc)
    return paths


def _check_plot(store: Store, plot: Path, blobs: Sequence[tuple[Path, str]], *, force: bool) -> list[PvregError]:
    """Every reason the heatmap may not be written to ``plot`` (empty when it may)."""
    from pvreg.registry.evaluation.plots import _FORMATS
    from pvreg.registry.storage.outputs import Protected, output_problems, registry_paths

    protected = [*registry_paths(store.settings), *(Protected(p, f"the blob of {ref}") for p, ref in blobs)]
    unsafe = output_problems(plot, protected)
    if unsafe:
        return [UnsafeOutputError("; ".join(unsafe))]
    problems: list[PvregError] = []
    if plot.suffix.lower() not in _FORMATS:
        problems.append(EvalError(f"{opt('plot')} {plot} must end in {', '.join(_FORMATS)}"))
    if plot.is_dir():
        problems.append(OutputExistsError(f"{opt('plot')} {plot}: is a directory"))
    elif (plot.exists() or plot.is_symlink()) and not force:
        problems.append(OutputExistsError(f"{plot}: already exists (use {opt('force', True)} to overwrite)"))
    try:
        import matplotlib  # noqa: F401 - only whether it is there
    except ImportError:
        problems.append(
            MissingDependencyError("plots need matplotlib, which is not installed: pip install 'pvreg[eval]'")
        )
    return problems


def similarity(
    store: Store,
    refs: Sequence[str],
    *,
    by: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    force: bool = False,
    chunk_elements: int | None = None,
) -> SimilarityReport:
    """See :meth:`pvreg.Registry.similarity`."""
    from pvreg.registry.evaluation.similarity import similarity as statistics

    problems: list[PvregError] = []
    if isinstance(refs, str):
        refs = [refs]
    if by is not None and by not in GROUPINGS:
        problems.append(EvalError(f"unknown grouping {by!r} for {opt('by')}: expected one of {', '.join(GROUPINGS)}"))
    if len(refs) < 2:
        given = f" (got only {refs[0]!r})" if refs else ""
        problems.append(EvalError(f"similarity needs at least two vectors{given}"))
    metas = _resolve(store, refs, problems)
    paths = _blobs(store, metas, problems) if not problems else []
    out = Path(plot) if plot is not None else None
    if out is not None:
        problems.extend(_check_plot(store, out, list(zip(paths, (m.ref for m in metas), strict=False)), force=force))
    raise_problems(problems)

    extra: dict[str, Any] = {} if chunk_elements is None else {"chunk_elements": chunk_elements}
    report = statistics(
        paths,
        labels=[m.ref for m in metas],
        group_by=cast("GroupBy | None", by),
        signs=[m.sign for m in metas],
        **extra,
    )
    if out is not None:
        write_heatmap(report.vectors, report.whole.cosine, out, overwrite=force)
    return report


def diff(store: Store, a: str, b: str, *, chunk_elements: int | None = None) -> DiffReport:
    """See :meth:`pvreg.Registry.diff`."""
    from pvreg.registry.evaluation.similarity import diff as tensor_diff

    problems: list[PvregError] = []
    metas = _resolve(store, [a, b], problems)
    paths = _blobs(store, metas, problems) if not problems else []
    raise_problems(problems)
    ma, mb = metas
    extra: dict[str, Any] = {} if chunk_elements is None else {"chunk_elements": chunk_elements}
    return tensor_diff(paths[0], paths[1], labels=(ma.ref, mb.ref), signs=(ma.sign, mb.sign), **extra)


def write_heatmap(
    labels: Sequence[str], cosine: Sequence[Sequence[float | None]], out: Path, *, overwrite: bool
) -> Path:
    """The cosine matrix as an annotated heatmap (−1 blue … +1 red), written atomically to ``out``.

    Without ``overwrite`` the final rename cannot replace a file that appeared meanwhile.
    """
    import math

    import numpy as np

    from pvreg.registry.evaluation.plots import _FORMATS, _figure
    from pvreg.registry.files import AtomicFile

    n = len(labels)
    grid = np.array([[math.nan if c is None else float(c) for c in row] for row in cosine], dtype=float)
    side = 2.2 + 0.7 * n
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(n), list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), list(labels))
    ax.set_title("cosine similarity")
    fig.colorbar(image, ax=ax, label="cosine")
    for i in range(n):
        for j in range(n):
            v = grid[i][j]
            text = "-" if math.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if abs(v) > 0.6 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format=_FORMATS[out.suffix.lower()])
    try:
        with AtomicFile(out, overwrite=overwrite) as f:
            f.write(buf.getvalue())
            f.commit()
    except FileExistsError:
        raise OutputExistsError(
            f"{out}: was created while the plot was drawn; left alone (use {opt('force', True)} to overwrite)"
        ) from None
    return out
