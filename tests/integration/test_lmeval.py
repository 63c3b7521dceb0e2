"""lm-evaluation-harness tasks on an in-memory model: run_tasks against log-likelihoods computed here.

A local task YAML over a local JSONL file, on the tiny evaluation Llama with a registered vector
applied by Registry.apply.  The expected accuracy is built into the data: the test scores every
choice itself (plain transformers forward passes, the harness's documented request: context =
the question, continuation = " " + choice, log-probs summed over the continuation's tokens)
and sets the answer to its own best choice for 15 of 24 questions, another one for the rest —
so the harness must report exactly 15/24.  Skipped only where the ``lmeval`` extra is missing.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.factories import make_vector
from helpers.models import WORDS, save_tiny_lm, write_jsonl
from helpers.paths import REPO

pytest.importorskip("lm_eval", reason="the lmeval extra (lm-evaluation-harness) is not installed")

from pvreg import Registry  # noqa: E402
from pvreg.registry.errors import EvalError, LmEvalTaskError, MissingExtraError  # noqa: E402
from pvreg.registry.evaluation.lmeval import run_tasks  # noqa: E402

README = (REPO / "README.md").read_text()
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CI cores: a tiny model is slower with more threads
    yield
    torch.set_num_threads(n)


@pytest.fixture
def lm(tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = save_tiny_lm(tmp_path / "llama")
    return d, AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def questions(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        choices: list[str] = []
        while len(choices) < 3:
            c = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
            if c not in choices:
                choices.append(c)
        items.append({"question": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))), "choices": choices})
    return items


@torch.no_grad()
def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens, in one plain forward pass."""
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[: len(ctx)] == ctx
    logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def label(model, tokenizer, items: list[dict], right: int) -> tuple[list[dict], dict[str, float]]:
    """Answers: the test's own best choice for the first ``right`` items, another choice after; the expected metrics."""
    correct, correct_norm = [], []
    for k, item in enumerate(items):
        lls = np.array([loglikelihood(model, tokenizer, item["question"], " " + c) for c in item["choices"]])
        best = int(np.argmax(lls))
        assert np.sort(lls)[-1] - np.sort(lls)[-2] > 1e-4  # no near tie for the harness to break differently
        item["answer"] = best if k < right else (best + 1) % 3
        correct.append(float(item["answer"] == best))
        norm = lls / np.array([len(c) for c in item["choices"]], dtype=float)
        correct_norm.append(float(item["answer"] == int(np.argmax(norm))))
    n = len(items)
    return items, {
        "acc": sum(correct) / n,
        "acc_norm": sum(correct_norm) / n,
        "acc_stderr": float(np.std(correct, ddof=1) / math.sqrt(n)),
    }


def task_file(tmp_path: Path, name: str, items: list[dict]) -> Path:
    data = write_jsonl(tmp_path / f"{name}.jsonl", items)
    path = tmp_path / f"{name}.yaml"
    path.write_text(TASK.format(name=name, data=data))
    return path


def test_accuracy_of_a_composition_matches_an_independent_computation(lm, tmp_path, home) -> None:
    model_dir, model, tokenizer = lm
    make_vector(tmp_path / "v.safetensors", {n: p.detach() for n, p in model.state_dict().items()}, seed=4,
                scale=0.2)
    with Registry.open() as reg:
        reg.add("helpful", tmp_path / "v.safetensors", base=model_dir)
        with reg.apply(model, "helpful:1"):
            before = {n: p.clone() for n, p in model.state_dict().items()}
            items, want = label(model, tokenizer, questions(24, seed=1), right=15)
            path = task_file(tmp_path, "pvreg_mc", items)
            rng = torch.get_rng_state()
            got = run_tasks(model, tokenizer, [str(path)], limit=None, batch_size=5, device="cpu")
            assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
            assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert set(got) == {"pvreg_mc"}
    metrics = got["pvreg_mc"]
    assert metrics["acc"] == pytest.approx(15 / 24, abs=1e-12) == want["acc"]
    assert metrics["acc_norm"] == pytest.approx(want["acc_norm"], abs=1e-12)
    assert metrics["acc_stderr"] == pytest.approx(want["acc_stderr"], rel=1e-9)


def test_limit_takes_the_first_documents(lm, tmp_path) -> None:
    _, model, tokenizer = lm
    items, _ = label(model, tokenizer, questions(8, seed=2), right=3)  # right on the first 3, wrong on the rest
    path = task_file(tmp_path, "pvreg_limit", items)
    got = run_tasks(model, tokenizer, [str(path)], limit=4, batch_size=2, device="cpu")
    assert got["pvreg_limit"]["acc"] == pytest.approx(3 / 4, abs=1e-12)


def test_bad_tasks_are_one_line_errors(lm, tmp_path) -> None:
    _, model, tokenizer = lm
    run = lambda tasks, **kw: run_tasks(model, tokenizer, tasks, **{"limit": None, "batch_size": 2, "device": "cpu", **kw})  # noqa: E731
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    (tmp_path / "notask.yaml").write_text("foo: 1\n")
    (tmp_path / "nodata.yaml").write_text(TASK.format(name="nodata", data=tmp_path / "absent.jsonl"))
    good = task_file(tmp_path, "good", [dict(q, answer=0) for q in questions(2, seed=3)])
    badanswer = task_file(tmp_path, "badanswer", [dict(q, answer=7) for q in questions(2, seed=3)])
    (tmp_path / "badfield.yaml").write_text(TASK.format(name="badfield", data=tmp_path / "good.jsonl")
                                            .replace("{{question}}", "{{nosuchfield}}"))
    cases = [
        ([str(tmp_path / "missing.yaml")], LmEvalTaskError, "lm-eval task file {t}/missing.yaml does not exist"),
        ([str(tmp_path / "broken.yaml")], LmEvalTaskError, "{t}/broken.yaml is not valid YAML"),
        ([str(tmp_path / "notask.yaml")], LmEvalTaskError, "{t}/notask.yaml cannot be loaded"),
        ([str(tmp_path / "nodata.yaml")], LmEvalTaskError, "absent.jsonl"),
        ([str(tmp_path / "badfield.yaml")], LmEvalTaskError, "badfield.yaml cannot be loaded: UndefinedError: 'nosuchfield' is undefined"),
        ([str(badanswer)], LmEvalTaskError, "badanswer.yaml cannot be loaded: IndexError"),
        ([], LmEvalTaskError, "no lm-eval task given"),
        ([str(good), str(good)], LmEvalTaskError, "is given twice"),
        ([str(tmp_path)], LmEvalTaskError, "not a regular file"),
    ]
    for tasks, error, needle in cases:
        with pytest.raises(error) as info:
            run(tasks)
        message = str(info.value)
        assert needle.format(t=tmp_path) in message and "\n" not in message, message
    with pytest.raises(EvalError, match="the model is on cpu, not on device=meta"):
        run([str(good)], device="meta")
    with pytest.raises(EvalError, match="device=nowhere is not a torch device"):
        run([str(good)], device="nowhere")
    assert run([str(good)], device="cpu:0")["good"]["acc"] in (0.0, 0.5, 1.0)
    with pytest.raises(EvalError, match="batch_size must be a positive integer"):
        run([str(good)], batch_size=0)
    with pytest.raises(EvalError, match="limit must be a positive integer"):
        run([str(good)], limit=0)


@pytest.mark.slow
def test_unknown_task_name(lm) -> None:
    """A name is looked up in the harness's own catalogue: indexing its ~15,000 task YAMLs takes 10-30 s here."""
    _, model, tokenizer = lm
    with pytest.raises(LmEvalTaskError, match="unknown lm-eval task 'pvreg_no_such_task'"):
        run_tasks(model, tokenizer, ["pvreg_no_such_task"], limit=None, batch_size=2, device="cpu")


def test_missing_extra_names_it(lm, monkeypatch) -> None:
    import importlib.util

    _, model, tokenizer = lm
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'pvreg[lmeval]'")) as info:
        run_tasks(model, tokenizer, ["anything"], limit=None, batch_size=2, device="cpu")
    assert info.value.exit_code == 2


def _readme(lang: str) -> str:
    section = README.split("### lm-evaluation-harness tasks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, re.S)
    assert blocks, f"no {lang} block in the lm-eval section"
    return blocks[0]


def test_readme_blocks_run(tmp_path) -> None:
    """The README's task YAML and Python example, from a directory holding demo/base and demo/registry."""
    from safetensors.torch import load_file

    cwd = tmp_path / "user"
    base = save_tiny_lm(cwd / "demo" / "base")
    tensors = load_file(str(base / "model.safetensors"))
    with Registry.open(cwd / "demo" / "registry") as reg:
        for name, seed in (("helpful", 1), ("harmless", 2)):
            make_vector(tmp_path / f"{name}.safetensors", tensors, seed=seed, scale=0.1)
            reg.add(name, tmp_path / f"{name}.safetensors", base=base)
    (cwd / "yes_no.yaml").write_text(_readme("yaml"))
    write_jsonl(cwd / "yes_no.jsonl", [dict(q, answer=k % 3) for k, q in enumerate(questions(6, seed=5))])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PVREG_HOME", None)
    r = subprocess.run([sys.executable, "-c", _readme("python")], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    scores = ast.literal_eval(r.stdout.strip())
    assert set(scores) == {"yes_no"} and 0.0 <= scores["yes_no"]["acc"] <= 1.0
    assert set(scores["yes_no"]) == {"acc", "acc_stderr"}
