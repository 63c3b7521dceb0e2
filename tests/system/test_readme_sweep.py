"""The README's sweep example is real: this test runs the command it shows on the tiny model and compares.

It builds the evaluation Llama (``helpers.models``), registers the vector of
``helpers.evaldata.margin_vector`` (its effect on the pairs is known: the margin grows
linearly in η), runs ``pvreg sweep`` exactly as the README shows, and checks the
README's CSV excerpt against the CSV written.  ``PVREG_UPDATE_DOCS=1`` rewrites the
excerpt and ``docs/sweep-margin.png`` instead (then commit them).

The figures are compared to a relative 1e-4, not character for character: float32
matmuls round differently across CPU instruction sets and library releases (the KL
column moved in its sixth digit with the environment, code unchanged), while a stale excerpt (a
changed command, metric or model) moves them by far more.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

from helpers.evaldata import eval_files, margin_vector
from helpers.paths import REPO

README = REPO / "README.md"
PLOT = REPO / "docs" / "sweep-margin.png"
BLOCK = re.compile(r"(<!-- sweep-csv:begin -->\n```csv\n)(.*?)(```\n<!-- sweep-csv:end -->)", re.S)
COMMAND = "sweep m=-1:1:0.5 --base base --pairs prefer-w5=pairs.jsonl --text prose=text.txt --out sweep"
SHOWN = {"accuracy", "margin", "kl_per_token"}
REL = 1e-4


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _cells(csv: str) -> list[list[str | float]]:
    """The excerpt's cells, numbers parsed so they can be compared to ``REL``."""

    def cell(x: str) -> str | float:
        try:
            return float(x)
        except ValueError:
            return x

    return [[cell(x) for x in line.split(",")] for line in csv.splitlines()]


def _same(shown: str, written: str) -> bool:
    a, b = _cells(shown), _cells(written)
    return len(a) == len(b) and all(
        len(r) == len(q)
        and all(
            x == y
            if isinstance(x, str) or isinstance(y, str)
            else math.isclose(x, y, rel_tol=REL, abs_tol=1e-9)
            for x, y in zip(r, q, strict=True)
        )
        for r, q in zip(a, b, strict=True)
    )


def test_excerpt_comparison_tolerates_rounding_only() -> None:
    shown = "point,m@1,eval,metric,value\n0,-1,prose,kl_per_token,0.0589879\n"
    assert _same(shown, shown.replace("0.0589879", "0.058988"))
    assert not _same(shown, shown.replace("0.0589879", "0.0591"))
    assert not _same(shown, shown.replace("prose", "other"))
    assert not _same(shown, shown + "1,0,prose,kl_per_token,0\n")


def test_readme_sweep_excerpt_and_plot_are_generated(tmp_path: Path, cli, monkeypatch) -> None:
    files = eval_files(tmp_path)
    vec, pairs = margin_vector(files["base"], tmp_path / "m.safetensors", n=12)
    import json

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    monkeypatch.chdir(tmp_path)
    assert cli("add", "m", "--vector", vec, "--base", "base").exit_code == 0
    assert f"pvreg {COMMAND}" in README.read_text()
    r = cli(*COMMAND.split())
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    excerpt = "\n".join([lines[0], *(x for x in lines[1:] if x.split(",")[3] in SHOWN)]) + "\n"
    png = (tmp_path / "sweep" / "prefer-w5.margin.png").read_bytes()
    text = README.read_text()
    match = BLOCK.search(text)
    assert match, "README lacks the <!-- sweep-csv:begin --> block"
    if os.environ.get("PVREG_UPDATE_DOCS") == "1":
        README.write_text(text[: match.start(2)] + excerpt + text[match.end(2) :])
        PLOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "sweep" / "prefer-w5.margin.png", PLOT)
        return
    assert _same(match.group(2), excerpt), "README sweep excerpt is stale: rerun with PVREG_UPDATE_DOCS=1"
    assert _png_size(PLOT.read_bytes()) == _png_size(png)
