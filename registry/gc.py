"""Garbage collection: unreferenced blobs and the leftovers of killed writers.

Ordering makes it safe to run at any time: writers hold the store's lock
shared from writing a blob until the version row referencing it is committed;
gc takes it exclusively and only then reads which blobs are referenced.
Temporary files and compose staging directories are removed only when their
flock is free, i.e. their writer is dead.  A database that lists no versions
never gets every blob deleted without an explicit ``all_unreferenced``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from pvreg.registry.blobstore import BlobStore
from pvreg.registry.errors import UnsafeGcError
from pvreg.registry.fsutil import remove_path
from pvreg.schemas import GcReport


def collect(
    store: BlobStore,
    pending: Path,
    referenced: Callable[[], set[str]],
    *,
    dry_run: bool,
    all_unreferenced: bool = False,
    database: str = "the database",
) -> GcReport:
    """Remove what nothing needs; ``referenced`` is read under the exclusive lock.

    A database that lists no versions at all while blobs exist is far more
    often a lost, truncated or wrong database than a registry whose every
    version was removed, so deleting every blob then needs
    ``all_unreferenced``; without it a real run is refused before anything is
    removed, and a dry run reports what that flag would delete
    (``report.needs_all_unreferenced``).

    Raises:
        UnsafeGcError: no versions, blobs present, not a dry run, no ``all_unreferenced``.
    """
    report = GcReport()
    with store.gc_lock():
        keep = referenced()
        doomed = [(sha, path) for sha, path in store.iter_blobs() if sha not in keep]
        if doomed and not keep and not all_unreferenced:
            if not dry_run:
                size = sum(_size(p) for _, p in doomed)
                raise UnsafeGcError(
                    f"gc: {database} lists no versions at all, so every blob in {store.root} would be deleted "
                    f"({len(doomed)} blob(s), {size} bytes); nothing was removed. If the database was lost or "
                    "replaced, restore it first; if every version really was removed, run "
                    "'pvreg gc --all-unreferenced' ('pvreg gc --dry-run' lists what it would delete)"
                )
            report.needs_all_unreferenced = True
        for sha, path in doomed:
            report.removed_blobs.append(sha)
            report.freed_bytes += _size(path)
            if not dry_run:
                store.delete(sha)
        for tmp in list(store.iter_temp()):
            if store.stale(tmp):
                report.removed_temp.append(str(tmp))
                if not dry_run:
                    remove_path(tmp)
        report.removed_temp.extend(_compose_leftovers(pending, dry_run=dry_run))
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _compose_leftovers(pending: Path, *, dry_run: bool) -> list[str]:
    """Staging directories of killed composes, named by their pending markers.

    A marker whose flock is free belongs to a dead process.  A marker that
    records an interrupted ``--force`` swap (``aside``/``out``) puts the old
    output back when the new one never arrived.
    """
    removed: list[str] = []
    if not pending.is_dir():
        return removed
    for marker in sorted(pending.iterdir()):
        if not marker.name.endswith((".json", ".json.part")) or not BlobStore.stale(marker):
            continue
        try:
            record = json.loads(marker.read_text())
        except (ValueError, OSError):
            record = {}
        target, aside, out = (Path(record[k]) if isinstance(record.get(k), str) else None
                              for k in ("path", "aside", "out"))
        if aside is not None and out is not None and aside.exists():
            removed.append(str(aside))
            if not dry_run:
                if out.exists():
                    remove_path(aside)  # the new output made it; the old one goes
                else:
                    os.replace(aside, out)  # the swap broke off: restore the old output
        if target is not None and target.exists() and target != out:
            removed.append(str(target))
            if not dry_run:
                remove_path(target)
        if not dry_run:
            remove_path(marker)
    return removed
