"""Preference, text and multiple-choice metrics and bootstrap intervals, against independent computations.

The independent side runs one unpadded sequence at a time through plain
transformers and does its maths in float64 with torch/numpy; the model under
evaluation is changed in place between the base's reference pass and the
evaluation, as a sweep does.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from helpers.models import VOCAB, build_llama, build_tokenizer, perturb_, words
from pvreg.registry.errors import EvalError, EvalSetError
from pvreg.registry.evaluation.evalsets import ChoiceItem, PreferencePair
from pvreg.registry.evaluation.metrics import (
    bootstrap_ci,
    choice_metrics,
    preference_metrics,
    score_pairs,
    text_metrics,
)
from pvreg.registry.evaluation.texts import reference_logprobs, score_texts
from pvreg.schemas.evaluation import MetricValue

ATOL = 2e-4


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """float64 next-token log-probs [len(ids), V] of one unbatched sequence."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)


def completion_logprob(model, tok, prompt: str, completion: str) -> tuple[float, int]:
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    lp = log_probs(model, p + c)
    ids = p + c
    return sum(float(lp[t - 1, ids[t]]) for t in range(len(p), len(ids))), len(c)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def pairs() -> list[PreferencePair]:
    rng = random.Random(7)
    return [PreferencePair(words(rng, 1, 20), words(rng, 1, 25), words(rng, 1, 25)) for _ in range(30)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(8)
    return [words(rng, 1, 40) for _ in range(17)]


# --- preference pairs ----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_preference_metrics_match_independent(tok, pairs, batch_size: int) -> None:
    model = build_llama(seed=3)
    c = [completion_logprob(model, tok, p.prompt, p.chosen) for p in pairs]
    r = [completion_logprob(model, tok, p.prompt, p.rejected) for p in pairs]
    lc, lr = np.array([x for x, _ in c]), np.array([x for x, _ in r])
    nc, nr = lc / np.array([n for _, n in c]), lr / np.array([n for _, n in r])
    got = preference_metrics(model, tok, pairs, batch_size=batch_size, seed=1, n_boot=200)
    assert set(got) == {"accuracy", "margin", "accuracy_norm", "margin_norm"}
    assert got["accuracy"].value == pytest.approx(np.mean(lc > lr))
    assert got["accuracy_norm"].value == pytest.approx(np.mean(nc > nr))
    assert got["margin"].value == pytest.approx(np.mean(lc - lr), abs=ATOL)
    assert got["margin_norm"].value == pytest.approx(np.mean(nc - nr), abs=ATOL)
    assert 0 < got["accuracy"].value < 1  # the data can tell a broken comparison from a working one
    assert np.mean(lc > lr) != np.mean(nc > nr)  # ... and plain from length-normalised accuracy
    for m in got.values():
        assert m.n == len(pairs) and m.ci_low <= m.value <= m.ci_high
    assert 0 <= got["accuracy"].ci_low <= got["accuracy"].ci_high <= 1


def test_reward_metrics_against_base_scores(tok, pairs) -> None:
    model = build_llama(seed=4)
    base = copy.deepcopy(model)
    reference = score_pairs(model, tok, pairs, batch_size=7)
    perturb_(model, seed=1, scale=0.05)
    got = preference_metrics(model, tok, pairs, reference=reference, batch_size=4, n_boot=100)
    reward = []
    for p in pairs:
        rc, rr = (completion_logprob(model, tok, p.prompt, x)[0] - completion_logprob(base, tok, p.prompt, x)[0]
                  for x in (p.chosen, p.rejected))
        reward.append(rc - rr)
    assert got["reward_margin"].value == pytest.approx(np.mean(reward), abs=ATOL)
    assert got["reward_accuracy"].value == pytest.approx(np.mean(np.array(reward) > 0))
    assert 0 < got["reward_accuracy"].value < 1


def test_reference_scores_must_match_the_pairs(tok, pairs) -> None:
    model = build_llama(seed=4)
    reference = score_pairs(model, tok, pairs[:3])
    with pytest.raises(EvalError, match="reference scores"):
        preference_metrics(model, tok, pairs, reference=reference)


# --- texts ---------------------------------------------------------------------------


def independent_text(base, model, ids: list[int], top_k: int | None = None) -> tuple[float, int, float]:
    """(Σ NLL, scored tokens, Σ KL(base ‖ model)) of one window, unbatched, float64.

    With ``top_k``, the KL of the two distributions coarse-grained to {the base's
    k most likely tokens, the rest}.
    """
    lm = log_probs(model, ids)[:-1]
    lb = log_probs(base, ids)[:-1]
    nll = -sum(float(lm[t, ids[t + 1]]) for t in range(len(ids) - 1))
    if top_k is None:
        kl = float((lb.exp() * (lb - lm)).sum())
    else:
        kl = 0.0
        for t in range(lb.shape[0]):
            top = torch.topk(lb[t], top_k).indices
            pb, pm = lb[t, top].exp(), lm[t, top].exp()
            rb, rm = 1 - pb.sum(), 1 - pm.sum()
            kl += float((pb * (pb.log() - pm.log())).sum())
            if rb > 0:
                kl += float(rb * (rb.log() - rm.log()))
    return nll, len(ids) - 1, kl


def expected_text(base, model, tok, texts, *, window: int | None = None, top_k: int | None = None):
    nll = n = kl = 0.0
    per_text = []
    for text in texts:
        ids = tok(text)["input_ids"]
        step = window or len(ids)
        t_nll = t_n = t_kl = 0.0
        for s in range(0, len(ids), step):
            chunk = ids[s : s + step]
            if len(chunk) >= 2:
                a, b, c = independent_text(base, model, chunk, top_k)
                t_nll, t_n, t_kl = t_nll + a, t_n + b, t_kl + c
        per_text.append((t_nll, t_n, t_kl))
        nll, n, kl = nll + t_nll, n + t_n, kl + t_kl
    return nll / n, kl / n, per_text


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_perplexity_and_kl_with_precomputed_base(tok, texts, batch_size: int) -> None:
    model = build_llama(seed=5)
    base = copy.deepcopy(model)  # only for the independent computation
    ref = reference_logprobs(model, tok, texts, batch_size=3)
    perturb_(model, seed=2, scale=0.05)  # the sweep applies vectors in place
    got = text_metrics(model, tok, texts, reference=ref, batch_size=batch_size, seed=0, n_boot=200)
    nll, kl, _ = expected_text(base, model, tok, texts)
    assert got["nll_per_token"].value == pytest.approx(nll, abs=ATOL)
    assert got["perplexity"].value == pytest.approx(math.exp(nll), rel=ATOL)
    assert got["kl_per_token"].value == pytest.approx(kl, abs=ATOL)
    assert kl > 1e-3
    for m in got.values():
        assert m.n == len(texts) and m.ci_low <= m.value <= m.ci_high


def test_kl_with_base_model_given_directly(tok, texts) -> None:
    base, model = build_llama(seed=6), build_llama(seed=6)
    perturb_(model, seed=3, scale=0.05)
    got = text_metrics(model, tok, texts, reference=base, batch_size=2, n_boot=50)  # 17 texts: 3 slices of 8
    nll, kl, _ = expected_text(base, model, tok, texts)
    assert got["kl_per_token"].value == pytest.approx(kl, abs=ATOL)
    assert got["nll_per_token"].value == pytest.approx(nll, abs=ATOL)


def test_kl_of_a_model_with_itself_is_zero_and_perplexity_only_without_reference(tok, texts) -> None:
    model = build_llama(seed=7)
    got = text_metrics(model, tok, texts, reference=reference_logprobs(model, tok, texts), n_boot=50)
    assert abs(got["kl_per_token"].value) < 1e-6
    assert set(text_metrics(model, tok, texts, n_boot=50)) == {"nll_per_token", "perplexity"}


def test_top_k_reference_is_the_coarse_grained_kl_and_a_lower_bound(tok, texts) -> None:
    model = build_llama(seed=8)
    base = copy.deepcopy(model)
    full = reference_logprobs(model, tok, texts, batch_size=4)
    top5 = reference_logprobs(model, tok, texts, batch_size=4, top_k=5)
    every = reference_logprobs(model, tok, texts, batch_size=4, top_k=VOCAB)
    assert top5.nbytes < full.nbytes / 4
    perturb_(model, seed=4, scale=0.05)
    kl = {name: text_metrics(model, tok, texts, reference=r, n_boot=20)["kl_per_token"].value
          for name, r in (("full", full), ("top5", top5), ("every", every))}
    _, want_full, _ = expected_text(base, model, tok, texts)
    _, want_top5, _ = expected_text(base, model, tok, texts, top_k=5)
    assert kl["full"] == pytest.approx(want_full, abs=ATOL)
    assert kl["every"] == pytest.approx(want_full, abs=ATOL)
    assert kl["top5"] == pytest.approx(want_top5, abs=ATOL)
    assert 0 < kl["top5"] < kl["full"]


def test_long_texts_are_scored_in_windows(tok, texts) -> None:
    model = build_llama(seed=9)
    base = copy.deepcopy(model)
    ref = reference_logprobs(model, tok, texts, max_length=8)
    perturb_(model, seed=5, scale=0.05)
    scores = score_texts(model, tok, texts, reference=ref, batch_size=3, max_length=8)
    _, _, per_text = expected_text(base, model, tok, texts, window=8)
    for s, (nll, n, kl) in zip(scores, per_text):
        assert (s.nll, s.n_tokens, s.kl) == (pytest.approx(nll, abs=ATOL), n, pytest.approx(kl, abs=ATOL))
    with pytest.raises(EvalError, match="reference log-probs were computed on other texts"):
        score_texts(model, tok, texts, reference=ref, max_length=16)
    with pytest.raises(EvalError, match="reference log-probs were computed on other texts"):
        score_texts(model, tok, texts[1:], reference=ref, max_length=8)


def test_text_too_short_to_score(tok) -> None:
    with pytest.raises(EvalSetError, match="text 1: has 1 token"):
        score_texts(build_llama(), build_tokenizer(bos=False), ["w1 w2", "w3"])


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_top_k(tok, bad) -> None:
    with pytest.raises(EvalError, match="top_k"):
        reference_logprobs(build_llama(), tok, ["w1 w2"], top_k=bad)


# --- multiple choice -----------------------------------------------------------------


def test_choice_metrics_match_independent(tok) -> None:
    rng = random.Random(11)
    model = build_llama(seed=10)
    items = []
    for _ in range(25):
        choices = tuple(dict.fromkeys(words(rng, 1, 12) for _ in range(rng.randint(2, 4))))
        if len(choices) >= 2:
            items.append(ChoiceItem(words(rng, 1, 15), choices, rng.randrange(len(choices))))
    by_sum, by_mean = [], []
    for it in items:
        s = [completion_logprob(model, tok, it.question, c) for c in it.choices]
        by_sum.append(int(np.argmax([x for x, _ in s])))
        by_mean.append(int(np.argmax([x / n for x, n in s])))
    answers = np.array([it.answer for it in items])
    got = choice_metrics(model, tok, items, batch_size=6, n_boot=100)
    assert got["accuracy"].value == pytest.approx(np.mean(np.array(by_sum) == answers))
    assert got["accuracy_norm"].value == pytest.approx(np.mean(np.array(by_mean) == answers))
    assert by_sum != by_mean
    assert got["accuracy"].n == len(items)


# --- bootstrap -----------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["normal", "bernoulli", "exponential"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_contains_the_mean(dist: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    x = {"normal": rng.normal(3, 2, 80), "bernoulli": (rng.random(80) < 0.3).astype(float),
         "exponential": rng.exponential(1.0, 80)}[dist]
    ci = bootstrap_ci(x, seed=seed)
    assert ci.value == pytest.approx(float(np.mean(x)))
    assert ci.ci_low < ci.value < ci.ci_high
    assert ci.n == 80 and ci.level == 0.95


def test_bootstrap_width_shrinks_with_n_like_the_standard_error() -> None:
    rng = np.random.default_rng(5)
    widths = {}
    for n in (50, 200, 2000):
        x = rng.normal(0, 1, n)
        ci = bootstrap_ci(x, seed=0, n=2000)
        widths[n] = ci.ci_high - ci.ci_low
        assert widths[n] == pytest.approx(2 * 1.96 * np.std(x) / math.sqrt(n), rel=0.15)
    assert widths[50] > widths[200] > widths[2000]


def test_bootstrap_deterministic_by_seed() -> None:
    x = np.random.default_rng(6).normal(size=40)
    a, b, c = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=4)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_bootstrap_weighted_mean_and_transform() -> None:
    rng = np.random.default_rng(7)
    v, w = rng.normal(2, 1, 60), rng.integers(1, 50, 60).astype(float)
    ci = bootstrap_ci(v, seed=1, weights=w)
    assert ci.value == pytest.approx(float(np.average(v, weights=w)))
    assert ci.ci_low < ci.value < ci.ci_high
    ex = bootstrap_ci(v, seed=1, weights=w, transform=np.exp)
    assert ex.value == pytest.approx(math.exp(ci.value))
    assert (ex.ci_low, ex.ci_high) == (pytest.approx(math.exp(ci.ci_low)), pytest.approx(math.exp(ci.ci_high)))
    # Weights matter: the unweighted interval is centred elsewhere.
    assert bootstrap_ci(v, seed=1).value != pytest.approx(ci.value)


def test_bootstrap_blocks_do_not_change_the_result(monkeypatch) -> None:
    import pvreg.registry.evaluation.metrics as metrics

    x = np.random.default_rng(8).normal(size=300)
    one = bootstrap_ci(x, seed=2, n=500)
    monkeypatch.setattr(metrics, "_RESAMPLE_BLOCK_ELEMENTS", 300 * 7)  # 7 resamples per block
    assert bootstrap_ci(x, seed=2, n=500) == one


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[]), "no values"),
    (dict(values=[1.0, float("nan")]), "NaN"),
    (dict(values=[1.0, 2.0], n=0), "resamples"),
    (dict(values=[1.0, 2.0], level=1.0), "level"),
    (dict(values=[1.0, 2.0], weights=[1.0]), "weights"),
    (dict(values=[1.0, 2.0], weights=[0.0, 0.0]), "weights"),
    (dict(values=[1.0, 2.0], weights=[1.0, -1.0]), "weights"),
])
def test_bootstrap_bad_input(kwargs, match) -> None:
    with pytest.raises(EvalError, match=match):
        bootstrap_ci(seed=0, **kwargs)


def test_metric_value_rejects_non_finite() -> None:
    with pytest.raises(ValueError):
        MetricValue(value=float("nan"), ci_low=0, ci_high=1, n=3)
    assert MetricValue(value=0.5, ci_low=0.25, ci_high=0.75, n=3).model_dump()["n"] == 3


def test_errors_name_the_eval_file_line(tok, tmp_path) -> None:
    """A problem found while scoring names the file and line the item came from, and which completion."""
    import json

    from pvreg.registry.evaluation.evalsets import read_choices, read_pairs

    model = build_llama(seed=1)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text(
        json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3"}) + "\n\n"
        + json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3 " * 9}) + "\n"
    )
    with pytest.raises(EvalSetError, match=rf"^{pairs_file}:3 \(rejected\): the completion has 9 tokens"):
        preference_metrics(model, tok, read_pairs(pairs_file), max_length=6)
    choices_file = tmp_path / "choices.jsonl"
    choices_file.write_text(json.dumps({"question": "w1", "choices": ["w2", "w3 " * 9], "answer": 0}) + "\n")
    with pytest.raises(EvalSetError, match=rf"^{choices_file}:1 \(choice 1\): the completion has 9 tokens"):
        choice_metrics(model, tok, read_choices(choices_file), max_length=6)
    with pytest.raises(EvalSetError, match=r"^pair 0 \(chosen\): the completion has 9 tokens"):
        preference_metrics(model, tok, [PreferencePair("w1", "w2 " * 9, "w3")], max_length=6)
    with pytest.raises(EvalSetError, match=r"^notes.txt paragraph 2: has 1 token"):
        text_metrics(model, build_tokenizer(bos=False), ["w1 w2", "w3"],
                     labels=["notes.txt paragraph 1", "notes.txt paragraph 2"])
    with pytest.raises(EvalSetError, match=r"^text 9: has 1 token"):
        text_metrics(model, build_tokenizer(bos=False), ["w1 w2"] * 9 + ["w3"], reference=model, batch_size=1)
