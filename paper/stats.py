"""What paper/report.py computes from pvreg's outputs: metrics with intervals, differences, monotonicity.

A difference between two points (η=1 vs η=0, p1+p2 vs p1+p2+p3) gets a normal-approximation interval
from the two bootstrap intervals, Δ ± 1.96·√(se₁² + se₂²) with se = (high − low)/3.92.  Both points are
measured on the same items, whose scores are positively correlated, so this interval is wider than a
paired one would be: a difference it calls clear is clear.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

Z = 1.959964


@dataclass(frozen=True)
class M:
    """A metric value with its 95% interval and the number of items it is over."""

    value: float
    low: float
    high: float
    n: int

    @property
    def se(self) -> float:
        return (self.high - self.low) / (2 * Z)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def diff(a: M, b: M) -> M:
    """b − a with the normal-approximation interval described in the module docstring."""
    d = b.value - a.value
    half = Z * math.hypot(a.se, b.se)
    return M(d, d - half, d + half, min(a.n, b.n))


def fmt_diff(d: M, digits: int = 3) -> str:
    return f"{d.value:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def as_metric(obj: dict[str, Any]) -> M:
    return M(float(obj["value"]), float(obj["ci_low"]), float(obj["ci_high"]), int(obj["n"]))


def read_sweep(path: Path) -> tuple[list[str], dict[tuple[float, ...], dict[tuple[str, str], M]]]:
    """(swept vectors as name@version, {coefficients: {(eval set, metric): M}}) from a sweep.csv."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    axes = [k for k in rows[0] if "@" in k]
    points: dict[tuple[float, ...], dict[tuple[str, str], M]] = {}
    for r in rows:
        key = tuple(float(r[a]) for a in axes)
        points.setdefault(key, {})[(r["eval_set"], r["metric"])] = M(
            float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n"])
        )
    return axes, points


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def monotone(values: list[float]) -> str:
    inc = all(b >= a for a, b in pairwise(values))
    strict = all(b > a for a, b in pairwise(values))
    if strict:
        return "yes (strictly increasing)"
    if inc:
        return "yes (non-decreasing)"
    drops = sum(1 for a, b in pairwise(values) if b < a)
    return f"no ({drops} decrease{'s' if drops > 1 else ''})"


def verdict(d: M) -> str:
    if d.low > 0:
        return "up, interval excludes 0"
    if d.high < 0:
        return "down, interval excludes 0"
    return "interval includes 0"
