"""Batched completion scoring equals plain one-item-at-a-time transformers forward passes.

The independent computation here runs the model on one unpadded sequence at
a time and takes log_softmax in float64; pvreg's batched, right-padded,
length-sorted, logits-to-keep path must agree with it whatever the batch size,
architecture or attention implementation.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from helpers.models import (
    CHAT_TEMPLATE,
    build_gpt2,
    build_llama,
    build_tokenizer,
    words,
)
from pvreg.registry.errors import EvalError, EvalSetError
from pvreg.registry.evaluation.scoring import score_completions

ATOL = 2e-4


def independent(model, prompt_ids: list[int], completion_ids: list[int]) -> tuple[float, int]:
    """Σ log p(completion | prompt) from one unbatched, unpadded forward pass."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(float(lp[t - 1, ids[0, t]]) for t in range(len(prompt_ids), ids.shape[1]))
    return total, len(completion_ids)


def uneven_items(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(words(rng, 1, 25), words(rng, 1, 30)) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return build_llama(seed=1)


def expected(model, tok, items):
    return [
        independent(model, tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]) for p, c in items
    ]


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_batched_scores_equal_unbatched_forward(llama, tok, batch_size: int) -> None:
    items = uneven_items(0, 23)
    want = expected(llama, tok, items)
    got = score_completions(llama, tok, items, batch_size=batch_size)
    assert [g.n_tokens for g in got] == [n for _, n in want]
    for g, (lp, n) in zip(got, want):
        assert g.logprob == pytest.approx(lp, abs=ATOL)
        assert g.mean_logprob == pytest.approx(lp / n, abs=ATOL)


@pytest.mark.parametrize("make", [lambda: build_llama(seed=2, attn="eager"), lambda: build_gpt2(seed=3)],
                         ids=["llama-eager", "gpt2"])
def test_other_architectures_and_attention(make, tok) -> None:
    model = make()
    items = uneven_items(1, 11)
    want = expected(model, tok, items)
    got = score_completions(model, tok, items, batch_size=4)
    for g, (lp, n) in zip(got, want):
        assert (g.logprob, g.n_tokens) == (pytest.approx(lp, abs=ATOL), n)


class PlainLM(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``/``use_cache``: the full-logits path."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_model_without_logits_to_keep(llama, tok) -> None:
    items = uneven_items(2, 9)
    want = expected(llama, tok, items)
    got = score_completions(PlainLM(llama), tok, items, batch_size=4)
    for g, (lp, _) in zip(got, want):
        assert g.logprob == pytest.approx(lp, abs=ATOL)


def test_scores_differ_between_items(llama, tok) -> None:
    """Guards the other tests: a scorer that returned one constant would fail here."""
    got = score_completions(llama, tok, uneven_items(3, 10), batch_size=4)
    assert len({round(g.logprob, 3) for g in got}) == 10


def test_chat_template_applied_when_present(llama) -> None:
    tok = build_tokenizer(chat_template=CHAT_TEMPLATE)
    items = uneven_items(4, 7)
    want = []
    for p, c in items:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        want.append(independent(llama, tok(text, add_special_tokens=False)["input_ids"],
                                tok(c, add_special_tokens=False)["input_ids"]))
    for option in (None, True):
        got = score_completions(llama, tok, items, batch_size=3, chat_template=option)
        for g, (lp, _) in zip(got, want):
            assert g.logprob == pytest.approx(lp, abs=ATOL)
    plain = score_completions(llama, tok, items, batch_size=3, chat_template=False)
    for g, (lp, _) in zip(plain, expected(llama, tok, items)):
        assert g.logprob == pytest.approx(lp, abs=ATOL)
    assert any(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(plain, got))


def test_chat_template_required_but_missing(llama, tok) -> None:
    with pytest.raises(EvalError, match="no chat template"):
        score_completions(llama, tok, [("w1", "w2")], chat_template=True)


def test_append_eos(llama, tok) -> None:
    items = uneven_items(5, 5)
    got = score_completions(llama, tok, items, batch_size=2, append_eos=True)
    for g, (p, c) in zip(got, items):
        lp, n = independent(llama, tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"] + [2])
        assert (g.logprob, g.n_tokens) == (pytest.approx(lp, abs=ATOL), n)


def test_long_prompt_is_cut_from_the_left(llama, tok) -> None:
    items = [("w4 " * 30, "w5 w6 w7"), ("w8 w9", "w10 w11")]
    got = score_completions(llama, tok, items, batch_size=2, max_length=12)
    p0 = tok(items[0][0])["input_ids"][-9:]  # 12 − 3 completion tokens
    assert got[0].logprob == pytest.approx(independent(llama, p0, [9, 10, 11])[0], abs=ATOL)
    assert got[1].logprob == pytest.approx(expected(llama, tok, items[1:])[0][0], abs=ATOL)


def test_completion_longer_than_context_is_refused(llama, tok) -> None:
    with pytest.raises(EvalSetError, match="item 1: the completion has 12 tokens"):
        score_completions(llama, tok, [("w1", "w2"), ("w1", "w3 " * 12)], max_length=12)


def test_completion_without_tokens_is_refused(llama, tok) -> None:
    with pytest.raises(EvalSetError, match="item 1: the completion has no tokens"):
        score_completions(llama, tok, [("w1", "w2"), ("w1", "   ")])


def test_empty_prompt_needs_a_bos_token(llama) -> None:
    with_bos = build_tokenizer()
    got = score_completions(llama, with_bos, [("", "w5 w6")])
    assert got[0].logprob == pytest.approx(independent(llama, [1], [9, 10])[0], abs=ATOL)
    with pytest.raises(EvalSetError, match="item 0: the prompt has no tokens"):
        score_completions(llama, build_tokenizer(bos=False), [("", "w5 w6")])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_batch_size(llama, tok, bad) -> None:
    with pytest.raises(EvalError, match="batch size"):
        score_completions(llama, tok, [("w1", "w2")], batch_size=bad)


def test_training_flag_restored_and_no_autograd(llama, tok) -> None:
    llama.train()
    try:
        score_completions(llama, tok, [("w1", "w2")])
        assert llama.training
        assert all(p.grad is None for p in llama.parameters())
    finally:
        llama.eval()


def test_evaluation_modules_import_no_heavy_libraries() -> None:
    """`pvreg --help`/`pvreg list` must stay fast once the CLI imports these modules."""
    code = (
        "import sys\n"
        "import pvreg.registry.evaluation as e\n"
        "from pvreg.registry.evaluation import scoring, metrics, evalsets, grid, plots, similarity\n"
        "from pvreg.registry.evaluation import evalfiles, measure, evaluate, sweep, sweepfiles, ops\n"
        "import pvreg.cli.evaluate, pvreg.cli.sweep\n"
        "import pvreg.schemas.evaluation\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'matplotlib', 'safetensors') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
