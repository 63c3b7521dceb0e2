"""``Registry.evaluate`` / ``Registry.sweep``: metrics against plain transformers, storage, resume, interrupts.

The independent side loads the base with transformers, adds η·φ to its parameters by
hand, and scores one unpadded sequence at a time in float64; pvreg applies the vector
in memory and scores in padded batches.  Storage runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.evaldata import eval_files, margin_vector
from pvreg import Registry
from pvreg.registry.errors import SweepInterruptedError

ATOL = 2e-4


def _logp(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)


def _completion(model, tok, prompt: str, completion: str) -> tuple[float, int]:
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    lp = _logp(model, p + c)
    return sum(float(lp[len(p) + i - 1, t]) for i, t in enumerate(c)), len(c)


def _independent(base: Path, delta: dict[str, torch.Tensor], eta: float, files: dict[str, Path]) -> dict:
    """Accuracy, margins, perplexity, KL and choice accuracy of base + η·φ, computed here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ref = AutoModelForCausalLM.from_pretrained(base).eval()
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        for name, d in delta.items():
            model.get_parameter(name).add_(eta * d)
    pairs = [json.loads(line) for line in files["pairs"].read_text().splitlines()]
    margins, norm_margins = [], []
    for p in pairs:
        (c, nc), (r, nr) = (_completion(model, tok, p["prompt"], p[k]) for k in ("chosen", "rejected"))
        margins.append(c - r)
        norm_margins.append(c / nc - r / nr)
    texts = [t.strip() for t in files["text"].read_text().split("\n\n") if t.strip()]
    nll = kl = tokens = 0.0
    for t in texts:
        ids = tok(t)["input_ids"]
        lp, lb = _logp(model, ids), _logp(ref, ids)
        for i in range(1, len(ids)):
            nll -= float(lp[i - 1, ids[i]])
            kl += float((lb[i - 1].exp() * (lb[i - 1] - lp[i - 1])).sum())
            tokens += 1
    questions = [json.loads(line) for line in files["choices"].read_text().splitlines()]
    right = 0
    for q in questions:
        scores = [_completion(model, tok, q["question"], ch)[0] for ch in q["choices"]]
        right += int(int(np.argmax(scores)) == q["answer"])
    return {
        "accuracy": float(np.mean([m > 0 for m in margins])),
        "margin": float(np.mean(margins)),
        "margin_norm": float(np.mean(norm_margins)),
        "perplexity": math.exp(nll / tokens),
        "kl_per_token": kl / tokens,
        "choice_accuracy": right / len(questions),
    }


@pytest.fixture
def setup(tmp_path: Path, home: Path):
    files = eval_files(tmp_path)
    g = torch.Generator().manual_seed(3)
    delta = {"lm_head.weight": torch.randn(64, 32, generator=g) * 0.3, "model.layers.1.mlp.down_proj.weight": torch.randn(32, 64, generator=g) * 0.05}
    from safetensors.torch import save_file

    save_file(delta, str(tmp_path / "v.safetensors"))
    with Registry.open() as reg:
        reg.add("v", tmp_path / "v.safetensors", base=files["base"])
    return files, delta


@pytest.mark.usefixtures("backend")
def test_evaluate_matches_transformers_batched_and_unbatched(setup) -> None:
    files, delta = setup
    expected = _independent(files["base"], delta, 0.7, files)
    sets = {"pairs": [f"prefs={files['pairs']}"], "text": [files["text"]], "choices": [files["choices"]]}
    with Registry.open() as reg:
        batched = reg.evaluate("v:0.7", base=files["base"], batch_size=3, **sets)
        single = reg.evaluate(["v:0.7"], base=files["base"], batch_size=1, **sets)
        stored = reg.evaluations("v")
    for record in (batched, single):
        prefs, text, choices = record.metrics["prefs"], record.metrics["text.txt"], record.metrics["choices.jsonl"]
        assert prefs["accuracy"].value == pytest.approx(expected["accuracy"])
        assert prefs["margin"].value == pytest.approx(expected["margin"], abs=ATOL)
        assert prefs["margin_norm"].value == pytest.approx(expected["margin_norm"], abs=ATOL)
        assert text["perplexity"].value == pytest.approx(expected["perplexity"], rel=1e-4)
        assert text["kl_per_token"].value == pytest.approx(expected["kl_per_token"], abs=ATOL)
        assert expected["kl_per_token"] > 1e-3  # the vector really moved the model
        assert choices["accuracy"].value == pytest.approx(expected["choice_accuracy"])
        assert prefs["margin"].ci_low <= prefs["margin"].value <= prefs["margin"].ci_high
    # Stored: both evaluations, linked to v@1, with each set's sha256 and item count.
    assert [r.id for r in stored] == [batched.id, single.id]
    assert stored[0].metrics == batched.metrics
    sets_info = {s.label: s for s in stored[0].eval_sets}
    assert sets_info["text.txt"].sha256 == hashlib.sha256(files["text"].read_bytes()).hexdigest()
    assert sets_info["prefs"].n_items == len(files["pairs"].read_text().splitlines())
    assert stored[0].target.spec["terms"][0]["ref"] == "v@1"
    assert stored[0].target.spec["terms"][0]["coefficient"] == 0.7
    assert stored[0].options["batch_size"] == 3 and stored[0].pvreg_version
    assert stored[0].key == stored[1].key  # batch size does not change what was measured


def test_evaluate_model_dir_against_itself_has_zero_kl(setup) -> None:
    files, _ = setup
    with Registry.open() as reg:
        record = reg.evaluate(model=files["base"], base=files["base"], text=[files["text"]], limit=2)
        assert reg.evaluations("v") == []  # a model directory is linked to no version
    assert record.target.kind == "model" and record.target.model_fingerprint == record.target.base_fingerprint
    assert record.metrics["text.txt"]["kl_per_token"].value == pytest.approx(0.0, abs=1e-6)
    assert record.eval_sets[0].n_items == 2


@pytest.mark.usefixtures("backend")
def test_sweep_is_monotone_on_its_own_pairs_and_resumes(tmp_path: Path, home: Path) -> None:
    files = eval_files(tmp_path)
    vec, pairs = margin_vector(files["base"], tmp_path / "m.safetensors")
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with Registry.open() as reg:
        reg.add("m", vec, base=files["base"])
        first = reg.sweep(["m=-1:1:0.5"], base=files["base"], pairs=[own], out=tmp_path / "sw")
        count = len(reg.evaluations())
        again = reg.sweep(["m=-1:1:0.5"], base=files["base"], pairs=[own], out=tmp_path / "sw", force=True)
        assert len(reg.evaluations()) == count == 5
        # a changed eval file is measured again; the unchanged grid over another set is not confused with it
        own.write_text(own.read_text() + json.dumps({**pairs[0], "prompt": pairs[0]["prompt"] + " w1"}) + "\n")
        changed = reg.sweep(["m=-1:1:0.5"], base=files["base"], pairs=[own], out=tmp_path / "sw", force=True)
        assert len(reg.evaluations()) == 10
        assert len(reg.evaluations("m@1")) == 10
    etas = [p.coefficients["m@1"] for p in first.points]
    margins = [p.evaluation.metrics["own.jsonl"]["margin"].value for p in first.points]
    accuracy = [p.evaluation.metrics["own.jsonl"]["accuracy"].value for p in first.points]
    assert etas == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert all(b > a for a, b in zip(margins, margins[1:]))
    assert all(b >= a for a, b in zip(accuracy, accuracy[1:])) and accuracy[-1] > accuracy[0]
    # linear in η, as constructed: equal steps
    steps = np.diff(margins)
    assert np.allclose(steps, steps[0], rtol=1e-3)
    assert (first.measured, first.reused) == (5, 0)
    assert (again.measured, again.reused) == (0, 5)
    assert [p.evaluation.id for p in again.points] == [p.evaluation.id for p in first.points]
    assert (changed.measured, changed.reused) == (5, 0)
    csv_lines = (tmp_path / "sw" / "sweep.csv").read_text().splitlines()
    assert csv_lines[0] == "point,m@1,eval_set,metric,value,ci_low,ci_high,n"
    assert len(csv_lines) == 1 + 5 * 4
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == sorted(changed.files)
    assert (tmp_path / "sw" / "own.jsonl.margin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_interrupted_keeps_measured_points(tmp_path: Path, home: Path, setup) -> None:
    files, _ = setup

    class StopAfterTwo:
        def start(self, total: int) -> None:
            self.total, self.seen = total, 0

        def advance(self, *, reused: bool) -> None:
            self.seen += 1
            if self.seen == 2:
                raise KeyboardInterrupt

    with Registry.open() as reg:
        with pytest.raises(SweepInterruptedError, match="interrupted after 2 of 3 points") as info:
            reg.sweep(["v=0,0.5,1"], base=files["base"], pairs=[files["pairs"]], out=tmp_path / "sw",
                      progress=StopAfterTwo(), limit=3)
        assert info.value.exit_code == 130
        assert len(reg.evaluations()) == 2
        rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
        assert rows["complete"] is False and {r["point"] for r in rows["rows"]} == {1, 2}
        rerun = reg.sweep(["v=0,0.5,1"], base=files["base"], pairs=[files["pairs"]], out=tmp_path / "sw",
                          force=True, limit=3)
        assert (rerun.measured, rerun.reused) == (1, 2)
        assert len(reg.evaluations()) == 3


def test_sweep_two_axes_heatmaps(tmp_path: Path, home: Path, setup) -> None:
    files, delta = setup
    from safetensors.torch import save_file

    save_file({k: -t for k, t in delta.items()}, str(tmp_path / "w.safetensors"))
    with Registry.open() as reg:
        reg.add("w", tmp_path / "w.safetensors", base=files["base"])
        result = reg.sweep(["v=0,1", "w=0,1"], base=files["base"], pairs=[files["pairs"]], out=tmp_path / "hm",
                           limit=4, n_bootstrap=50)
    by = {(p.coefficients["v@1"], p.coefficients["w@1"]): p.evaluation.metrics["pairs.jsonl"]["margin"].value
          for p in result.points}
    # the two deltas cancel exactly at (1, 1), so that point equals the base at (0, 0)
    assert by[(1.0, 1.0)] == pytest.approx(by[(0.0, 0.0)], abs=1e-5)
    assert "pairs.jsonl.margin.png" in result.files
