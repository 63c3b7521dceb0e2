"""Read-ahead for streaming passes: the next tensors' pages are read while the current one is computed.

A compose or an extraction walks tensors in a fixed order, each from a few
memory-mapped files.  On a cold page cache every first touch of a page is a
synchronous disk read, so without help the CPU waits for the disk and the disk
for the CPU.  :class:`Readahead` keeps about :data:`AHEAD_BYTES` of the inputs
of the tensors *after* the current one requested from the kernel
(``MADV_WILLNEED``: asynchronous, into the page cache only, so peak RSS does
not grow); on a warm cache each request is one cheap syscall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Prefetchable(Protocol):
    def prefetch(self, name: str) -> None: ...


#: Bytes requested beyond the tensor being computed: a few tensors' worth, a fraction of a second of disk.
AHEAD_BYTES = 96 << 20


class Readahead:
    """Call :meth:`reached` before working on each tensor of ``order``, in that order."""

    def __init__(self, order: Sequence[tuple[str, int, Sequence[Prefetchable]]], ahead: int = AHEAD_BYTES) -> None:
        # (tensor name, bytes it reads, the files to read it from)
        self._order = order
        self._ahead = ahead
        self._next = 0  # first entry not yet requested
        self._pending = 0  # bytes requested for entries not yet reached

    def reached(self, i: int) -> None:
        """Entry ``i`` is next: make sure it and the following ~``ahead`` bytes are requested."""
        while self._next < len(self._order) and (self._next <= i or self._pending < self._ahead):
            name, nbytes, files = self._order[self._next]
            for f in files:
                f.prefetch(name)
            self._pending += nbytes
            self._next += 1
        self._pending -= self._order[i][1]
