"""Truncated SVD of one dense delta into LoRA factors, with the error it costs.

A dense preference vector φ has one full-size delta per module; a multi-LoRA
server wants ``lora_B @ lora_A`` instead.  By Eckart–Young the truncated SVD is
the best rank-r approximation in Frobenius norm, so it is what the exporter
uses, one 2-D tensor at a time in float32 (memory stays at a few copies of the
largest module whatever the model size).

Why the residual comes from the spectrum: with the singular values in hand,
‖φ − φ_r‖_F = sqrt(Σ_{i>r} σ_i²) costs nothing, while forming ``b @ a`` and
subtracting costs another full-size matmul per module.  That identity needs
the exact (deterministic, full) SVD, which is why this module uses
``torch.linalg.svd`` and not a randomized one (see bench/bench_lora.py for the
measured trade-off).  The reported error is therefore the error of the ideal
rank-r factorisation; rounding ``b @ a`` in float32 adds at most a few float32
epsilons relative to ‖φ‖, which the tests bound.

Only the maths lives here; naming tensors, choosing which modules are
expressible as LoRA and writing the adapter belong to the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvreg.registry.errors import InvalidOptionError, NonFiniteTensorError, opt

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LowRank:
    """LoRA factors of one module's delta and how far they are from it.

    ``a`` is PEFT's ``lora_A.weight`` (r, in_features), ``b`` its
    ``lora_B.weight`` (out_features, r), both float32 and contiguous, with
    ``b @ a ≈ φ``.  The singular values are split evenly (b = U√S, a = √S Vᵀ)
    so neither factor carries the whole scale: that keeps both well inside the
    range of bf16/f16 when the exporter casts them.
    """

    a: torch.Tensor
    b: torch.Tensor
    #: r; 0 for an all-zero φ (then ``a`` is (0, in) and ``b`` is (out, 0)).
    rank: int
    #: ‖φ‖_F of the float32 delta.
    norm: float
    #: ‖φ − b @ a‖_F of the exact truncated SVD: sqrt of the discarded σ².
    residual: float

    @property
    def error(self) -> float:
        """‖φ − b @ a‖ / ‖φ‖; 0.0 for an all-zero φ, which any rank represents exactly."""
        return self.residual / self.norm if self.norm > 0 else 0.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_policy(*, rank: int | None, energy: float | None, max_rank: int | None) -> None:
    """Refuse a rank policy that is not exactly one valid rule (the CLI names the flags).

    Public so an exporter can check its options before reading any tensor.
    """
    if (rank is None) == (energy is None):
        raise InvalidOptionError(
            f"give exactly one of {opt('rank')} or {opt('energy')}"
            + (" (both were given)" if rank is not None else " (neither was given)"),
            option="rank",
        )
    if rank is not None and (not _is_int(rank) or rank < 1):
        raise InvalidOptionError(
            f"invalid {opt('rank')} {rank!r}: must be an integer of at least 1", option="rank", value=rank
        )
    if energy is not None and (
        isinstance(energy, bool)
        or not isinstance(energy, (int, float))
        or not math.isfinite(energy)
        or not 0 < energy <= 1
    ):
        raise InvalidOptionError(
            f"invalid {opt('energy')} {energy!r}: must be a fraction of the spectral energy, 0 < E ≤ 1",
            option="energy",
            value=energy,
        )
    if max_rank is not None and (not _is_int(max_rank) or max_rank < 1):
        raise InvalidOptionError(
            f"invalid {opt('max_rank')} {max_rank!r}: must be an integer of at least 1",
            option="max_rank",
            value=max_rank,
        )


def _float32(delta: torch.Tensor) -> torch.Tensor:
    """``delta`` as a finite float32 tensor, or a :class:`NonFiniteTensorError` saying why not."""
    import torch

    if not delta.is_floating_point():
        raise InvalidOptionError(
            f"cannot factorise a {str(delta.dtype).removeprefix('torch.')} tensor: not floating point"
        )
    bad = int((~torch.isfinite(delta)).sum())
    if bad:
        raise NonFiniteTensorError(
            f"{bad} of {delta.numel()} values are NaN or Inf; no low-rank factorisation of it is meaningful",
            count=bad,
        )
    x = delta.detach().to(torch.float32)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise NonFiniteTensorError(
            f"{bad} of {delta.numel()} values overflow float32 (|x| > 3.4e38), in which the SVD is computed",
            count=bad,
        )
    return x


def _chosen_rank(s2: torch.Tensor, *, rank: int | None, energy: float | None, max_rank: int | None) -> int:
    """r from the policy, given the squared singular values ``s2`` (descending, float64)."""
    import torch

    # Exactly-zero σ add nothing: never spend rank on them (an all-zero φ gets rank 0).
    nonzero = int((s2 > 0).sum())
    if rank is not None:
        r = rank
    else:
        assert energy is not None
        cum = torch.cumsum(s2, 0)
        # The first index whose cumulative energy reaches E·total (cum is non-decreasing); the
        # total is cum's own last entry, so E = 1 is met exactly at the last non-zero σ.
        r = int(torch.searchsorted(cum, energy * cum[-1], side="left")) + 1 if len(cum) and cum[-1] > 0 else 0
    if max_rank is not None:
        r = min(r, max_rank)
    return max(0, min(r, nonzero))


def low_rank(
    delta: torch.Tensor,
    *,
    rank: int | None = None,
    energy: float | None = None,
    max_rank: int | None = None,
) -> LowRank:
    """The truncated SVD of one 2-D delta: a fixed ``rank`` or the smallest keeping ``energy``.

    ``rank`` (≥ 1) is capped at min(shape); ``energy`` E (0 < E ≤ 1) picks the
    smallest r with Σ_{i≤r} σ_i² ≥ E·Σσ², per module (hence PEFT's
    ``rank_pattern``); ``max_rank`` caps either, e.g. a serving engine's limit.
    Any floating dtype is accepted and factorised in float32.
    """
    import torch

    check_policy(rank=rank, energy=energy, max_rank=max_rank)
    if delta.ndim != 2:
        raise InvalidOptionError(
            f"a LoRA factorisation needs a 2-D tensor, got shape {tuple(delta.shape)}", shape=tuple(delta.shape)
        )
    x = _float32(delta)
    out_features, in_features = x.shape
    norm = float(torch.linalg.vector_norm(x, dtype=torch.float64))
    if x.numel() == 0 or norm == 0:
        return LowRank(
            a=x.new_zeros((0, in_features)), b=x.new_zeros((out_features, 0)), rank=0, norm=norm, residual=0.0
        )
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    del x
    s2 = s.double().square()
    r = _chosen_rank(s2, rank=rank, energy=energy, max_rank=max_rank)
    residual = math.sqrt(float(s2[r:].sum()))
    root = s[:r].sqrt()
    b = (u[:, :r] * root).contiguous()
    a = (root[:, None] * vh[:r]).contiguous()
    return LowRank(a=a, b=b, rank=r, norm=norm, residual=residual)


def overall_error(parts: Iterable[tuple[float, float]]) -> float:
    """Relative error of a whole vector from its modules' ``(norm, residual)`` pairs.

    The modules are disjoint blocks of one long vector, so squared norms add:
    sqrt(Σ residual²) / sqrt(Σ norm²).  0.0 when every norm is 0.
    """
    norm2 = res2 = 0.0
    for norm, residual in parts:
        norm2 += norm * norm
        res2 += residual * residual
    return math.sqrt(res2) / math.sqrt(norm2) if norm2 > 0 else 0.0
