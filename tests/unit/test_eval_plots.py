"""Sweep plots: real image files, drawn where the data says, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pvreg.registry.errors import EvalError
from pvreg.registry.evaluation.plots import plot_heatmap, plot_line
from pvreg.schemas.evaluation import MetricValue

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mv(value: float, half: float = 0.05) -> MetricValue:
    return MetricValue(value=value, ci_low=value - half, ci_high=value + half, n=50)


def pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]


def test_line_plot_with_ci_band(tmp_path: Path) -> None:
    etas = [1.0, -1.0, 0.0, 0.5, 2.0]  # any order: drawn sorted by η
    out = plot_line(etas, [mv(0.1 * e + 0.5) for e in etas], tmp_path / "acc.png", metric="accuracy", vector="helpful")
    assert out == tmp_path / "acc.png" and out.read_bytes()[:8] == PNG_MAGIC
    img = pixels(out)
    assert img.shape == (350, 500, 3)
    # Something is drawn: besides the white background, the line's colour and the lighter band's.
    colours = {tuple(c) for c in (img.reshape(-1, 3) * 255).round().astype(int)[::7]}
    assert len(colours) > 20
    assert [p.name for p in tmp_path.iterdir()] == ["acc.png"]  # no temporary left behind


def test_wider_ci_paints_more(tmp_path: Path) -> None:
    """The band really comes from ci_low/ci_high: a wider interval colours more pixels."""
    etas = [0.0, 1.0, 2.0]

    def coloured(half: float) -> int:
        p = plot_line(etas, [mv(0.5, half), mv(0.6, half), mv(0.4, half)], tmp_path / f"b{half}.png",
                      metric="m", vector="v")
        img = pixels(p)
        return int((np.abs(img - 1.0).sum(axis=2) > 0.05).sum())

    assert coloured(0.2) > coloured(0.01)


def test_heatmap(tmp_path: Path) -> None:
    xs, ys = [0.0, 0.5, 1.0], [-1.0, 0.0]
    values = [[mv(x + y) for x in xs] for y in ys]
    values[0][1] = None  # a missing point leaves a blank cell
    out = plot_heatmap(xs, ys, values, tmp_path / "grid.svg", metric="reward_margin",
                       x_vector="helpful", y_vector="harmless")
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    # matplotlib's SVG keeps each text as a comment: the axis labels and one annotation per present cell.
    assert "<!-- η (helpful) -->" in text and "<!-- η (harmless) -->" in text and "<!-- reward_margin -->" in text
    assert "<!-- -1 -->" in text and "<!-- 0.5 -->" in text
    assert "<!-- -0.5 -->" not in text  # the missing cell (η_y = -1, η_x = 0.5) has no annotation
    png = plot_heatmap(xs, ys, [[x * y for x in xs] for y in ys], tmp_path / "grid.png", metric="m",
                       x_vector="a", y_vector="b", annotate=False)
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("call, match", [
    (lambda d: plot_line([], [], d / "x.png", metric="m", vector="v"), "one value per η"),
    (lambda d: plot_line([0.0, 1.0], [mv(1)], d / "x.png", metric="m", vector="v"), "one value per η"),
    (lambda d: plot_line([0.0], [mv(1)], d / "x.jpg", metric="m", vector="v"), "must end in .png, .svg, .pdf"),
    (lambda d: plot_heatmap([0.0], [], [], d / "x.png", metric="m", x_vector="a", y_vector="b"), "at least one η"),
    (lambda d: plot_heatmap([0.0, 1.0], [0.0], [[1.0]], d / "x.png", metric="m", x_vector="a", y_vector="b"),
     "1 rows of 2 values"),
])
def test_bad_plot_requests(tmp_path: Path, call, match: str) -> None:
    with pytest.raises(EvalError, match=match):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []
