"""Scoring plain text: perplexity, and the base model's next-token distributions for KL(base ‖ model).

The reference distributions are computed once (optionally top-k), so a sweep
can apply vectors in place and compare without a second model in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import EvalError, EvalSetError
from pvreg.registry.evaluation.scoring import (
    ReferenceLogprobs,
    TextScore,
    _batches,
    _check_batch_size,
    _chunk_rows,
    _context_length,
    _EvalMode,
    _logits,
    _model_device,
    _pad_id,
    _pad_right,
    _per_row_sums,
    _scored_rows,
)

if TYPE_CHECKING:
    import torch

#: Bytes of temporaries (float32/float64 copies of logit rows) one chunk of rows may take.


def text_windows(
    tokenizer: Any, texts: Sequence[str], *, max_length: int | None = None, labels: Sequence[str] | None = None
) -> list[tuple[int, tuple[int, ...]]]:
    """(text index, token ids) of every scoring window.

    A text is tokenised with the tokenizer's special tokens; one longer than
    ``max_length`` is split into consecutive windows of that many tokens, each
    scored on its own (a window's first token is context, not scored).  Every
    token after the first of a window is scored, so a text needs 2 tokens
    (an :class:`EvalSetError` naming it by ``labels[i]``, else by index).
    """
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    windows: list[tuple[int, tuple[int, ...]]] = []
    for i, ids in enumerate(encoded):
        if len(ids) < 2:
            where = labels[i] if labels is not None else f"text {i}"
            raise EvalSetError(f"{where}: has {len(ids)} token(s); at least 2 are needed to score one")
        step = max_length or len(ids)
        for s in range(0, len(ids), step):
            chunk = tuple(ids[s : s + step])
            if len(chunk) >= 2:
                windows.append((i, chunk))
    return windows


def _text_batches(
    model: Any, tokenizer: Any, windows: Sequence[tuple[int, tuple[int, ...]]], batch_size: int, device: Any
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: (window indices, logit rows [N, V], targets [N], log Z [N], mask [B, T−1])."""
    import torch

    dev = _model_device(model, device)
    pad = _pad_id(tokenizer)
    for batch in _batches([len(w[1]) for w in windows], batch_size):
        ids, attn = _pad_right([windows[w][1] for w in batch], pad, dev)
        logits = _logits(model, ids, attn, None)[:, :-1]
        lengths = torch.as_tensor([len(windows[w][1]) for w in batch], device=dev)[:, None]
        scored = torch.arange(ids.shape[1] - 1, device=dev) < lengths - 1
        rows, tgt, lse = _scored_rows(logits, ids[:, 1:], scored)
        yield batch, rows, tgt, lse, scored


def reference_logprobs(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    top_k: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> ReferenceLogprobs:
    """The base model's next-token distributions over ``texts``, kept on the CPU for later KL.

    Compute this once with the base, then change the same model in place
    (apply a composition) and pass the result to :func:`score_texts` — two
    models never need to be in memory.  See :class:`ReferenceLogprobs` for
    ``top_k``.
    """
    import torch

    _check_batch_size(batch_size)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise EvalError(f"top_k must be a positive integer or None, got {top_k!r}")
    windows = text_windows(tokenizer, texts, max_length=_context_length(model, max_length), labels=labels)
    n = len(windows)
    logp: list[Any] = [None] * n
    ids: list[Any] | None = [None] * n if top_k is not None else None
    rest: list[Any] | None = [None] * n if top_k is not None else None
    nll: list[float] = [0.0] * n
    with _EvalMode(model):
        for batch, rows, tgt, lse, scored in _text_batches(model, tokenizer, windows, batch_size, device):
            counts = scored.sum(dim=1).tolist()
            token_nll = lse - rows.gather(1, tgt[:, None]).squeeze(1).float()
            sums = _per_row_sums(token_nll, scored)
            parts_lp, parts_ids, parts_rest = [], [], []
            step = _chunk_rows(rows.shape[1], 8)
            for s in range(0, rows.shape[0], step):
                lp = rows[s : s + step].float() - lse[s : s + step, None]
                if top_k is None:
                    parts_lp.append(lp.cpu())
                    continue
                k = min(top_k, lp.shape[1])
                top_lp, top_ids = lp.topk(k, dim=1)
                tail = lp.scatter(1, top_ids, float("-inf")).logsumexp(dim=1)
                parts_lp.append(top_lp.cpu())
                parts_ids.append(top_ids.to(torch.int32).cpu())  # vocabularies < 2³¹: half the memory
                parts_rest.append(tail.cpu())
            flat_lp = torch.cat(parts_lp).split(counts)
            flat_ids = torch.cat(parts_ids).split(counts) if top_k is not None else None
            flat_rest = torch.cat(parts_rest).split(counts) if top_k is not None else None
            for row, w in enumerate(batch):
                logp[w] = flat_lp[row].clone()
                nll[w] = sums[row]
                if ids is not None and rest is not None and flat_ids is not None and flat_rest is not None:
                    ids[w] = flat_ids[row].clone()
                    rest[w] = flat_rest[row].clone()
    return ReferenceLogprobs(windows=windows, top_k=top_k, logp=logp, ids=ids, log_rest=rest, nll=nll)


def _kl_rows(
    rows: torch.Tensor,
    lse: torch.Tensor,
    ref_lp: torch.Tensor,
    ref_ids: torch.Tensor | None,
    ref_rest: torch.Tensor | None,
) -> torch.Tensor:
    """Per-position KL(base ‖ model) in float64, from the model's logit rows and the base's stored log-probs."""
    import torch

    out = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    step = _chunk_rows(rows.shape[1], 8 * 4)  # a few float64 temporaries of a row's width
    for s in range(0, rows.shape[0], step):
        r = rows[s : s + step]
        z32 = lse[s : s + step, None]
        z = z32.double()
        lb = ref_lp[s : s + step].double()
        # The model's log-probs are rounded to float32 exactly as the reference's were, so an unchanged
        # model has KL exactly 0 (not float32 rounding noise of either sign).
        if ref_ids is None:
            lm = (r.float() - z32).double()
            out[s : s + step] = (lb.exp() * (lb - lm)).sum(dim=1)
            continue
        idx = ref_ids[s : s + step]
        lm = (r.gather(1, idx).float() - z32).double()
        kl = (lb.exp() * (lb - lm)).sum(dim=1)
        assert ref_rest is not None  # top-k references store ids and the rest's log-mass together
        rest_b = ref_rest[s : s + step].double()
        rest_m = r.float().scatter(1, idx, float("-inf")).logsumexp(dim=1).double() - z.squeeze(1)
        tail = torch.where(torch.isinf(rest_b), torch.zeros_like(rest_b), rest_b.exp() * (rest_b - rest_m))
        out[s : s + step] = kl + tail
    return out


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    reference: ReferenceLogprobs | None = None,
    batch_size: int = 8,
    device: Any = None,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[TextScore]:
    """Per text: Σ next-token NLL, the number of scored tokens, and (with ``reference``) Σ KL(base ‖ model).

    KL(base ‖ model) at a position is Σ_v p_base(v)·(log p_base(v) − log p_model(v)):
    how much the model's next-token distribution departs from the base's,
    weighted by what the base would say.  ``reference`` must come from
    :func:`reference_logprobs` on the same texts with the same tokenizer and
    windowing.
    """
    import torch

    _check_batch_size(batch_size)
    windows = text_windows(tokenizer, texts, max_length=_context_length(model, max_length), labels=labels)
    if reference is not None and reference.windows != windows:
        raise EvalError("the reference log-probs were computed on other texts, another tokenizer or another max_length")
    nll = [0.0] * len(texts)
    tokens = [0] * len(texts)
    kl = [0.0] * len(texts)
    with _EvalMode(model):
        for batch, rows, tgt, lse, scored in _text_batches(model, tokenizer, windows, batch_size, device):
            token_nll = lse - rows.gather(1, tgt[:, None]).squeeze(1).float()
            sums = _per_row_sums(token_nll, scored)
            counts = scored.sum(dim=1).tolist()
            kl_sums: list[float] | None = None
            if reference is not None:
                dev = rows.device
                ref_lp = torch.cat([reference.logp[w] for w in batch]).to(dev)
                ref_ids = torch.cat([reference.ids[w] for w in batch]).to(dev).long() if reference.ids else None
                ref_rest = torch.cat([reference.log_rest[w] for w in batch]).to(dev) if reference.log_rest else None
                kl_sums = _per_row_sums(_kl_rows(rows, lse, ref_lp, ref_ids, ref_rest), scored)
            for row, w in enumerate(batch):
                t = windows[w][0]
                nll[t] += sums[row]
                tokens[t] += int(counts[row])
                if kl_sums is not None:
                    kl[t] += kl_sums[row]
    return [TextScore(nll[t], tokens[t], kl[t] if reference is not None else None) for t in range(len(texts))]
