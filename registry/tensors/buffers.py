"""Reused output buffers for streaming passes whose tensors are written behind (compose, extraction).

Why: an output tensor of a pass can be tens of MB, and a fresh ``torch.empty``
of that size may get a new anonymous mapping from the allocator, whose pages
the kernel zero-fills on first touch, only to unmap them once the tensor is
written.  Measured on a 0.5B bf16 compose (one vector, warm): 164-180k minor
page faults and 0.84 s of system CPU with fresh outputs, 102k and 0.62 s with
these buffers, byte-identical output.  (Extraction at that size saw ~4k fewer
faults: the allocator already reused most of its memory.)

A buffer is lent under the tensor's name and comes back when the owner says
that tensor is written (:meth:`OutputBuffers.give`, called from the write
thread); until then nobody else gets it.  At most ``keep`` idle buffers are
held, so memory stays at the tensors in flight plus a few idle ones, flat in
model size.  The values written are the same as into fresh memory: every
element of a lent tensor is overwritten by its producer.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class OutputBuffers:
    """Lend uninitialised tensors backed by reused byte buffers; safe to give back from another thread."""

    def __init__(self, keep: int = 3) -> None:
        self._keep = keep
        self._idle: list[torch.Tensor] = []  # 1-D uint8 buffers
        self._lent: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def take(self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised ``shape``/``dtype`` tensor lent under ``name``: the producer must fill every element."""
        import torch

        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            if name in self._lent:
                raise RuntimeError(f"output buffer for {name!r} is already lent")  # a caller bug, never user input
            # the smallest idle buffer that is large enough (tensors compare by value: indices, not list.remove)
            fits = [i for i, b in enumerate(self._idle) if b.numel() >= nbytes]
            if fits:
                buf = self._idle.pop(min(fits, key=lambda i: self._idle[i].numel()))
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8)  # uninitialised: no page is touched here
            self._lent[name] = buf
        return buf[:nbytes].view(dtype).view(shape)

    def give(self, name: str) -> None:
        """The tensor lent under ``name`` is written and no longer used: its buffer may be lent again.

        A name that was not lent (a tensor made some other way) is ignored.
        """
        with self._lock:
            buf = self._lent.pop(name, None)
            if buf is None:
                return
            self._idle.append(buf)
            if len(self._idle) > self._keep:
                self._idle.pop(min(range(len(self._idle)), key=lambda i: self._idle[i].numel()))

    @property
    def held_bytes(self) -> int:
        """Bytes of every buffer this pool holds, lent or idle (for tests and diagnostics)."""
        with self._lock:
            return sum(b.numel() for b in [*self._idle, *self._lent.values()])
