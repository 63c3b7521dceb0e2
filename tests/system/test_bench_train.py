"""bench/bench_train.py (CPU s/step of LoRA and full DPO) still runs end to end, at a toy size.

The real figures come from ``python bench/bench_train.py`` on the 135M-parameter configuration; this only
keeps the script from rotting (a 2-layer model of the same widths, one row, both methods).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.paths import REPO

pytest.importorskip("trl")


def test_bench_train_runs_and_prints_both_methods_side_by_side() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_train.py"), "--small", "--batch-sizes", "1", "--max-lengths",
         "16", "--threads", "1", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| batch | max_len | threads | lora CPU s/step | full CPU s/step |" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("| 1 | 16 | 1 |"))
    lora, full = (float(cell) for cell in row.split("|")[4:6])
    assert lora > 0 and full > 0 and row.rstrip().endswith("x |")
