"""The per-tensor engine: Σ η_i·s_i·φ_i for one tensor, added to the base, cast once.

Elementwise methods work on cache-sized slices of the flattened tensor so the
float32 temporaries stay small and are reused; other methods see the whole
tensor.  Every touched output is checked to be finite after the cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import BaseMismatchError, SpecError
from pvreg.registry.merge.plan import Input, Plan
from pvreg.registry.tensors.workers import SLICE_ELEMENTS, Workers, single_threaded_torch, widen

__all__ = ["SLICE_ELEMENTS", "Workers", "check_finite", "combined_delta", "merged_tensor", "single_threaded_torch"]

if TYPE_CHECKING:
    import torch

    from pvreg.registry.tensors.buffers import OutputBuffers


def combined_delta(plan: Plan, name: str, users: Sequence[Input], part: slice | None = None) -> torch.Tensor:
    """Σ η_i·s_i·φ_i for one tensor (or the method's variant), in the accumulation dtype.

    ``part``: only that slice of the flattened tensor (elementwise methods only).
    """
    import torch

    acc = getattr(torch, plan.spec.accumulate)
    deltas = [(u.file.tensor(name) if part is None else u.file.tensor(name).reshape(-1)[part]).to(acc) for u in users]
    return plan.method.combine(deltas, [u.weight for u in users], tensor_name=name, keys=[u.meta.sha256 for u in users])


def merged_tensor(
    plan: Plan,
    name: str,
    users: Sequence[Input],
    base: torch.Tensor,
    out_dtype: torch.dtype,
    workers: Workers | None = None,
    device: Any = None,
    buffers: OutputBuffers | None = None,
) -> torch.Tensor:
    """θ_base + Δ for one tensor, accumulated in ``plan.spec.accumulate``, cast to ``out_dtype``.

    ``linear`` streams: per slice, the stored deltas (bf16/f16/f32 views of the
    mapped blobs) are multiply-added straight into a reused float32 (or
    float64) buffer, the base is added, and the slice is cast once into the
    output.  One pass over each input, no float32 copy of any input, and the
    same operations in the same order as ``Linear.combine`` followed by
    ``+ base`` (bit-identical; the tests compare both).  ``buffers``: lend the
    output from there (the caller gives it back once written) instead of
    fresh memory.
    """
    import torch

    if plan.method.name != "linear":
        delta = combined_delta(plan, name, users)
        delta.add_(base)  # θ = θ_base + Δ, in the accumulation dtype
        return check_finite(name, delta.to(out_dtype))
    from pvreg.registry.merge.methods import add_weighted
    from pvreg.registry.merge.tensorops import _canonical_order

    acc_dtype = getattr(torch, plan.spec.accumulate)
    weights = [float(u.weight) for u in users]
    for w, u in zip(weights, users, strict=True):
        if not math.isfinite(w):
            raise SpecError(f"weight {w} of vector {u.meta.sha256} is not finite")
    order = _canonical_order(weights, [u.meta.sha256 for u in users])
    flats = []
    for u in users:
        d = u.file.tensor(name)
        if d.shape != base.shape:
            raise BaseMismatchError(
                f"tensor {name!r} of vector {u.meta.sha256} has shape {tuple(d.shape)}, expected {tuple(base.shape)}"
            )
        flats.append(d.reshape(-1))
    if device is not None:  # compose --device cuda: a (torch.device, Staging) pair
        from pvreg.registry.merge.cuda import merged_on_device

        return merged_on_device(
            name, flats, weights, order, base, out_dtype, acc_dtype, device[0], device[1], check_finite
        )
    own = workers is None
    pool = workers or Workers(1)
    out = torch.empty(base.shape, dtype=out_dtype) if buffers is None else buffers.take(name, base.shape, out_dtype)
    flat_out, flat_base = out.view(-1), base.reshape(-1)

    bound = finite_bound(out_dtype)

    def job(_: int, part: slice) -> None:
        n = part.stop - part.start
        acc, widened = pool.scratch(acc_dtype, n), pool.scratch(acc_dtype, n, slot=1)
        acc.zero_()
        add_weighted(acc, [f[part] for f in flats], weights, order, widened)
        acc.add_(widen(flat_base[part], widened))
        piece = flat_out[part]
        piece.copy_(acc)
        # One BLAS dot instead of isfinite + all on the output; see finite_bound.  Only a
        # slice that fails it (Inf/NaN, or values near the output dtype's limit) is checked
        # element by element.
        if not cast_stays_finite(acc, bound):
            check_finite(name, piece)

    try:
        pool.run(base.numel(), job)
    finally:
        if own:
            pool.close()
    return out


def finite_bound(out_dtype: torch.dtype) -> float:
    """A bound on a slice's computed ``Σ acc²`` under which its cast to ``out_dtype`` is finite.

    Sound whatever the summation order: a floating-point sum of ``n`` non-negative
    terms is within a relative ``n·u/(1 − n·u)`` of the exact sum (``u`` = 2⁻²⁴
    for float32, ``n`` ≤ 2¹⁸ elements per slice: under 1/63), so a computed sum
    ≤ ½·max² means every ``|acc_i|`` < max, which rounds to a finite value.  A
    NaN or Inf in ``acc`` makes the sum NaN or Inf, which fails the comparison.
    """
    import torch

    limit = float(torch.finfo(out_dtype).max)
    return 0.5 * limit * limit  # inf for float64 output: then any finite sum passes


def cast_stays_finite(acc: torch.Tensor, bound: float) -> bool:
    """True only if ``acc`` (one slice of at most ``SLICE_ELEMENTS``) casts finitely to the dtype of ``bound``."""
    import torch

    total = float(torch.dot(acc, acc))
    return math.isfinite(total) and total <= bound


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or :class:`SpecError` when it holds Inf/NaN.

    Inputs are finite (checked when added), so a non-finite output means the
    weighted sum overflowed the accumulator or the cast to the output dtype;
    writing it would give a model that silently computes NaN.
    """
    import torch

    if not bool(torch.isfinite(t).all()):
        raise SpecError(
            f"output tensor {name!r} would contain Inf/NaN as {str(t.dtype).removeprefix('torch.')}: "
            "the coefficients are too large for that dtype"
        )
    return t


def _release(plan: Plan, name: str, users: Sequence[Input]) -> None:
    for u in users:
        u.file.release(name)
