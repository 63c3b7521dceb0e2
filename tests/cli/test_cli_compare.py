"""``pvreg similarity`` and ``pvreg diff`` as a user types them: JSON equal to the API's, tables, the README block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.factories import make_base, make_vector
from helpers.paths import REPO
from pvreg import Registry

README = (REPO / "README.md").read_text()


def register(cli, tmp_path: Path, base_dir: Path, base_tensors) -> None:
    """helpful@1, helpful@2 (layer 0 only), harmless, concise (layer 1 only, sign -1)."""
    names = sorted(base_tensors)
    specs = [
        ("helpful", 1, None, []),
        ("helpful", 2, [n for n in names if ".layers.0." in n], []),
        ("harmless", 3, None, []),
        ("concise", 4, [n for n in names if ".layers.1." in n], ["--sign", "-1"]),
    ]
    for i, (name, seed, chosen, extra) in enumerate(specs):
        f = tmp_path / f"v{i}.safetensors"
        make_vector(f, base_tensors, seed=seed, names=chosen)
        r = cli("add", name, "--vector", f, "--base", base_dir, *extra)
        assert r.exit_code == 0, r.stderr


@pytest.fixture
def seeded(cli, tmp_path, base_dir, base_tensors):
    register(cli, tmp_path, base_dir, base_tensors)


def test_json_is_the_api_report(cli, seeded) -> None:
    with Registry.open() as reg:
        sim = reg.similarity(["helpful", "harmless", "concise"], by="module-type").model_dump(mode="json")
        dif = reg.diff("helpful@1", "helpful@2").model_dump(mode="json")
    r = cli("similarity", "helpful", "harmless", "concise", "--by", "module-type", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == sim
    r = cli("diff", "helpful@1", "helpful@2", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == dif
    assert r.stderr == ""


def test_similarity_table(cli, seeded) -> None:
    with Registry.open() as reg:
        report = reg.similarity(["helpful", "harmless", "concise"], by="layer")
    r = cli("similarity", "helpful", "harmless", "concise", "--by", "layer")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith("3  concise@1"))
    cos = [f"{c:.4f}" for c in report.whole.cosine[2]]
    assert row.split()[-3:] == cos and cos[2] == "1.0000"
    layer1 = next(line for line in lines if line.startswith("layers.1 "))
    g = next(g for g in report.groups if g.group == "layers.1")
    assert f"{g.cosine[1][2]:.4f}" in layer1.split() and g.cosine[0][2] is None  # helpful@2 is layer 0 only
    layer0 = next(line for line in lines if line.startswith("layers.0 "))
    assert layer0.split()[-1] == "-"  # concise touches nothing in layer 0: no sign agreement with harmless


def test_diff_table(cli, seeded) -> None:
    r = cli("diff", "helpful@1", "helpful@2")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert out.startswith("diff helpful@1 -> helpful@2\n")
    assert re.search(r"tensors: 9 compared \(9 changed, 0 identical\), 12 only in helpful@1, 0 only in helpful@2", out)
    assert "only in helpful@1: lm_head.weight, model.embed_tokens.weight, model.layers.1." in out
    assert re.search(r"^model\.layers\.0\.mlp\.up_proj\.weight\s+32x16\s", out, re.M)


def test_plot_flag(cli, seeded, tmp_path) -> None:
    out = tmp_path / "sim.svg"
    r = cli("similarity", "helpful", "harmless", "--plot", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.rstrip().endswith(f"wrote {out}")
    assert out.read_text().lstrip().startswith("<?xml") and "cosine" in out.read_text()
    r = cli("similarity", "helpful", "harmless", "--plot", out)
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {out}: already exists (use --force to overwrite)"
    assert cli("similarity", "helpful", "harmless", "--plot", out, "--force").exit_code == 0


def _block(heading: str) -> str:
    section = README.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {heading}"
    return match.group(1)


def test_readme_block_runs(tmp_path, monkeypatch, cli) -> None:
    """The README's commands, in a real shell, from a directory holding demo/registry."""
    cwd = tmp_path / "user"
    base = cwd / "demo" / "base"
    tensors = make_base(base)
    monkeypatch.setenv("PVREG_HOME", str(cwd / "demo" / "registry"))
    register(cli, tmp_path, base, tensors)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PVREG_HOME")
    script = "set -euo pipefail\n" + _block("Comparing vectors (`pvreg similarity`, `pvreg diff`)")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert "layers.0" in r.stdout and "diff helpful@1 -> helpful@2" in r.stdout
    assert '"vectors": [\n    "helpful@2",\n    "harmless@1"\n  ]' in r.stdout
    assert (cwd / "demo" / "similarity.png").read_bytes()[:4] == b"\x89PNG"
