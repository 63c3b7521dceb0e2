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
from collections.abc import Callable, Sequence
from pathlib import Path

from pvreg.registry.errors import UnsafeGcError
from pvreg.registry.files import (
    TEMP_NAME_RE,
    TEMP_PREFIX,
    remove_path,
    rename_noreplace,
)
from pvreg.registry.storage.blobstore import BlobStore
from pvreg.schemas.vector import GcReport


def collect(
    store: BlobStore,
    pending: Path,
    referenced: Callable[[], set[str]],
    *,
    dry_run: bool,
    all_unreferenced: bool = False,
    database: str = "the database",
    temp_dirs: Sequence[Path] = (),
) -> GcReport:
    """Remove what nothing needs; ``referenced`` is read under the exclusive lock.

    ``temp_dirs``: other directories pvreg writes atomically into (the caches),
    whose dead writers' temporary files go too.

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
        temps = [*store.iter_temp(), *(t for d in temp_dirs if d.is_dir() for t in d.rglob(f"{TEMP_PREFIX}*"))]
        for tmp in temps:
            if store.stale(tmp):
                report.removed_temp.append(str(tmp))
                if not dry_run:
                    remove_path(tmp)
        _compose_leftovers(pending, report, dry_run=dry_run)
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _compose_leftovers(pending: Path, report: GcReport, *, dry_run: bool) -> None:
    """Staging directories of killed composes, named by their pending markers.

    A marker whose flock is free belongs to a dead process.  A marker that
    records an interrupted ``--force`` swap (``aside``/``out``) puts the old
    output back when the new one never arrived.

    A marker is only a hint: whoever can write ``pending/`` could name any
    path in it.  So gc acts only on what pvreg itself creates — an absolute,
    ``..``-free path whose name is :func:`~pvreg.registry.files.temp_sibling`'s
    (``.pvreg-tmp-<32 hex>``, ``-old`` for a swapped-out output), which is not a
    symlink, and which lies beside the recorded output — and reports every other
    marker in ``ignored`` without touching what it names.
    """
    if not pending.is_dir():
        return
    for marker in sorted(pending.iterdir()):
        if not marker.name.endswith((".json", ".json.part")) or not BlobStore.stale(marker):
            continue
        try:
            record = json.loads(marker.read_text())
        except (ValueError, OSError):
            record = {}
        plan = _leftover_plan(record if isinstance(record, dict) else {})
        if plan is None:
            report.ignored.append(f"{marker}: names paths pvreg did not create; left alone")
            if not dry_run:
                remove_path(marker)
            continue
        target, aside, out = plan
        if aside is not None and out is not None and os.path.lexists(aside):
            report.removed_temp.append(str(aside))
            if not dry_run:
                if os.path.lexists(out):
                    remove_path(aside)  # the new output made it; the old one goes
                else:
                    rename_noreplace(aside, out)  # the swap broke off: restore the old output
        if target is not None and os.path.lexists(target) and target != out:
            report.removed_temp.append(str(target))
            if not dry_run:
                remove_path(target)
        if not dry_run:
            remove_path(marker)


def _leftover_plan(record: dict[str, object]) -> tuple[Path | None, Path | None, Path | None] | None:
    """(staging path, aside, out) from a marker, or None when any of it is not pvreg's own naming."""
    paths: dict[str, Path | None] = {}
    for key in ("path", "aside", "out"):
        value = record.get(key)
        if value is None:
            paths[key] = None
        elif not isinstance(value, str) or not os.path.isabs(value) or ".." in Path(value).parts:
            return None
        else:
            paths[key] = Path(value)
    target, aside, out = paths["path"], paths["aside"], paths["out"]
    if (aside is None) != (out is None) or (target is None and aside is None):
        return None
    for temp, suffix in ((target, None), (aside, "-old")):
        if temp is None:
            continue
        m = TEMP_NAME_RE.fullmatch(temp.name)
        if m is None or (suffix is not None and m.group("suffix") != suffix) or temp.is_symlink():
            return None
    if out is not None:
        assert aside is not None
        # The swap renames within one directory; a staging path recorded with it sits there too.
        if aside.parent != out.parent or (target is not None and target.parent != out.parent):
            return None
    return target, aside, out
