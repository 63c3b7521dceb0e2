"""Sweep plots (matplotlib, Agg, no display needed).

- :func:`plot_line` — one swept vector: a metric against η with its 95% CI as a band;
- :func:`plot_heatmap` — two swept vectors: the metric over the (η₁, η₂) grid,
  one annotated cell per point, like Fig. 2 of Liang et al. (arXiv:2504.20106).

Figures are drawn on a private ``Figure`` (no pyplot global state, safe in
threads) and written atomically: the file appears complete or not at all.
The format follows the suffix (``.png``, ``.svg``, ``.pdf``).  matplotlib is
the optional ``eval`` extra (``pip install 'pvreg[eval]'``); without it a
:class:`MissingDependencyError` says so.  Checking that an output path may be
written (not the registry, not an input) is the caller's job.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import EvalError, MissingDependencyError

if TYPE_CHECKING:
    from pvreg.schemas.evaluation import MetricValue

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("plots need matplotlib, which is not installed: pip install 'pvreg[eval]'") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: str | os.PathLike[str]) -> Path:
    from pvreg.registry.files import write_bytes_atomic

    path = Path(out)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EvalError(f"plot file {path} must end in {', '.join(_FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _value(v: MetricValue | float | None) -> float:
    if v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    return float(v.value)


def plot_line(
    etas: Sequence[float],
    values: Sequence[MetricValue],
    out: str | os.PathLike[str],
    *,
    metric: str,
    vector: str,
    title: str | None = None,
) -> Path:
    """``metric`` against η of ``vector``, points in η order, with the CI band from ``ci_low``/``ci_high``."""
    if not etas or len(etas) != len(values):
        raise EvalError(f"a line plot needs one value per η: got {len(etas)} η and {len(values)} values")
    order = sorted(range(len(etas)), key=lambda i: etas[i])
    x = [float(etas[i]) for i in order]
    y = [values[i].value for i in order]
    lo = [values[i].ci_low for i in order]
    hi = [values[i].ci_high for i in order]
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.fill_between(x, lo, hi, alpha=0.25, linewidth=0, label=f"{values[0].level:.0%} CI")
    ax.plot(x, y, marker="o", label=metric)
    ax.set_xlabel(f"η ({vector})")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs η of {vector}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, out)


def plot_heatmap(
    x_etas: Sequence[float],
    y_etas: Sequence[float],
    values: Sequence[Sequence[MetricValue | float | None]],
    out: str | os.PathLike[str],
    *,
    metric: str,
    x_vector: str,
    y_vector: str,
    title: str | None = None,
    annotate: bool = True,
) -> Path:
    """``values[j][i]`` (η_y = ``y_etas[j]``, η_x = ``x_etas[i]``) as a colour grid; None leaves a cell blank."""
    if not x_etas or not y_etas:
        raise EvalError("a heatmap needs at least one η on each axis")
    if len(values) != len(y_etas) or any(len(row) != len(x_etas) for row in values):
        raise EvalError(f"a heatmap needs {len(y_etas)} rows of {len(x_etas)} values (one per η_y, η_x)")
    xs = sorted(range(len(x_etas)), key=lambda i: x_etas[i])
    ys = sorted(range(len(y_etas)), key=lambda j: y_etas[j])
    grid = [[_value(values[j][i]) for i in xs] for j in ys]
    fig = _figure(1.2 + 0.55 * len(xs) + 1.5, 1.2 + 0.45 * len(ys) + 0.8)
    ax = fig.add_subplot()
    import numpy as np

    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    image = ax.imshow(data, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xs)), [f"{x_etas[i]:g}" for i in xs])
    ax.set_yticks(range(len(ys)), [f"{y_etas[j]:g}" for j in ys])
    ax.set_xlabel(f"η ({x_vector})")
    ax.set_ylabel(f"η ({y_vector})")
    ax.set_title(title or metric)
    fig.colorbar(image, ax=ax, label=metric)
    if annotate:
        finite = data.compressed()
        mid = float((finite.min() + finite.max()) / 2) if finite.size else 0.0
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(
                        c,
                        r,
                        f"{v:.3g}",
                        ha="center",
                        va="center",
                        fontsize="x-small",
                        color="black" if v > mid else "white",
                    )
    return _save(fig, out)
