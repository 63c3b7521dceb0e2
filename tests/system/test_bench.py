"""The benchmark scripts (`make bench`, bench/bench_scoring.py) still run end to end, at a toy size.

The real figures come from `python bench/run.py` on a 0.5B model; this only
keeps the script from rotting (mergekit is benchmark-only, so it is skipped).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.paths import REPO


def test_bench_harness_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    # --readme puts the same report between the README's markers and leaves the rest as it was.
    readme = tmp_path / "README.md"
    readme.write_text("# intro\n<!-- bench-results:begin -->\nold table\n<!-- bench-results:end -->\n\nafter\n")
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--params", "3e6", "--repeats", "1", "--skip-mergekit",
         "--list-versions", "30", "--cold-params", "3e6", "--cold-repeats", "1", "--skip-lora",
         "--workdir", str(tmp_path / "work"), "--out", str(out), "--readme", str(readme)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = out.read_text()
    # ... one heading level deeper, as a section of the README's "## Benchmarks".
    quoted = "\n".join("#" + ln if ln.startswith("#") else ln for ln in report.strip().splitlines())
    assert quoted.startswith("### pvreg benchmark") and "\n#### Targets\n" in quoted
    assert readme.read_text() == f"# intro\n<!-- bench-results:begin -->\n{quoted}\n<!-- bench-results:end -->\n\nafter\n"
    for needle in ("### Compose", "| pvreg compose |", "| I/O floor |", "| I/O floor, O_DIRECT write |",
                   "| cold I/O floor, O_DIRECT write |", "pvreg verify", "pvreg list", "### Targets",
                   "≥ 3× faster than mergekit", "(pvreg compose − import torch) ≤ 1.5× I/O floor",
                   "≤ 1.25× cold I/O floor", "extraction (start-up excluded", "byte-identical across the 1 warm runs",
                   "independent float64 computation within one bf16 rounding | 0 of",
                   "proposed: warm (pvreg compose − import torch) ≤ I/O floor + output sha256",
                   "proposed: extraction (− import torch) ≤ its I/O floor + sha256 of θ+ and blob",
                   "sha256 of the bytes each must hash, in memory, one core"):
        assert needle in report, needle
    # The CPU column is measured (GNU time or the wait4 wrapper), not left blank.
    row = next(ln for ln in report.splitlines() if ln.startswith("| pvreg compose |"))
    assert float(row.split("|")[5]) > 0, row


def test_bench_script_runs_and_prints_ratio(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_scoring.py"), "--pairs", "24", "--repeats", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "ratio pvreg / hand-written" in r.stdout
    assert "max |pvreg - hand-written| log-prob" in r.stdout


def test_compare_bench_runs_and_prints_ratios(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_compare.py"), "--params", "1e6", "--repeats", "1",
                        "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| pvreg similarity a b c |" in r.stdout and "× floor" in r.stdout
    worst = float(r.stdout.split("max |cosine difference| = ")[1].split(";")[0])
    assert worst < 1e-10


def test_lora_bench_runs_at_one_layer(tmp_path: Path) -> None:
    """bench/bench_lora.py (part of `make bench`) at one layer, two policies: the table and the bf16 re-check."""
    out = tmp_path / "lora.md"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_lora.py"), "--layers", "1", "--ranks", "8",
                        "--energies", "0.9", "--skip-mergekit", "--skip-svd", "--workdir", str(tmp_path),
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = out.read_text()
    assert "| rank 8 |" in table and "| energy 0.9 |" in table


def test_bench_refuses_a_readme_without_its_markers_before_running(tmp_path: Path) -> None:
    """A README the report could not be put into is refused at once (one line, exit 2), not after the run."""
    readme = tmp_path / "README.md"
    readme.write_text("# intro\n<!-- bench-results:begin -->\nno end marker\n")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--readme", str(readme)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {readme}: needs one '<!-- bench-results:begin -->' line before one '<!-- bench-results:end -->' line"
    ]
    assert readme.read_text() == "# intro\n<!-- bench-results:begin -->\nno end marker\n"
