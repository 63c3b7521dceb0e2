"""The threads of the streaming tensor passes (compose, extraction), robust on a shared machine.

:class:`Workers` computes a tensor's slices in parallel, :class:`WriteBehind`
hashes and writes the previous tensor meanwhile, and :func:`while_importing_torch`
runs the GIL-free work that comes before the first tensor (hashing inputs) while
torch imports.

Why not torch's own intra-op threads: every torch op is a parallel region
that ends in a barrier, so on a shared machine where one of the threads is
descheduled every op waits for it (measured here under load: a 1M-element
``add_`` took 3-20 ms on 2 threads against 1.1 ms on one, and a 0.5B compose
ran 4-6x slower).  Torch runs single-threaded inside the pass
(:func:`single_threaded_torch`) and a small pool shares the slices of each
tensor out dynamically, so a stalled worker only delays its own slice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: Elements per slice for elementwise (``linear``) methods.  Each worker keeps one
#: float32 buffer of this size (1 MiB) and reuses it, so the temporaries stay in
#: cache and no tensor pays for fresh zero-filled pages.  Bit-identical whatever
#: the slice size.
SLICE_ELEMENTS = 1 << 18


class Workers:
    """A small pool that runs a tensor's slices in parallel, each worker with its own scratch buffer.

    See the module docstring for why this and not torch's own threads.
    """

    def __init__(self, workers: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.count = workers or max(1, min(4, len(os.sched_getaffinity(0))))
        self._pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="pvreg-compose")
        self._local = threading.local()

    def scratch(self, dtype: torch.dtype, numel: int, slot: int = 0) -> torch.Tensor:
        """This thread's reusable buffer number ``slot``, the first ``numel`` elements (at most a slice)."""
        import torch

        bufs: dict[int, torch.Tensor] | None = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        buf = bufs.get(slot)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = bufs[slot] = torch.empty(max(SLICE_ELEMENTS, numel), dtype=dtype)
        return buf[:numel]

    def run(self, numel: int, job: Callable[[int, slice], None], size: int = SLICE_ELEMENTS) -> None:
        """``job(k, part)`` for the k-th slice of ``range(numel)`` of ``size`` elements each.

        Returns only when every job has finished (they read memory-mapped inputs
        the caller releases next), then raises the first failed slice's error.
        """
        from concurrent.futures import wait

        parts = [slice(s, min(s + size, numel)) for s in range(0, numel, size)]
        if len(parts) <= 1 or self.count == 1:
            for k, part in enumerate(parts):
                job(k, part)
            return
        futures = [self._pool.submit(job, k, part) for k, part in enumerate(parts)]
        wait(futures)
        for f in futures:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def widen(t: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """``t`` copied into ``buffer`` (a scratch slot) when their dtypes differ, else ``t`` itself.

    For bf16/f16 into float32 the copy is exact, so ops on the result give the
    same bits as torch's own mixed-dtype ops, whose casting loop is unvectorised:
    the cast into a cache-resident buffer plus a same-dtype op is faster.
    """
    if buffer is None or t.dtype == buffer.dtype:
        return t
    buffer.copy_(t)
    return buffer


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


class WriteBehind:
    """One background thread that runs jobs in submission order, at most :data:`PENDING` queued.

    The bound keeps RSS at a few tensors (each pending job holds one output
    tensor); a job's exception is raised in the caller at the next
    :meth:`submit` or :meth:`drain`.
    """

    PENDING = 2

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvreg-write")
        self._pending: list[concurrent.futures.Future[None]] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        while len(self._pending) >= self.PENDING:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """On the way out (an exception, say) wait for every job before anything else is torn down."""
        try:
            yield
        except BaseException:
            for f in self._pending:
                f.cancel()
            concurrent.futures.wait(self._pending)
            self._pending.clear()
            raise
        self.drain()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def while_importing_torch(work: Callable[[], T]) -> T:
    """``work()`` on a helper thread while this thread imports torch; its result, or its error raised here.

    Why: ``import torch`` is 1.5-3.5 s of one core on a small machine, most of a
    small extraction, and the input hashing before the first tensor releases the
    GIL (hashlib on large buffers), so on a second core it costs almost no wall
    time.  Run inline once torch is imported.
    """
    if "torch" in sys.modules:
        return work()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvreg-prepare") as pool:
        future = pool.submit(work)
        import torch  # noqa: F401 - imported for its side effect: the first tensor op needs it

        return future.result()
