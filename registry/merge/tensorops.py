"""The tensor operations merge methods are built from: seeds per tensor, magnitude trimming, DARE masks, TIES sign election."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

#: Same-width integer views, for sign-bit tricks on float tensors.
_INT_VIEW: dict[torch.dtype, torch.dtype] = {torch.float32: torch.int32, torch.float64: torch.int64}


def derive_seed(seed: int, tensor_name: str, key: str) -> int:
    """Generator seed for one (seed, tensor, vector) triple.

    ``int.from_bytes(sha256(f"{seed}\\0{tensor_name}\\0{key}".encode("utf-8"))
    .digest()[:8], "big")`` – an unsigned 64-bit integer.
    """
    material = f"{seed}\0{tensor_name}\0{key}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")


def trim_count(density: float, numel: int) -> int:
    """``k = ceil(density·numel)``, clamped to ``[1, numel]`` (0 for an empty tensor).

    ``density`` is read as the decimal it prints as (``repr``), so ``0.1·30`` is
    exactly 3 rather than ``ceil(3.0000000000000004) = 4``.
    """
    if numel <= 0:
        return 0
    k = math.ceil(Fraction(repr(float(density))) * numel)
    return min(max(k, 1), numel)


def _dare_mask(shape: torch.Size, density: float, generator_seed: int) -> torch.Tensor:
    """Boolean keep-mask: ``torch.rand(shape, generator=g, dtype=float32) < density``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(generator_seed)
    u = torch.rand(shape, generator=g, dtype=torch.float32, device="cpu")
    mask = u < density
    del u
    return mask


def kth_largest_abs(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of ``|delta|`` (1-based) as a 0-dim tensor of ``delta``'s dtype.

    Exact, and leaner than ``torch.kthvalue``/``topk`` on the whole tensor (which
    copy the input and allocate int64 indices, ~4 tensor-sizes for float32):
    non-negative IEEE floats order like their bit patterns, so the threshold is
    bisected over the integer view of ``|delta|`` with boolean counts; once the
    window ``[lo, hi)`` holds few enough entries they are extracted and finished
    with ``kthvalue``.
    """
    numel = delta.numel()
    if not 1 <= k <= numel:
        raise ValueError(f"k={k} out of range for {numel} entries")
    a = delta.abs().reshape(-1)
    bits = a.view(_INT_VIEW[a.dtype])
    # Invariant: count(bits >= lo) = cnt_lo >= k > cnt_hi = count(bits >= hi).
    lo, hi = 0, int(bits.max()) + 1
    cnt_lo, cnt_hi = numel, 0
    limit = max(1 << 14, numel >> 4)
    while hi - lo > 1 and cnt_lo - cnt_hi > limit:
        mid = (lo + hi) // 2
        c = int(torch.count_nonzero(bits >= mid))
        if c >= k:
            lo, cnt_lo = mid, c
        else:
            hi, cnt_hi = mid, c
    if hi - lo == 1:
        # Every entry in [lo, hi) equals lo, and the k-th largest lies there.
        result = torch.tensor(lo, dtype=bits.dtype).view(a.dtype)
    else:
        window = bits >= lo
        window.logical_and_(bits < hi)
        sub = a[window]
        del window
        # The k-th largest overall is the (k - cnt_hi)-th largest in the window.
        result = torch.kthvalue(sub, sub.numel() - (k - cnt_hi) + 1).values
        del sub
    del a, bits
    return result.to(delta.device)


def _canonical_order(weights: Sequence[float], keys: Sequence[str]) -> list[int]:
    """Indices sorted by ``(key, weight)``: the order every method accumulates in."""
    return sorted(range(len(keys)), key=lambda i: (keys[i], weights[i]))


def _sign_consensus(
    order: Sequence[int],
    contribution: Callable[[int], torch.Tensor],
    like: torch.Tensor,
) -> torch.Tensor:
    """TIES steps 3–4 over ``d_i = contribution(i)``.

    ``σ = sign(Σ d_i)``; ``result = Σ_{d_i≠0, sign(d_i)=σ} d_i / max(1, count)``.

    ``contribution`` is called twice per vector (once per pass) and must return
    the same fresh tensor both times; this keeps at most a handful of
    tensor-sized buffers alive instead of all ``n`` contributions: the running
    sum (pass 1) or the result (pass 2), one contribution, and boolean/uint8
    masks (σ>0, σ<0, agreement, count).
    """
    total = torch.zeros_like(like)
    for i in order:
        d = contribution(i)
        total.add_(d)
        del d
    sigma_pos = total > 0
    sigma_neg = total < 0
    # Reuse the sum's buffer for the result.
    total.zero_()
    count_dtype = torch.uint8 if len(order) < 256 else torch.int32
    count = torch.zeros(like.shape, dtype=count_dtype, device=like.device)
    for i in order:
        d = contribution(i)
        agree = d > 0
        agree.logical_and_(sigma_pos)
        neg = d < 0
        neg.logical_and_(sigma_neg)
        agree.logical_or_(neg)
        del neg
        # Same-size uint8 view: adding a bool tensor would allocate a cast copy.
        count.add_(agree.view(torch.uint8) if count_dtype == torch.uint8 else agree)
        d.masked_fill_(agree.logical_not_(), 0)
        total.add_(d)
        del d, agree
    del sigma_pos, sigma_neg
    count.clamp_(min=1)
    total.div_(count)
    return total
