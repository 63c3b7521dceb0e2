"""The README demo (tests/demo/run.sh) runs end to end with the installed ``pvreg``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent / "demo" / "run.sh"


def test_demo_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PVREG_HOME", None)
    r = subprocess.run(["bash", str(DEMO), str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "+ pvreg --registry" in r.stdout
    assert "generated ids:" in r.stdout
    assert "helpful@1:1 harmless@1:0.7 concise@1:0.3" in r.stdout
    merged = tmp_path / "demo" / "merged"
    assert (merged / "model.safetensors.index.json").exists() and (merged / "tokenizer.json").exists()
