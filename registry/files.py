"""Crash-safe file writing and the locks that order writers against ``gc``.

Every file pvreg creates is written to a temporary name in the destination
directory, fsynced, and renamed into place, so a reader (or a crash) only ever
sees the old state or the complete new one.  Temporary files are held under an
exclusive ``flock`` while being written: ``gc`` deletes a temporary file only
when it can take that lock, i.e. when its writer is dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pvreg.registry.directio import MIN_BYTES as DIRECT_MIN_BYTES
from pvreg.registry.directio import DirectWriter, open_direct

TEMP_PREFIX = ".pvreg-tmp-"
#: The names :func:`temp_sibling` makes (``.pvreg-tmp-<32 hex><suffix>``): the only names ``gc`` acts on.
TEMP_NAME_RE = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{32}(?P<suffix>[-.a-z]*)")
_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (Linux >= 3.15, glibc >= 2.28), or None where it is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, failing if ``dst`` exists (any type, even an empty dir).

    Plain ``rename`` silently replaces a file or an empty directory; publishing
    without ``force`` must never do that, even when ``dst`` appears after it was
    checked.  Uses ``renameat2(RENAME_NOREPLACE)``; where the kernel or the
    filesystem lacks it, a hard link (files) or ``mkdir``-free check (directories,
    not race-free) stands in.

    Raises:
        FileExistsError: ``dst`` exists.
    """
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if src.is_dir() and not src.is_symlink():
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)
        return
    os.link(src, dst, follow_symlinks=False)  # fails with FileExistsError if dst exists
    os.unlink(src)


def _sync_file_range() -> Callable[..., int] | None:
    """glibc's ``sync_file_range`` (Linux), or None where it is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages in the range, do not wait
#: Bytes written between two writeback starts: large enough to be a handful of syscalls per GB.
WRITEBACK_BYTES = 32 << 20


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+nbytes)`` of ``fd`` to disk now, without waiting.

    Not a durability step (the final ``fsync`` is): it only moves the disk
    writes of a large file earlier, under the computation of what comes next,
    so the closing ``fsync`` finds little left to do.  Best effort: where the
    call is missing or refused nothing changes but the timing.
    """
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def fsync_path(path: Path) -> None:
    """fsync a file (or directory) someone else wrote, by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the directory that holds the entry."""
    fsync_path(path)


def temp_sibling(target: Path, suffix: str = "") -> Path:
    """A unique temporary name next to ``target`` (same filesystem, so rename is atomic)."""
    return target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}{suffix}"


class AtomicFile:
    """A binary file that appears at ``target`` only on :meth:`commit`.

    Used as a context manager: leaving the block without ``commit`` (an
    exception, a ``return``) deletes the temporary file.
    """

    def __init__(self, target: Path, *, overwrite: bool = True, size_hint: int = 0) -> None:
        """``size_hint``: the bytes about to be written; a large file bypasses the page cache (:mod:`.directio`)."""
        self.target = target
        self.overwrite = overwrite
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = temp_sibling(target, ".part")
        self.handle: BinaryIO = open(self.temp, "xb")  # noqa: SIM115 - closed in commit/abort
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        self.done = False
        self._written = 0  # bytes handed to write()
        self._kicked = 0  # writeback started up to here
        self._direct: DirectWriter | None = None
        if size_hint >= DIRECT_MIN_BYTES:
            fd = open_direct(self.temp)
            if fd is not None:
                self._direct = DirectWriter(fd)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            if self._direct is not None:
                self._direct.write(data)
                return
            self.handle.write(data)
            self._written += data.nbytes if isinstance(data, memoryview) else len(data)
            if self._written - self._kicked >= WRITEBACK_BYTES:
                # Early writeback per 32 MiB: the disk works while the caller computes the next tensor.
                self.handle.flush()
                start_writeback(self.handle.fileno(), self._kicked, self._written - self._kicked)
                self._kicked = self._written
        except OSError as exc:
            raise _named(exc, self.target) from None

    def commit(self, target: Path | None = None) -> Path:
        """Make the file visible at ``target`` (default: the one given at creation).

        A different ``target`` must be on the same filesystem; content-addressed
        writers only learn their final name once every byte is hashed.
        """
        if target is not None:
            self.target = target
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self._direct is not None:
                self._direct.finish()
                os.fsync(self._direct.fd)
                self._close_direct()
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as exc:
            raise _named(exc, self.target) from None
        if self.overwrite:
            os.replace(self.temp, self.target)
        else:
            try:
                rename_noreplace(self.temp, self.target)
            except FileExistsError:
                self.abort()
                raise
        self.handle.close()
        fsync_dir(self.target.parent)
        self.done = True
        return self.target

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self._close_direct()
        with contextlib.suppress(OSError):
            self.handle.close()  # flushes: fails again when the disk is full, and must not keep the temp file
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()

    def _close_direct(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()
            os.close(direct.fd)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _named(exc: OSError, target: Path) -> OSError:
    """``exc`` with the file it concerns: a failed write() (ENOSPC, EIO) names no file by itself."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(target))


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with AtomicFile(target) as out:
        out.write(data)
        out.commit()


def is_stale_temp(path: Path) -> bool:
    """True when no live process holds the temporary file or directory's lock."""
    lock_target = path / ".lock" if path.is_dir() else path
    try:
        fd = os.open(lock_target, os.O_RDONLY)
    except FileNotFoundError:
        return path.is_dir()  # a temp dir without lock file was never claimed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool) -> Iterator[None]:
    """Hold a shared or exclusive advisory lock on ``path`` (created if missing).

    Writers that create blobs hold it shared from the blob write until their
    database commit; ``gc`` holds it exclusively, so it never sees a blob that
    is in place but not yet referenced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
