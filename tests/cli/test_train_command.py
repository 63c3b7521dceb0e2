"""``pvreg train`` end to end: DPO θ+/θ− on a tiny Llama, φ registered, and its effect measured independently.

The effect is scored here with plain transformers forward passes on prompts the training never saw:
log p(" yes" | prompt) − log p(" no" | prompt), for the base and for the base composed with η = +1 and η = −1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from pvreg import Registry
from helpers.models import make_tiny_llama, random_prompts, write_jsonl, yes_no_pairs

pytest.importorskip("trl")

TRAIN = ["--method", "full", "--steps", "30", "--lr", "1e-3", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    base = make_tiny_llama(root / "base")
    data = write_jsonl(root / "pairs.jsonl", yes_no_pairs(64, seed=1))
    return {"base": base, "data": data, "root": root}


def held_out(model: Any, base: Path) -> tuple[float, float]:
    """(accuracy, mean margin) of " yes" over " no" on 32 unseen prompts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor([tok(p)["input_ids"] for p in random_prompts(32, seed=999)])
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[:, -1].float().log_softmax(-1)
    margin = logp[:, yes] - logp[:, no]
    return float((margin > 0).float().mean()), float(margin.mean())


def load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_train_registers_a_vector_that_moves_held_out_preference(setup, cli, tmp_path: Path) -> None:
    keep = tmp_path / "ckpt"
    r = cli("train", "yes", "--base", setup["base"], "--data", setup["data"], *TRAIN, "--keep-checkpoints", keep,
            "--json")
    assert r.exit_code == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["kind"] == "pair" and meta["sign"] == 1 and meta["dataset"] == "pairs"
    record = meta["provenance"]["training"]
    assert record["data"]["rows"] == 64 and record["options"]["seed"] == 0
    assert record["positive"]["steps"] == record["negative"]["steps"] == 30
    assert "positive_dir" not in record  # no work paths in what may be published

    # θ+ − θ− of the kept checkpoints is exactly the stored vector (float32 inputs: float32 storage).
    pos = load_file(str(keep / "positive" / "model.safetensors"))
    neg = load_file(str(keep / "negative" / "model.safetensors"))
    with Registry.open() as reg:
        stored = load_file(str(reg.blob_path("yes")))
        for name, phi in stored.items():
            assert torch.equal(phi, pos[name].float() - neg[name].float()), name
        assert set(stored) <= set(pos)
        reg.compose("yes:1", base=setup["base"], out=tmp_path / "plus")
        reg.compose("yes:-1", base=setup["base"], out=tmp_path / "minus")

    acc_base, m_base = held_out(load(setup["base"]), setup["base"])
    acc_plus, m_plus = held_out(load(tmp_path / "plus"), setup["base"])
    acc_minus, m_minus = held_out(load(tmp_path / "minus"), setup["base"])
    assert m_plus > m_base + 0.3 and acc_plus >= 0.9, (acc_base, m_base, acc_plus, m_plus)
    assert m_minus < m_base - 0.3 and acc_minus <= 0.1, (acc_base, m_base, acc_minus, m_minus)


def test_same_seed_same_sha256_other_seed_differs(setup, cli) -> None:
    shas = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        r = cli("train", name, "--base", setup["base"], "--data", setup["data"], *TRAIN, "--seed", seed, "--json")
        assert r.exit_code == 0, r.stderr
        meta = json.loads(r.stdout)
        shas.append(meta["sha256"])
        # θ± lived in the staged work directory, now gone: no path to it, their fingerprints kept
        assert meta["provenance"]["positive"]["path"] is None and meta["provenance"]["negative"]["kept"] is False
        assert len(meta["provenance"]["positive"]["fingerprint"]) == 64
    assert shas[0] == shas[1] != shas[2]


def test_show_prints_the_training_summary(setup, cli) -> None:
    assert cli("train", "s", "--base", setup["base"], "--data", setup["data"], *TRAIN).exit_code == 0
    out = cli("show", "s").stdout
    assert "trained:     full DPO, seed 0, lr 0.001, beta 0.1" in out
    assert "64 pairs, sha256:" in out


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"prompt": "w1", "chosen": " yes", "rejected": " yes"}], "row 1"),
        ([{"prompt": "w1", "chosen": " yes"}], "row 1"),
    ],
    ids=["chosen-equals-rejected", "missing-column"],
)
def test_bad_data_is_one_line_and_changes_nothing(setup, cli, snapshot, tmp_path: Path, rows, needle) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert cli("list").exit_code == 0  # the registry exists: its snapshot is what must not change
    before = snapshot()
    r = cli("train", "x", "--base", setup["base"], "--data", bad, *TRAIN)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0] and needle in lines[0], r.stderr
    assert snapshot() == before


def test_keep_checkpoints_cannot_land_in_the_registry(setup, cli, home: Path) -> None:
    r = cli("train", "x", "--base", setup["base"], "--data", setup["data"], *TRAIN, "--keep-checkpoints", home / "k")
    assert r.exit_code == 2 and "lies inside the registry home" in r.stderr, r.stderr


def test_without_the_extra_one_line_names_it(setup, tmp_path: Path) -> None:
    """`pvreg train` in a real process where trl cannot be imported: one line naming pvreg[train], exit 2."""
    import os
    import subprocess
    import sys

    home = tmp_path / "reg"
    code = "import sys; sys.modules['trl'] = None; from pvreg.cli.main import main; main()"
    env = {**os.environ, "PVREG_HOME": str(home)}
    env.pop("PVREG_DATABASE_URL", None)
    r = subprocess.run([sys.executable, "-c", code, "train", "x", "--base", str(setup["base"]), "--data",
                        str(setup["data"]), "--steps", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'pvreg[train]'" in lines[0], r.stderr
    assert "'trl'" in lines[0] and r.stdout == ""
    assert not home.exists() or not [p for p in home.iterdir() if p.name.startswith(".pvreg-tmp-")]
