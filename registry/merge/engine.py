"""The per-tensor engine: Σ η_i·s_i·φ_i for one tensor, added to the base, cast once.

Elementwise methods work on cache-sized slices of the flattened tensor so the
float32 temporaries stay small and are reused; other methods see the whole
tensor.  Every touched output is checked to be finite after the cast.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from pvreg.registry.errors import BaseMismatchError, SpecError
from pvreg.registry.merge.plan import Input, Plan

if TYPE_CHECKING:
    import torch


def combined_delta(plan: Plan, name: str, users: Sequence[Input], part: slice | None = None) -> torch.Tensor:
    """Σ η_i·s_i·φ_i for one tensor (or the method's variant), in the accumulation dtype.

    ``part``: only that slice of the flattened tensor (elementwise methods only).
    """
    import torch

    acc = getattr(torch, plan.spec.accumulate)
    deltas = [(u.file.tensor(name) if part is None else u.file.tensor(name).reshape(-1)[part]).to(acc) for u in users]
    return plan.method.combine(deltas, [u.weight for u in users], tensor_name=name, keys=[u.meta.sha256 for u in users])


#: Elements per slice for elementwise (``linear``) methods.  Each worker keeps one
#: float32 buffer of this size (1 MiB) and reuses it, so the temporaries stay in
#: cache and no tensor pays for fresh zero-filled pages.  Bit-identical whatever
#: the slice size.
SLICE_ELEMENTS = 1 << 18


class Workers:
    """A small pool that combines a tensor's slices in parallel, each worker with its own scratch buffer.

    Why not torch's own intra-op threads: every torch op is a parallel region
    that ends in a barrier, so on a shared machine where one of the threads is
    descheduled every op waits for it (measured here under load: a 1M-element
    ``add_`` took 3-20 ms on 2 threads against 1.1 ms on one).  Torch runs
    single-threaded inside (see :func:`single_threaded_torch`) and the slices
    are shared out dynamically, so a stalled worker only delays its own slice.
    """

    def __init__(self, workers: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.count = workers or max(1, min(4, len(os.sched_getaffinity(0))))
        self._pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="pvreg-compose")
        self._local = threading.local()

    def scratch(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """This thread's reusable buffer, the first ``numel`` elements."""
        import torch

        buf = getattr(self._local, "buf", None)
        if buf is None or buf.dtype != dtype:
            buf = self._local.buf = torch.empty(SLICE_ELEMENTS, dtype=dtype)
        return buf[:numel]

    def run(self, numel: int, job: Callable[[slice], None]) -> None:
        """``job(part)`` for every slice of ``range(numel)``; the first exception is raised."""
        parts = [slice(s, min(s + SLICE_ELEMENTS, numel)) for s in range(0, numel, SLICE_ELEMENTS)]
        if len(parts) <= 1 or self.count == 1:
            for part in parts:
                job(part)
            return
        for f in [self._pool.submit(job, part) for part in parts]:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Torch's intra-op parallelism off for the block (restored after): :class:`Workers` parallelises instead."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merged_tensor(
    plan: Plan,
    name: str,
    users: Sequence[Input],
    base: torch.Tensor,
    out_dtype: torch.dtype,
    workers: Workers | None = None,
) -> torch.Tensor:
    """θ_base + Δ for one tensor, accumulated in ``plan.spec.accumulate``, cast to ``out_dtype``.

    ``linear`` streams: per slice, the stored deltas (bf16/f16/f32 views of the
    mapped blobs) are multiply-added straight into a reused float32 (or
    float64) buffer, the base is added, and the slice is cast once into the
    output.  One pass over each input, no float32 copy of any input, and the
    same operations in the same order as ``Linear.combine`` followed by
    ``+ base`` (bit-identical; the tests compare both).
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
    own = workers is None
    pool = workers or Workers(1)
    out = torch.empty(base.shape, dtype=out_dtype)
    flat_out, flat_base = out.view(-1), base.reshape(-1)

    def job(part: slice) -> None:
        acc = pool.scratch(acc_dtype, part.stop - part.start)
        acc.zero_()
        add_weighted(acc, [f[part] for f in flats], weights, order)
        acc.add_(flat_base[part])
        piece = flat_out[part]
        piece.copy_(acc)
        # One reduction instead of isfinite + all: a non-finite sum means Inf/NaN (or a huge
        # finite sum, rare), and only then is every element checked.
        if not math.isfinite(float(torch.sum(piece, dtype=torch.float64))):
            check_finite(name, piece)

    try:
        pool.run(base.numel(), job)
    finally:
        if own:
            pool.close()
    return out


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
