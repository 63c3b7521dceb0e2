"""Sequential writes that bypass the page cache (``O_DIRECT``), for the large files pvreg streams out.

Why: a buffered ``write`` copies every byte into freshly allocated page-cache
pages and the closing ``fsync`` then waits for all of them.  On this project's
machines (virtual disks, memory shared with the host) that copy was the single
largest cost of a compose: 1 GB took 0.4–3.1 s of kernel CPU and 0.9–4.7 s of
wall time to become durable, varying run to run, against 0.45–0.67 s and
≈0.05 s of CPU with ``O_DIRECT`` from one reused, page-aligned 8 MiB buffer
(``bench/run.py`` measures both floors side by side).  The cost of the choice:
the file is on disk but not in the page cache, so a reader right after reads
it from the disk.

Direct I/O needs every write aligned in memory, length and file offset.  The
bytes are therefore staged in an aligned buffer and written a whole buffer at
a time, by a thread of the writer's own while the next buffer fills (two
buffers: a direct write waits for the device, and the caller — hashing the
next tensor, say — need not wait with it); the last, partial buffer is
zero-padded to the alignment and the file truncated back to its length.  Where the filesystem refuses ``O_DIRECT`` (tmpfs,
some network and FUSE filesystems), :func:`open_direct` returns None, and a
refusal at the first write switches the descriptor back to buffered writes:
the bytes written are the same either way.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

#: Alignment of every direct write (memory, length, offset): a multiple of the usual 512 B and 4 KiB blocks.
ALIGN = 4096
#: Bytes per direct write: a handful of syscalls per GB, and small enough to stay a minor share of RSS.
CHUNK = 8 << 20
#: Files smaller than this are written through the page cache as before (the staging buffer is not worth it).
MIN_BYTES = 64 << 20

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def open_direct(path: os.PathLike[str] | str) -> int | None:
    """A write descriptor on the existing file ``path`` with ``O_DIRECT``, or None where that is refused."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(path, os.O_WRONLY | _O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise


class DirectWriter:
    """Appends bytes to ``fd`` (opened by :func:`open_direct`, positioned at 0) through aligned buffers.

    A full buffer is written by a background thread while :meth:`write` fills
    the other one; at most one write is in flight, so the writes reach the
    file in order.  :meth:`finish` writes the rest, waits for it and sets the
    file's length; the caller then fsyncs (the data is on the device already,
    the fsync makes the size and the device's cache durable) and closes ``fd``.
    A failed write is raised by the next :meth:`write` or by :meth:`finish`.
    """

    def __init__(self, fd: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np

        self.fd = fd
        self._bufs = [mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK)]  # anonymous mappings are page-aligned
        self._views = [np.frombuffer(b, dtype=np.uint8) for b in self._bufs]
        self._current = 0  # the buffer being filled
        self._fill = 0
        self._pending: Future[None] | None = None  # the other buffer's write, while in flight
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvreg-direct")
        self.size = 0  # logical bytes written so far
        self._direct = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        import numpy as np

        src = np.frombuffer(data, dtype=np.uint8)
        pos, n = 0, src.size
        while pos < n:
            take = min(n - pos, CHUNK - self._fill)
            # numpy releases the GIL for the copy, so the compute threads keep running.
            view = self._views[self._current]
            np.copyto(view[self._fill : self._fill + take], src[pos : pos + take])
            self._fill += take
            pos += take
            if self._fill == CHUNK:
                self._hand_off(CHUNK)
        self.size += n

    def finish(self) -> int:
        """Write the staged tail (zero-padded to :data:`ALIGN`), wait for every write, set the file's length."""
        if self._fill:
            padded = -(-self._fill // ALIGN) * ALIGN
            self._views[self._current][self._fill : padded] = 0
            self._hand_off(padded)
        self._wait()
        os.ftruncate(self.fd, self.size)
        return self.size

    def close(self) -> None:
        """Wait for a write still in flight (its error, if any, is the caller's to have seen), free the buffers."""
        with contextlib.suppress(OSError):
            self._wait()
        self._pool.shutdown(wait=True)
        del self._views  # the numpy views export the mappings' buffers: they go first
        for b in self._bufs:
            # A failed write's traceback may still hold a view of its buffer: the mapping then goes with it.
            with contextlib.suppress(BufferError):
                b.close()

    def _hand_off(self, nbytes: int) -> None:
        """Queue the current buffer's first ``nbytes`` for writing and fill the other one meanwhile."""
        self._wait()  # the other buffer is free again once its write is done
        self._pending = self._pool.submit(self._write_out, self._bufs[self._current], nbytes)
        self._current ^= 1
        self._fill = 0

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_out(self, buf: mmap.mmap, nbytes: int) -> None:
        view = memoryview(buf)[:nbytes]
        try:
            done = 0
            while done < nbytes:
                try:
                    done += os.write(self.fd, view[done:])
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self._direct or done:
                        raise
                    self._buffered()  # refused at write time: the same bytes through the page cache
        finally:
            view.release()

    def _buffered(self) -> None:
        import fcntl

        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self._direct = False
