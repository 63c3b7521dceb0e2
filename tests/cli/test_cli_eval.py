"""``pvreg eval``, ``pvreg evals``, ``pvreg sweep`` and ``show``'s latest results: CLI/API parity and rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line
from helpers.evaldata import eval_files
from pvreg import Registry


@pytest.fixture
def env(tmp_path: Path, cli, home: Path):
    files = eval_files(tmp_path)
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    save_file({"lm_head.weight": torch.randn(64, 32, generator=g) * 0.3}, str(tmp_path / "v.safetensors"))
    assert cli("add", "v", "--vector", tmp_path / "v.safetensors", "--base", files["base"]).exit_code == 0
    return files


def test_eval_cli_equals_api_and_is_listed(env, cli, tmp_path: Path) -> None:
    args = ["--pairs", env["pairs"], "--text", f"prose={env['text']}", "--limit", "4", "--batch-size", "2"]
    r = cli("eval", "v:0.5", "--base", env["base"], *args, "--json")
    assert r.exit_code == 0, r.stderr
    from_cli = json.loads(r.stdout)
    with Registry.open() as reg:
        from_api = reg.evaluate("v:0.5", base=env["base"], pairs=[env["pairs"]], text=[f"prose={env['text']}"],
                                limit=4, batch_size=2)
    assert from_cli["metrics"] == from_api.model_dump(mode="json")["metrics"]
    assert from_cli["key"] == from_api.key
    assert set(from_cli["metrics"]) == {"pairs.jsonl", "prose"}
    assert set(from_cli["metrics"]["prose"]) == {"nll_per_token", "perplexity", "kl_per_token"}

    human = cli("eval", "v:0.5", "--base", env["base"], *args)
    assert human.exit_code == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith("evaluation #3: v@1:0.5 on base ")
    assert lines[1].split() == ["SET", "KIND", "METRIC", "VALUE", "95%", "CI", "N"]
    assert any(line.split()[:3] == ["prose", "text", "kl_per_token"] for line in lines)

    listed = json.loads(cli("evals", "v", "--json").stdout)
    assert [e["id"] for e in listed] == [1, 2, 3]
    table = cli("evals").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "CREATED", "TARGET", "SETS"] and len(table) == 4
    shown = cli("show", "v").stdout
    assert "evaluated:   #3 " in shown and "prose: nll_per_token=" in shown and "(3 evaluation(s)" in shown
    shown_json = json.loads(cli("show", "v", "--json").stdout)
    assert shown_json["evaluations"] == 3 and shown_json["latest_evaluation"]["id"] == 3
    assert shown_json["latest_evaluation"]["metrics"] == from_cli["metrics"]
    assert (shown_json["name"], shown_json["version"]) == ("v", 1) and "sha256" in shown_json


def test_evals_of_an_unknown_ref_is_one_line(env, cli) -> None:
    one_error_line(cli("evals", "nosuch"), 2, "unknown reference 'nosuch'")
    assert cli("evals").stdout.strip() == "no evaluations recorded"


def test_sweep_cli_equals_api_and_resumes(env, cli, tmp_path: Path) -> None:
    common = ["--base", env["base"], "--pairs", env["pairs"], "--limit", "3"]
    r = cli("sweep", "v=0:1:0.5", *common, "--out", tmp_path / "a", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["measured"], out["reused"], len(out["points"])) == (3, 0, 3)
    assert out["axes"] == ["v@1"] and sorted(out["files"]) == sorted(p.name for p in (tmp_path / "a").iterdir())
    with Registry.open() as reg:
        api = reg.sweep(["v=0:1:0.5"], base=env["base"], pairs=[env["pairs"]], limit=3, out=tmp_path / "b")
    assert (api.measured, api.reused) == (0, 3)  # the CLI's points, found in the registry
    assert (tmp_path / "a" / "sweep.csv").read_bytes() == (tmp_path / "b" / "sweep.csv").read_bytes()
    again = cli("sweep", "v=0:1:0.5", *common, "--out", tmp_path / "a", "--force")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith("swept v@1: 3 points, 0 measured, 3 already stored -> ")
    one_error_line(cli("sweep", "v=0:1:0.5", *common, "--out", tmp_path / "a"), 2, "already exists and is not empty")


def test_sweep_ctrl_c_exits_130_and_keeps_points(env, cli, tmp_path: Path, monkeypatch) -> None:
    import pvreg.registry.evaluation.sweep as sweep_module

    real = sweep_module._measure_point
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "_measure_point", interrupted)
    r = cli("sweep", "v=0,1", "--base", env["base"], "--pairs", env["pairs"], "--limit", "2", "--out", tmp_path / "o")
    line = one_error_line(r, 130, "interrupted after 1 of 2 points (1 measured and stored); partial results in")
    assert str(tmp_path / "o") in line
    rows = (tmp_path / "o" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and all(row.startswith("1,0,") for row in rows[1:])
    with Registry.open() as reg:
        assert len(reg.evaluations()) == 1


def test_show_and_evals_stay_on_the_read_path(env, cli, home: Path) -> None:
    """`pvreg show`/`pvreg evals` read evaluations with SQLAlchemy Core: no torch, no ORM."""
    import os
    import subprocess
    import sys

    assert cli("eval", "v", "--base", env["base"], "--pairs", env["pairs"], "--limit", "2").exit_code == 0
    code = (
        "import sys\n"
        "from pvreg.cli.main import main\n"
        "sys.argv = ['pvreg', 'show', 'v']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.argv = ['pvreg', 'evals', 'v']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'sqlalchemy.orm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert "evaluated:" in r.stdout and "RESULTS" in r.stdout


def test_bootstrap_and_kl_top_k_flags_reach_the_stored_options(env, cli, tmp_path: Path) -> None:
    common = ["--base", env["base"], "--text", env["text"], "--limit", "2", "--json"]
    r = cli("eval", "v:0.5", *common, "--bootstrap", "50", "--kl-top-k", "5")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["options"]["n_bootstrap"] == 50 and record["options"]["kl_top_k"] == 5
    with Registry.open() as reg:
        api = reg.evaluate("v:0.5", base=env["base"], text=[env["text"]], limit=2, n_bootstrap=50, kl_top_k=5)
    assert api.key == record["key"]  # the same measurement: found by its key, not measured under other options
    full = json.loads(cli("eval", "v:0.5", *common).stdout)
    assert full["key"] != record["key"] and full["options"]["n_bootstrap"] == 1000
    swept = cli("sweep", "v=0,0.5", "--base", env["base"], "--text", env["text"], "--limit", "2", "--bootstrap", "50",
                "--kl-top-k", "5", "--out", tmp_path / "s", "--json")
    assert swept.exit_code == 0, swept.stderr
    points = json.loads(swept.stdout)["points"]
    assert points[1]["evaluation"]["key"] == record["key"] and points[1]["evaluation"]["reused"]
