"""Sweep grid parsing: inclusive float ranges, comma lists, products, and every way a grid can be wrong."""

from __future__ import annotations

import itertools

import pytest
from pvreg.registry.errors import GridError, UserError
from pvreg.registry.evaluation import grid as g


@pytest.mark.parametrize("text, want", [
    ("-1:2:0.5", [-1, -0.5, 0, 0.5, 1, 1.5, 2]),
    ("0:1:0.1", [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    ("2:-1:-0.5", [2, 1.5, 1, 0.5, 0, -0.5, -1]),
    ("0:1:0.3", [0, 0.3, 0.6, 0.9]),            # stop not on the grid: not included
    ("0:1:0.333333333333", [0, 0.333333333333, 0.666666666666, 1.0]),  # within 1e-9 steps: snapped to stop
    ("1:1:0.5", [1]),
    ("0.5", [0.5]),
    ("0,0.5,1", [0, 0.5, 1]),
    (" 1 , -2 ,3e-1 ", [1, -2, 0.3]),
    ("0:1:0.25,2", [0, 0.25, 0.5, 0.75, 1, 2]),
    ("-0", [0.0]),
    ("1e-3:3e-3:1e-3", [0.001, 0.002, 0.003]),
])
def test_parse_values(text: str, want: list[float]) -> None:
    got = g.parse_values(text)
    assert got == want  # exact: decimal arithmetic, no 0.30000000000000004
    assert all(type(v) is float for v in got)


def test_float_steps_match_decimal_literals() -> None:
    # start + i*step in binary floating point drifts; the grid must be the decimal values as written.
    got = g.parse_values("-2:2:0.1")
    assert len(got) == 41 and got[0] == -2.0 and got[-1] == 2.0
    assert got == [round(-2 + i / 10, 10) for i in range(41)]
    assert 0.3 in got and 0.0 in got


@pytest.mark.parametrize("text, match", [
    ("", "no values"),
    ("   ", "no values"),
    ("0:1:0", "step 0"),
    ("0:1:-0.5", "goes away from stop"),
    ("1:0:0.5", "goes away from stop"),
    ("0:1", "must be start:stop:step"),
    ("0:1:0.5:2", "must be start:stop:step"),
    ("0,,1", "empty item"),
    ("0,1,", "empty item"),
    ("a", "not a number"),
    ("0:x:1", "not a number"),
    ("nan", "not a finite number"),
    ("inf", "not a finite number"),
    ("0:inf:1", "not a finite number"),
    ("1,1.0", "appears twice"),
    ("0:1:0.5,1", "appears twice"),
    ("0,-0", "appears twice"),
    ("0:1:1e-9", "more than 10000"),
    ("0:100000:1", "more than 10000"),
])
def test_bad_values(text: str, match: str) -> None:
    with pytest.raises(GridError, match=match) as info:
        g.parse_values(text, where="sweep axis helpful")
    assert str(info.value).startswith("sweep axis helpful: ")
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_parse_axis_and_grid() -> None:
    axes = g.parse_grid(["helpful=-1:2:0.5", "harmless@prod=0,1", "sha256:1f2e3d4c= 0.5 "])
    assert [a.ref for a in axes] == ["helpful", "harmless@prod", "sha256:1f2e3d4c"]
    assert axes[1].values == (0.0, 1.0)
    points = g.grid_points(axes)
    assert len(points) == 7 * 2 * 1 == g.grid_size(axes)
    want = [dict(zip(["helpful", "harmless@prod", "sha256:1f2e3d4c"], combo))
            for combo in itertools.product(axes[0].values, axes[1].values, axes[2].values)]
    assert points == want
    assert points[0] == {"helpful": -1.0, "harmless@prod": 0.0, "sha256:1f2e3d4c": 0.5}
    assert points[1]["harmless@prod"] == 1.0  # the last axis varies fastest


@pytest.mark.parametrize("tokens, match", [
    ([], "grid is empty"),
    (["helpful"], "must be REF=VALUES"),
    (["=0,1"], "must be REF=VALUES"),
    (["helpful="], "sweep axis helpful: no values"),
    (["helpful=1:0:1"], "sweep axis helpful: range '1:0:1' is empty"),
    (["helpful=0,1", "helpful=2"], "given twice"),
    (["a=0:99:1", "b=0:99:1", "c=0:9:1", "d=0:1:1"], "200000 points, more than 100000"),
])
def test_bad_grid(tokens: list[str], match: str) -> None:
    with pytest.raises(GridError, match=match):
        g.parse_grid(tokens)


def test_grid_points_of_nothing() -> None:
    with pytest.raises(GridError, match="grid is empty"):
        g.grid_points([])
