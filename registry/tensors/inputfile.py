"""Opening input files safely: regular files only, bounded reads.

Every file a user hands pvreg (tensor files, shards, indexes, spec files) is
opened through here, because ``open()`` on a FIFO blocks until a writer shows
up, and reading ``/dev/zero`` or a multi-GB "config" never ends or exhausts
memory.  A path is ``stat``-ed first and refused unless it is a regular file;
the open itself is non-blocking and re-checked with ``fstat``, so a path that
is swapped for a FIFO between the two cannot hang the process either.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from pvreg.registry.errors import NotFoundError, UserError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words, for one-line messages."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def not_regular(path: Path, mode: int, error: type[UserError]) -> UserError:
    return error(f"{path}: is {file_kind(mode)}, not a regular file")


def check_regular(path: Path, error: type[UserError]) -> os.stat_result:
    """``stat`` ``path`` (following symlinks) and refuse anything but a regular file.

    Raises:
        NotFoundError: nothing there (a dangling symlink or a loop included).
        error: a directory, FIFO, device or socket, or an unreadable path.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink loop is as absent as a dangling link
            raise NotFoundError(f"{path}: no such file") from None
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode, error)
    return st


def open_regular(path: Path, error: type[UserError]) -> BinaryIO:
    """Open a regular file for binary reading, never blocking on a FIFO.

    The check happens before the open (nothing is opened that is not a regular
    file) and again on the open descriptor (the path cannot be swapped in between).
    """
    check_regular(path, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode, error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path, limit: int, error: type[UserError], what: str = "file") -> bytes:
    """All bytes of a small regular file, refusing files over ``limit`` bytes.

    The cap is enforced on what is read, not on ``st_size`` alone, so files
    whose size lies (``/proc``) stay bounded too.
    """
    with open_regular(path, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{path}: {what} is larger than the {_size(limit)} limit")
    return data


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"
