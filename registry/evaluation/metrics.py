"""Evaluation metrics with percentile-bootstrap 95% confidence intervals.

- :func:`preference_metrics` — on (prompt, chosen, rejected) pairs: accuracy
  (log p(chosen) > log p(rejected)), mean margin, and both again length-
  normalised (mean log-prob per completion token); with the base's scores,
  the DPO implicit-reward accuracy and margin too.
- :func:`text_metrics` — perplexity and mean per-token KL(base ‖ model) on texts.
- :func:`choice_metrics` — multiple-choice accuracy (argmax of Σ log-prob,
  and of the per-token mean).

Every interval resamples the independent units (pairs, texts, questions)
with one seeded generator per metric, so the same inputs and seed give the
same numbers.  Log-probs are natural logarithms (nats).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pvreg.registry.errors import EvalError
from pvreg.registry.evaluation.scoring import (
    ReferenceLogprobs,
    ScoredItem,
    score_completions,
)
from pvreg.registry.evaluation.texts import reference_logprobs, score_texts

if TYPE_CHECKING:
    import numpy as np

    from pvreg.schemas.evaluation import MetricValue

#: With a base model given to :func:`text_metrics`, its distributions are kept for this many batches of texts at once.
_TEXTS_PER_REFERENCE_SLICE = 4
#: Resamples drawn at once: bounds the bootstrap's count matrix to ~this × units × 8 bytes.
_RESAMPLE_BLOCK_ELEMENTS = 1 << 22


class PairLike(Protocol):
    """What a preference pair must offer (``evalsets.PreferencePair`` or the training loader's rows).

    An optional ``source`` attribute (``"file:line"``) names the pair in errors.
    """

    prompt: str
    chosen: str
    rejected: str


class ChoiceLike(Protocol):
    """What a multiple-choice item must offer (``evalsets.ChoiceItem``)."""

    question: str
    choices: Sequence[str]
    answer: int


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    seed: int,
    n: int = 1000,
    weights: Sequence[float] | np.ndarray | None = None,
    level: float = 0.95,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> MetricValue:
    """The (weighted) mean of ``values`` with a percentile-bootstrap confidence interval.

    Each of the ``n`` resamples draws len(values) units with replacement and
    takes Σwᵢvᵢ/Σwᵢ over them (plain mean without ``weights``); the interval is
    the (1−level)/2 and (1+level)/2 quantiles of those means.  ``transform``
    (monotone increasing, e.g. ``np.exp`` for perplexity from mean NLL) is
    applied to the estimate and to every resample, so the interval transforms
    with it.  Deterministic for a given ``seed``.
    """
    import numpy as np

    from pvreg.schemas.evaluation import MetricValue

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    m = v.size
    if m == 0:
        raise EvalError("cannot compute a confidence interval from no values")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise EvalError(f"the number of bootstrap resamples must be a positive integer, got {n!r}")
    if not 0 < level < 1:
        raise EvalError(f"the confidence level must lie strictly between 0 and 1, got {level!r}")
    if not np.isfinite(v).all():
        raise EvalError("cannot compute a confidence interval: the values include NaN or Inf")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != v.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise EvalError("bootstrap weights must be finite, non-negative, not all zero, one per value")
    f = transform or (lambda x: x)
    estimate = float(f(np.asarray((w * v).sum() / w.sum())))
    # One generator per resample, spawned from the seed: resample i is the same draw whatever the
    # block size (memory) or the number of resamples, so results depend only on (values, seed).
    streams = np.random.SeedSequence(seed).spawn(n)
    wv = w * v
    means = np.empty(n)
    block = max(1, _RESAMPLE_BLOCK_ELEMENTS // m)
    for s in range(0, n, block):
        k = min(block, n - s)
        counts = np.stack(
            [
                np.bincount(np.random.Generator(np.random.PCG64(streams[s + i])).integers(0, m, m), minlength=m)
                for i in range(k)
            ]
        ).astype(np.float64)
        # Row-wise sums, not a matrix product: their rounding must not depend on the block's shape.
        den = (counts * w).sum(axis=1)
        # A resample that drew only zero-weight units has no mean; it counts as the estimate's own units would.
        num = (counts * wv).sum(axis=1)
        means[s : s + k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), wv.sum() / w.sum())
    low, high = np.quantile(f(means), [(1 - level) / 2, (1 + level) / 2])
    return MetricValue(value=estimate, ci_low=float(low), ci_high=float(high), n=m, level=level)


# --- preference pairs ----------------------------------------------------------------


def preference_metrics_from_scores(
    chosen: Sequence[ScoredItem],
    rejected: Sequence[ScoredItem],
    *,
    reference: tuple[Sequence[ScoredItem], Sequence[ScoredItem]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, MetricValue]:
    """Preference metrics from already computed scores (see :func:`preference_metrics`)."""
    import numpy as np

    if len(chosen) != len(rejected) or not chosen:
        raise EvalError("preference metrics need the same, non-zero number of chosen and rejected scores")
    lc = np.array([s.logprob for s in chosen])
    lr = np.array([s.logprob for s in rejected])
    nc = np.array([s.mean_logprob for s in chosen])
    nr = np.array([s.mean_logprob for s in rejected])
    per_pair = {
        "accuracy": (lc > lr).astype(np.float64),
        "margin": lc - lr,
        "accuracy_norm": (nc > nr).astype(np.float64),
        "margin_norm": nc - nr,
    }
    if reference is not None:
        ref_c, ref_r = reference
        if len(ref_c) != len(chosen) or len(ref_r) != len(rejected):
            raise EvalError("the reference scores do not match the pairs (different counts)")
        reward = (lc - np.array([s.logprob for s in ref_c])) - (lr - np.array([s.logprob for s in ref_r]))
        per_pair["reward_accuracy"] = (reward > 0).astype(np.float64)
        per_pair["reward_margin"] = reward
    return {k: bootstrap_ci(v, seed=seed, n=n_boot) for k, v in per_pair.items()}


def score_pairs(
    model: Any, tokenizer: Any, pairs: Sequence[PairLike], **score_options: Any
) -> tuple[list[ScoredItem], list[ScoredItem]]:
    """(chosen scores, rejected scores): one batched scoring pass over both completions of every pair."""
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    names = [getattr(p, "source", None) or f"pair {i}" for i, p in enumerate(pairs)]
    labels = [f"{n} (chosen)" for n in names] + [f"{n} (rejected)" for n in names]
    scored = score_completions(model, tokenizer, items, labels=labels, **score_options)
    return scored[: len(pairs)], scored[len(pairs) :]


def preference_metrics(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PairLike],
    *,
    reference: tuple[Sequence[ScoredItem], Sequence[ScoredItem]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    **score_options: Any,
) -> dict[str, MetricValue]:
    """Accuracy, margin and their length-normalised forms on preference pairs.

    - ``accuracy``: share of pairs with Σ log p(chosen) > Σ log p(rejected) (a tie is a miss);
    - ``margin``: mean of Σ log p(chosen) − Σ log p(rejected), in nats;
    - ``accuracy_norm`` / ``margin_norm``: the same with the per-token mean log-prob;
    - with ``reference`` = :func:`score_pairs` of the base on the same pairs:
      ``reward_accuracy`` / ``reward_margin`` on the DPO implicit reward
      r = log p_model − log p_base (β = 1).

    ``score_options`` go to :func:`score_completions` (``batch_size``, ``device``,
    ``chat_template``, ``append_eos``, ``max_length``).
    """
    chosen, rejected = score_pairs(model, tokenizer, pairs, **score_options)
    return preference_metrics_from_scores(chosen, rejected, reference=reference, seed=seed, n_boot=n_boot)


# --- texts ---------------------------------------------------------------------------


def text_metrics(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    reference: ReferenceLogprobs | Any | None = None,
    top_k: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
    device: Any = None,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, MetricValue]:
    """Perplexity (and mean NLL) of ``model`` on ``texts``; with ``reference``, mean per-token KL(base ‖ model).

    - ``nll_per_token``: Σ NLL / Σ scored tokens over all texts (nats);
    - ``perplexity``: exp(nll_per_token);
    - ``kl_per_token``: Σ_positions KL(p_base ‖ p_model) / Σ scored tokens, at
      the positions perplexity scores.  Direction: the base's distribution is
      the first argument, E_{v~base}[log p_base(v) − log p_model(v)].

    ``reference`` is either precomputed :func:`reference_logprobs` of the base
    (the sweep's way: one model in memory, changed in place) or the base model
    itself (two models in memory; the base's distributions, with ``top_k``, are
    then computed here a few batches of texts at a time, so memory stays bounded).
    Intervals resample texts, weighting each by its token count.  ``labels``
    name the texts in errors (default ``text <index>``).
    """
    import numpy as np

    options: dict[str, Any] = {"batch_size": batch_size, "device": device, "max_length": max_length}
    if reference is None or isinstance(reference, ReferenceLogprobs):
        scores = score_texts(model, tokenizer, texts, reference=reference, labels=labels, **options)
    else:
        # A base model given: its distributions are needed only for the texts being scored, so
        # compute them a slice of texts at a time and keep memory bounded whatever the eval set size.
        scores = []
        step = max(1, batch_size) * _TEXTS_PER_REFERENCE_SLICE
        for s in range(0, len(texts), step):
            part = texts[s : s + step]
            names = [labels[k] if labels is not None else f"text {k}" for k in range(s, s + len(part))]
            ref = reference_logprobs(reference, tokenizer, part, top_k=top_k, labels=names, **options)
            scores.extend(score_texts(model, tokenizer, part, reference=ref, labels=names, **options))
    tokens = np.array([s.n_tokens for s in scores], dtype=np.float64)
    mean_nll = np.array([s.nll for s in scores]) / tokens
    out = {
        "nll_per_token": bootstrap_ci(mean_nll, seed=seed, n=n_boot, weights=tokens),
        "perplexity": bootstrap_ci(mean_nll, seed=seed, n=n_boot, weights=tokens, transform=np.exp),
    }
    if reference is not None:
        mean_kl = np.array([s.kl for s in scores], dtype=np.float64) / tokens
        out["kl_per_token"] = bootstrap_ci(mean_kl, seed=seed, n=n_boot, weights=tokens)
    return out


# --- multiple choice -----------------------------------------------------------------


def choice_predictions(
    model: Any, tokenizer: Any, items: Sequence[ChoiceLike], **score_options: Any
) -> tuple[list[int], list[int]]:
    """Per question, the index of the most likely choice: by Σ log-prob, and by mean log-prob per token.

    Every choice is scored as a completion of the question, all in one batched
    pass; on a tie the first choice wins.
    """
    flat = [(it.question, c) for it in items for c in it.choices]
    labels = [
        f"{getattr(it, 'source', None) or f'question {i}'} (choice {j})"
        for i, it in enumerate(items)
        for j in range(len(it.choices))
    ]
    scored = score_completions(model, tokenizer, flat, labels=labels, **score_options)
    by_sum: list[int] = []
    by_mean: list[int] = []
    pos = 0
    for it in items:
        block = scored[pos : pos + len(it.choices)]
        pos += len(it.choices)
        by_sum.append(max(range(len(block)), key=lambda j: (block[j].logprob, -j)))
        by_mean.append(max(range(len(block)), key=lambda j: (block[j].mean_logprob, -j)))
    return by_sum, by_mean


def choice_metrics(
    model: Any,
    tokenizer: Any,
    items: Sequence[ChoiceLike],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    **score_options: Any,
) -> dict[str, MetricValue]:
    """``accuracy`` (argmax of Σ log p(choice | question)) and ``accuracy_norm`` (argmax of the per-token mean)."""
    import numpy as np

    if not items:
        raise EvalError("multiple-choice metrics need at least one question")
    by_sum, by_mean = choice_predictions(model, tokenizer, items, **score_options)
    answers = np.array([it.answer for it in items])
    return {
        "accuracy": bootstrap_ci((np.array(by_sum) == answers).astype(np.float64), seed=seed, n=n_boot),
        "accuracy_norm": bootstrap_ci((np.array(by_mean) == answers).astype(np.float64), seed=seed, n=n_boot),
    }
