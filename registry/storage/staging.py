"""Staging outputs so that a crash leaves nothing half-written, and publishing them.

An output is built in a ``.pvreg-tmp-*`` sibling of its target, announced by a
flock-held marker in ``<home>/pending/`` so ``gc`` can clean it up after a
crash (see :mod:`pvreg.registry.storage.gc`, which trusts only pvreg's own
names).  Publishing renames it into place; without ``force`` that rename can
never replace something that appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from pvreg.registry.errors import OutputExistsError, opt
from pvreg.registry.files import fsync_dir, remove_path, rename_noreplace, temp_sibling


@contextlib.contextmanager
def staging(pending: Path, out: Path) -> Iterator[tuple[Path, Callable[[dict[str, str]], None]]]:
    """A ``.pvreg-tmp-*`` dir beside ``out``, announced by a locked ``<pending>/<uuid>.json``.

    The marker is written under a non-matching name, locked, then renamed into
    place, so ``gc`` never sees it unlocked while we live.  Yields the temp dir
    and a function to rewrite the marker (the lock stays held).
    """
    pending.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    uid = uuid.uuid4().hex
    part = pending / f"{uid}.json.part"
    marker = pending / f"{uid}.json"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def rewrite(payload: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

        rewrite({"path": str(tmp)})
        os.replace(part, marker)
        tmp.mkdir()
        try:
            yield tmp, rewrite
        finally:
            remove_path(tmp)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        os.close(fd)


def publish_dir(tmp: Path, out: Path, rewrite: Callable[[dict[str, str]], None], *, force: bool) -> None:
    """Rename ``tmp`` to ``out``.

    Without ``force`` the rename must not replace anything: ``out`` was absent
    or an empty directory when the request was checked, and whatever appeared
    there since (another compose, a user's files) is left alone — the finished
    output is then discarded with :class:`OutputExistsError`.  With ``force``
    an existing ``out`` is moved aside first, and dropped once the new one is in.
    """
    if not force:
        if out.is_symlink():
            raise OutputExistsError(_appeared(out))
        try:
            os.rmdir(out)  # the empty directory seen at validation, if it is still there and empty
        except FileNotFoundError:
            pass
        except OSError:  # no longer empty, or no longer a directory
            raise OutputExistsError(_appeared(out)) from None
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise OutputExistsError(_appeared(out)) from None
    elif out.exists() or out.is_symlink():
        aside = temp_sibling(out, "-old")
        # Announce the swap first: if we die between the renames, gc puts the
        # old output back (or, once the new one is in place, drops the old).
        rewrite({"path": str(tmp), "aside": str(aside), "out": str(out)})
        os.replace(out, aside)
        os.replace(tmp, out)
        rewrite({"path": str(aside)})
        remove_path(aside)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)


def publish_file(tmp: Path, out: Path, *, force: bool) -> None:
    """Rename a finished file into place; without ``force`` never over anything that appeared."""
    if force:
        os.replace(tmp, out)
    else:
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise OutputExistsError(_appeared(out)) from None
    fsync_dir(out.parent)


def _appeared(out: Path) -> str:
    return (
        f"{out}: something was created there while the output was being written; it was left alone "
        f"and the new output discarded (use {opt('force', True)} to replace it)"
    )
