"""Is a range of a memory-mapped file already in the page cache?  (``mincore``, two pages.)

Why: read-ahead advice (``MADV_WILLNEED``) on pages that are already cached is not free — the kernel
still walks every page of the range.  On a warm 0.5B compose that walk was about a tenth of all CPU
samples (py-spy), on the thread that hands tensors out, before every tensor.  Looking at the first
and the last page of a tensor tells a cached tensor from one still on disk for two cheap calls; a
tensor cached only in part (its head pulled in by the kernel's own read-ahead of the tensor before)
still gets the advice, because its last page is not there yet.
"""

from __future__ import annotations

import ctypes
import mmap
from functools import cache
from typing import Any


@cache
def _mincore() -> Any:
    """libc's ``mincore``, or None where there is none (then every range counts as not cached)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    fn.restype = ctypes.c_int
    return fn


def base_address(mapping: mmap.mmap) -> int | None:
    """The address of a writable (or ``ACCESS_COPY``) mapping's first byte; None for a read-only one."""
    try:
        first = (ctypes.c_char * 1).from_buffer(mapping)
    except (TypeError, ValueError):
        return None
    address = ctypes.addressof(first)
    del first  # no export may outlive this call: the mapping must stay closable
    return address


def cached(address: int, start: int, length: int) -> bool:
    """Whether the first and the last page of ``[start, start + length)`` of the mapping are resident.

    False when ``mincore`` is missing or refuses the range: advice is then given as before.
    """
    fn = _mincore()
    if fn is None or length <= 0:
        return False
    page = mmap.PAGESIZE
    vec = (ctypes.c_ubyte * 1)()
    for offset in {start // page * page, (start + length - 1) // page * page}:
        if fn(address + offset, page, vec) != 0 or not vec[0] & 1:
            return False
    return True
