"""Batched log-likelihood scoring with a causal language model.

Two jobs, one mechanism:

- :func:`score_completions` — Σ log p(completion tokens | prompt) for
  (prompt, completion) items: preference pairs and multiple choice;
- :func:`score_texts` / :func:`reference_logprobs` — next-token log-loss of
  every token of plain texts, and the per-token KL(base ‖ model) against a
  base's next-token distributions computed once beforehand.

Batching must not change a score, so sequences are **right-padded**: a real
token only ever attends to real tokens before it (causal mask + attention
mask) and keeps positions 0…L−1, exactly as when it is run alone.  Items are
sorted by length so a batch carries little padding; results come back in the
caller's order.  Each batch is one forward pass under ``torch.inference_mode()``;
for completions only the positions that predict completion tokens go through
the LM head when the model supports ``logits_to_keep``.  Token log-probs are
``logit[target] − logsumexp(logits)`` in float32, computed only at scored
positions and a bounded number of rows at a time, so no full float32
log-softmax over the vocabulary is materialised for the batch.

Tokenisation: the prompt is tokenised with the tokenizer's special tokens (BOS),
the completion without, and the two id lists are concatenated — the boundary
is exact and identical for chosen and rejected.  With a BPE tokenizer that
marks spaces on the following token, write the completion with its leading
space (``" Paris"``).  ``chat_template=None`` (default) wraps the prompt as one
user turn with the tokenizer's chat template when it has one (``True``:
require one, ``False``: never).  Heavy imports stay inside the functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import EvalError, EvalSetError

if TYPE_CHECKING:
    import torch

#: Bytes of temporaries (float32/float64 copies of logit rows) one chunk of rows may take.
_CHUNK_BYTES = 1 << 28


def _chunk_rows(vocab: int, itemsize: int) -> int:
    """How many rows of ``vocab`` entries of ``itemsize`` bytes fit in :data:`_CHUNK_BYTES`."""
    return max(1, _CHUNK_BYTES // max(1, vocab * itemsize))


@dataclass(frozen=True)
class ScoredItem:
    """Σ of the natural-log probabilities of a completion's tokens, and how many tokens it has."""

    logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        """Length-normalised score: mean log-prob per completion token."""
        return self.logprob / self.n_tokens


@dataclass(frozen=True)
class TextScore:
    """Σ next-token negative log-likelihood over a text's scored tokens, and Σ KL(base ‖ model) there."""

    nll: float
    n_tokens: int
    kl: float | None = None


@dataclass
class ReferenceLogprobs:
    """A base model's next-token distributions over a list of texts, computed once.

    One entry per window (see :func:`text_windows`).  With ``top_k=None`` the
    full distribution is kept (exact KL; ``positions × vocab × 4`` bytes); with
    ``top_k=k`` only the base's k most likely tokens per position plus the
    log of the remaining mass: the KL is then computed on the partition
    {those k tokens, everything else}, which is exact for k = vocab and
    otherwise a lower bound of the full KL (the log-sum inequality) that is
    tight when the base's tail mass is small.
    """

    windows: list[tuple[int, tuple[int, ...]]]  # (text index, token ids)
    top_k: int | None
    logp: list[Any]  # per window: float32 [positions, k or vocab] base log-probs
    ids: list[Any] | None  # per window: int32 [positions, k] token ids (None when full)
    log_rest: list[Any] | None  # per window: float32 [positions] log of the mass outside ids
    nll: list[float] = field(default_factory=list)  # per window: the base's own Σ NLL

    @property
    def nbytes(self) -> int:
        """Memory held by the stored distributions."""
        total = sum(t.numel() * t.element_size() for t in self.logp)
        for extra in (self.ids or []) + (self.log_rest or []):
            total += extra.numel() * extra.element_size()
        return total


# --- shared machinery ---------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise EvalError(f"batch size must be a positive integer, got {batch_size!r}")


def _model_device(model: Any, device: Any) -> torch.device:
    import torch

    if device is not None:
        return torch.device(device)
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


_FORWARD_PARAMS: dict[type, set[str]] = {}


def _forward_params(model: Any) -> set[str]:
    """Named parameters of ``model.forward`` (cached per class): which optional arguments it takes."""
    cls = type(model)
    cached = _FORWARD_PARAMS.get(cls)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        _FORWARD_PARAMS[cls] = cached
    return cached


def _context_length(model: Any, max_length: int | None) -> int | None:
    if max_length is not None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise EvalError(f"max_length must be an integer >= 2, got {max_length!r}")
        return max_length
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and value >= 2 else None


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by length, longest first (an out-of-memory shows up in the first batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer: Any) -> int:
    """Any valid id: padded positions are masked out and never scored."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: int | None) -> torch.Tensor:
    """Logits of the last ``keep`` positions (all when None): [B, keep, V]."""
    params = _forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    sliced = keep is not None and keep < ids.shape[1] and "logits_to_keep" in params
    if sliced:
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if keep is not None and not sliced:
        logits = logits[:, ids.shape[1] - keep :]
    return logits


def _lse(rows: torch.Tensor) -> torch.Tensor:
    """float32 logsumexp of each row of [N, V] logits, a bounded chunk of rows at a time."""
    import torch

    out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    step = _chunk_rows(rows.shape[1], 8)  # the float32 copy plus logsumexp's temporary
    for s in range(0, rows.shape[0], step):
        out[s : s + step] = torch.logsumexp(rows[s : s + step].float(), dim=-1)
    return out


def _scored_rows(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logit rows [N, V], their targets [N], log Z [N]) at the positions where ``mask`` is set, row-major."""
    rows = logits[mask]
    tgt = targets[mask]
    return rows, tgt, _lse(rows)


def _per_row_sums(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Σ of the scored values of each batch row (``values`` is flat, in ``mask``'s row-major order)."""
    import torch

    counts = mask.sum(dim=1)
    rows = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), counts)
    sums = torch.zeros(mask.shape[0], dtype=torch.float64, device=mask.device)
    sums.index_add_(0, rows, values.double())
    return sums.tolist()


class _EvalMode:
    """``inference_mode`` + ``eval()`` for the block, restoring the caller's training flag after."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        import torch

        self.training = bool(getattr(self.model, "training", False))
        self.model.eval()
        self.ctx = torch.inference_mode()
        self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.ctx.__exit__(*exc)
        self.model.train(self.training)


# --- completions ---------------------------------------------------------------------


def _prompt_texts(tokenizer: Any, prompts: Sequence[str], chat_template: bool | None) -> tuple[list[str], bool]:
    """(prompt strings to tokenise, whether the tokenizer should add its special tokens)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is True and not has_template:
        raise EvalError("chat_template=True but the tokenizer has no chat template")
    if chat_template is False or not has_template:
        return list(prompts), True
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return texts, False  # the template writes BOS and friends itself


def tokenize_items(
    tokenizer: Any,
    items: Sequence[tuple[str, str]],
    *,
    chat_template: bool | None = None,
    append_eos: bool = False,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt+completion and where its completion starts.

    A prompt longer than ``max_length`` allows is cut from the left (the
    completion is what is scored); an item whose completion has no tokens, or
    that cannot keep one token of context before it, is an :class:`EvalSetError`
    naming the item by ``labels[i]`` (e.g. ``pairs.jsonl:12 (rejected)``), else
    by its index.
    """
    texts, special = _prompt_texts(tokenizer, [p for p, _ in items], chat_template)
    prompt_ids = tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []
    completion_ids = tokenizer([c for _, c in items], add_special_tokens=False)["input_ids"] if items else []
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and not isinstance(eos, int):
        raise EvalError("append_eos=True but the tokenizer has no EOS token")
    seqs: list[list[int]] = []
    starts: list[int] = []
    for i, (p_ids, c_ids) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        where = labels[i] if labels is not None else f"item {i}"
        c = [*c_ids, eos] if append_eos else list(c_ids)
        p = list(p_ids)
        if not c:
            raise EvalSetError(f"{where}: the completion has no tokens")
        if not p:
            raise EvalSetError(
                f"{where}: the prompt has no tokens and the tokenizer adds no BOS token, "
                "so the completion's first token has no context to be scored from"
            )
        if max_length is not None and len(p) + len(c) > max_length:
            keep = max_length - len(c)
            if keep < 1:
                raise EvalSetError(
                    f"{where}: the completion has {len(c)} tokens, more than max_length {max_length} allows"
                )
            p = p[len(p) - keep :]
        seqs.append(p + c)
        starts.append(len(p))
    return seqs, starts


def score_completions(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    device: Any = None,
    chat_template: bool | None = None,
    append_eos: bool = False,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[ScoredItem]:
    """Σ log p(completion | prompt) and the completion's token count for each (prompt, completion).

    Natural logarithms.  ``max_length`` defaults to the model's
    ``max_position_embeddings``.  Equals scoring each item alone, unpadded, up
    to floating-point summation order.  ``labels`` name the items in errors.
    """
    import torch

    _check_batch_size(batch_size)
    seqs, starts = tokenize_items(
        tokenizer,
        items,
        chat_template=chat_template,
        append_eos=append_eos,
        max_length=_context_length(model, max_length),
        labels=labels,
    )
    dev = _model_device(model, device)
    pad = _pad_id(tokenizer)
    results: dict[int, ScoredItem] = {}  # item index -> score; batches go longest first
    with _EvalMode(model):
        for batch in _batches([len(s) for s in seqs], batch_size):
            ids, attn = _pad_right([seqs[i] for i in batch], pad, dev)
            width = ids.shape[1]
            first = min(starts[i] for i in batch) - 1  # first position whose logits predict a completion token
            logits = _logits(model, ids, attn, width - first)[:, :-1]  # positions first .. width-2
            targets = ids[:, first + 1 :]
            pos = torch.arange(first + 1, width, device=dev)
            lo = torch.as_tensor([starts[i] for i in batch], device=dev)[:, None]
            hi = torch.as_tensor([len(seqs[i]) for i in batch], device=dev)[:, None]
            scored = (pos >= lo) & (pos < hi)
            rows, tgt, lse = _scored_rows(logits, targets, scored)
            token_lp = rows.gather(1, tgt[:, None]).squeeze(1).float() - lse
            sums = _per_row_sums(token_lp, scored)
            counts = scored.sum(dim=1).tolist()
            for row, i in enumerate(batch):
                results[i] = ScoredItem(sums[row], int(counts[row]))
    return [results[i] for i in range(len(seqs))]


# --- texts ---------------------------------------------------------------------------
