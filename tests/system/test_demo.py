"""The README's main job and its examples run as written.

`make demo` is `tests/demo/run.sh demo` in the venv; this runs the same script,
then the README's Quickstart shell block, its "Training a vector" worked example and
its Python API block against the demo's output, from the directory that holds `demo/`
(as a user would).  The demo's before/after table is read back and must show every
trained preference moving the right way; the worked example's θ+ − θ− is checked
against the stored vector here, with safetensors and torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
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
    started = time.perf_counter()
    r = subprocess.run(["bash", str(DEMO), "demo"], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"demo took {time.perf_counter() - started:.0f} s")
    return cwd, env, r.stdout


def test_demo_runs(demo) -> None:
    cwd, _, stdout = demo
    assert "+ pvreg --registry" in stdout
    assert "generated ids:" in stdout
    assert "helpful@1:1 harmless@1:0.7 concise@1:0.3" in stdout
    merged = cwd / "demo" / "merged"
    assert (merged / "model.safetensors.index.json").exists() and (merged / "tokenizer.json").exists()
    for name in ("helpful", "harmless", "concise"):
        assert f"+ pvreg --registry demo/registry train {name} --base demo/base" in stdout
        assert (cwd / "demo" / "vectors" / f"{name}.safetensors").is_file()
    assert "trained:     full DPO, seed 0, lr 0.001, beta 0.1" in stdout  # pvreg show helpful


def test_demo_scores_rise_after_composing(demo) -> None:
    """The before/after table: every composed preference is preferred more often on held-out prompts."""
    _, _, stdout = demo
    rows = {}
    for line in stdout.split("held-out preference score", 1)[1].splitlines()[2:5]:
        name, *cells = line.split()
        rows[name] = [float(c) for c in cells]  # accuracy and mean margin, before then after
    assert set(rows) == {"helpful", "harmless", "concise"}, stdout
    for name, (acc_before, margin_before, acc_after, margin_after) in rows.items():
        assert acc_after >= 0.9 and acc_after > acc_before, (name, rows[name])
        assert margin_after > margin_before + 0.5, (name, rows[name])


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


def test_readme_training_block(demo) -> None:
    import torch
    from safetensors.torch import load_file

    cwd, env, _ = demo
    script = "set -euo pipefail\n" + _block("Training a vector (`pvreg train`)", "bash")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trained:     full DPO, seed 0, lr 0.001, beta 0.1" in r.stdout
    assert "yes-no@2" in r.stdout  # the LoRA version
    runs = cwd / "demo" / "yes-no-runs"
    pos, neg = (load_file(str(runs / side / "model.safetensors")) for side in ("positive", "negative"))
    from pvreg import Registry

    with Registry.open(cwd / "demo" / "registry") as reg:
        stored = load_file(str(reg.blob_path("yes-no@1")))
        assert reg.resolve("yes-no@2").provenance["training"]["method"] == "lora"
    assert stored and all(torch.equal(phi, pos[n] - neg[n]) for n, phi in stored.items())
    assert (cwd / "demo" / "yes-no-merged" / "model.safetensors.index.json").exists()


def test_readme_python_api_block(demo) -> None:
    cwd, env, _ = demo
    r = subprocess.run([sys.executable, "-c", _block("Python API", "python")], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "helpful" in r.stdout
