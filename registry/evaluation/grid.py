"""Sweep grids: which coefficients η each swept vector takes, and their cartesian product.

One axis is written ``REF=VALUES``; ``VALUES`` is a comma list whose items are
numbers or inclusive ranges ``start:stop:step``:

    helpful=-1:2:0.5          -> -1, -0.5, 0, 0.5, 1, 1.5, 2
    harmless=0,0.5,1          -> 0, 0.5, 1
    concise=0:1:0.25,2        -> 0, 0.25, 0.5, 0.75, 1, 2

Ranges are computed in decimal arithmetic from the text as written, so
``0:1:0.1`` yields 0.3 and not 0.30000000000000004, and ``stop`` is included
when it lies on the grid within a relative tolerance of 1e-9 steps.  A step
of 0, a step pointing away from ``stop``, a duplicate value, a non-finite
number or an empty grid is a :class:`GridError`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from pvreg.registry.errors import GridError

#: Largest number of values one axis may have (a typo such as ``0:1:1e-9`` must not allocate a billion floats).
MAX_AXIS_POINTS = 10_000
#: Largest number of points a whole grid may have.
MAX_GRID_POINTS = 100_000
#: How far (in steps) ``stop`` may be from the last grid value and still count as on the grid.
_TOLERANCE = Decimal("1e-9")


@dataclass(frozen=True)
class GridAxis:
    """One swept vector: its reference and the coefficients it takes, in the order written."""

    ref: str
    values: tuple[float, ...]


def _number(text: str, where: str) -> Decimal:
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise GridError(f"{where}: {text.strip()!r} is not a number") from None
    if not d.is_finite():
        raise GridError(f"{where}: {text.strip()!r} is not a finite number")
    return d


def _range(item: str, where: str) -> list[Decimal]:
    parts = item.split(":")
    if len(parts) != 3:
        raise GridError(f"{where}: range {item.strip()!r} must be start:stop:step")
    start, stop, step = (_number(x, where) for x in parts)
    if step == 0:
        raise GridError(f"{where}: range {item.strip()!r} has step 0")
    count = (stop - start) / step
    if count < -_TOLERANCE:
        raise GridError(
            f"{where}: range {item.strip()!r} is empty: step {parts[2].strip()} goes away from stop {parts[1].strip()}"
        )
    n = int((count + _TOLERANCE).to_integral_value(rounding=ROUND_FLOOR))
    if n + 1 > MAX_AXIS_POINTS:
        raise GridError(f"{where}: range {item.strip()!r} has {n + 1} values, more than {MAX_AXIS_POINTS}")
    values = [start + i * step for i in range(n + 1)]
    if abs(count - n) <= _TOLERANCE:
        values[-1] = stop  # on the grid within tolerance: end exactly at stop as written
    return values


def parse_values(text: str, *, where: str = "grid") -> list[float]:
    """The coefficients of one axis, in the order written (see the module docstring)."""
    if not text.strip():
        raise GridError(f"{where}: no values given")
    values: list[Decimal] = []
    for item in text.split(","):
        if not item.strip():
            raise GridError(f"{where}: empty item in {text.strip()!r}")
        values.extend(_range(item, where) if ":" in item else [_number(item, where)])
        if len(values) > MAX_AXIS_POINTS:
            raise GridError(f"{where}: more than {MAX_AXIS_POINTS} values")
    floats = [float(v) + 0.0 for v in values]  # + 0.0 folds -0 into 0
    seen: set[float] = set()
    for f in floats:
        if f in seen:
            raise GridError(f"{where}: value {f:g} appears twice in {text.strip()!r}")
        seen.add(f)
    return floats


def parse_axis(token: str) -> GridAxis:
    """``REF=VALUES`` -> :class:`GridAxis`."""
    ref, sep, values = token.partition("=")
    if not sep or not ref.strip():
        raise GridError(f"sweep axis {token!r} must be REF=VALUES, e.g. helpful=-1:2:0.5")
    ref = ref.strip()
    return GridAxis(ref, tuple(parse_values(values, where=f"sweep axis {ref}")))


def parse_grid(tokens: Iterable[str]) -> list[GridAxis]:
    """Every axis of a sweep; a reference may be swept once, and there must be at least one axis."""
    axes = [parse_axis(t) for t in tokens]
    if not axes:
        raise GridError("the sweep grid is empty: give at least one REF=VALUES axis")
    seen: set[str] = set()
    for axis in axes:
        if axis.ref in seen:
            raise GridError(f"sweep axis {axis.ref} is given twice")
        seen.add(axis.ref)
    grid_size(axes)
    return axes


def grid_size(axes: Sequence[GridAxis]) -> int:
    """Number of points of the product; refuses grids over :data:`MAX_GRID_POINTS`."""
    size = 1
    for axis in axes:
        size *= len(axis.values)
    if size > MAX_GRID_POINTS:
        raise GridError(f"the sweep grid has {size} points, more than {MAX_GRID_POINTS}")
    return size


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, float]]:
    """The cartesian product as ``{ref: η}`` maps; the first axis varies slowest."""
    if not axes:
        raise GridError("the sweep grid is empty: give at least one REF=VALUES axis")
    grid_size(axes)
    refs = [a.ref for a in axes]
    return [dict(zip(refs, combo, strict=True)) for combo in itertools.product(*(a.values for a in axes))]
