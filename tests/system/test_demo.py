"""The README's main job and its examples run as written.

`make demo` is `tests/demo/run.sh demo` in the venv; this runs the same script,
then the README's Quickstart shell block and its Python API block against the
demo's output, from the directory that holds `demo/` (as a user would).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

DEMO = REPO / "tests" / "demo" / "run.sh"
README = (REPO / "README.md").read_text()


def _block(heading: str, lang: str) -> str:
    section = README.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under {heading}"
    return match.group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    cwd = tmp_path_factory.mktemp("user")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PVREG_HOME", None)
    r = subprocess.run(["bash", str(DEMO), "demo"], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, env, r.stdout


def test_demo_runs(demo) -> None:
    cwd, _, stdout = demo
    assert "+ pvreg --registry" in stdout
    assert "generated ids:" in stdout
    assert "helpful@1:1 harmless@1:0.7 concise@1:0.3" in stdout
    merged = cwd / "demo" / "merged"
    assert (merged / "model.safetensors.index.json").exists() and (merged / "tokenizer.json").exists()


def test_makefile_demo_runs_this_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "bash tests/demo/run.sh $(DEMO_DIR)" in makefile


def test_readme_quickstart_block(demo) -> None:
    cwd, env, _ = demo
    script = "set -euo pipefail\n" + _block("Quickstart", "bash")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"aliases": [\n    "prod"\n  ]' in r.stdout
    assert (cwd / "demo" / "merged-prod" / "model.safetensors.index.json").exists()
    assert (cwd / "demo" / "helpful-prod.safetensors").exists()


def test_readme_python_api_block(demo) -> None:
    cwd, env, _ = demo
    r = subprocess.run([sys.executable, "-c", _block("Python API", "python")], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "helpful" in r.stdout
