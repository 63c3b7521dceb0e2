"""Where a command may write: the one check every output path goes through.

A user-given output path (``compose --out``, ``export``, and every output to
come) must never land on what pvreg reads or owns: the registry home, its
database (and SQLite's ``-wal``/``-shm``/``-journal`` companions), the blob
store, or any input of the running command (base model files, vector blobs).
"Land on" means: the output *is* such a path, *contains* it (replacing a
parent directory deletes it) or *lies inside* it — all compared after
resolving symlinks, so a link or a ``..`` cannot smuggle a path past the check.
Hard links to a protected file are caught by comparing inodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pvreg.registry.errors import UnsafeOutputError
from pvreg.registry.settings import Settings

#: SQLite's companion files, written beside the database.
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Protected:
    """A path no output may touch, with the words that name it in a message."""

    path: Path
    what: str


def real(path: Path) -> Path:
    """``path`` with every existing symlink and ``..`` resolved (the rest kept as given)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(path))))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def registry_paths(settings: Settings) -> list[Protected]:
    """What every registry owns: its database (and companions), blob store and home."""
    items: list[Protected] = []
    db = settings.sqlite_path
    if db is not None:
        items.append(Protected(db, "the registry database"))
        items.extend(Protected(db.with_name(db.name + s), "the registry database") for s in _SQLITE_COMPANIONS)
    items.append(Protected(settings.blob_dir, "the registry's blob store"))
    items.append(Protected(settings.home, "the registry home"))
    return items


def output_problems(out: Path, protected: Iterable[Protected]) -> list[str]:
    """Every reason ``out`` may not be written (empty when it is safe)."""
    problems: list[str] = []
    target = real(out)
    anchor = target
    while not os.path.lexists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    if anchor != target and not anchor.is_dir():
        problems.append(f"{out}: cannot be created, {anchor} is not a directory")
    clashes: list[tuple[tuple[int, int], str, Protected, Path]] = []
    for item in protected:
        p = real(item.path)
        if target == p or _same_file(target, p):
            clashes.append(((0, 0), "is", item, p))
        elif target.is_relative_to(p):
            clashes.append(((1, -len(p.parts)), "lies inside", item, p))  # the innermost says most
        elif p.is_relative_to(target):
            clashes.append(((2, len(p.parts)), "contains", item, p))  # the outermost says most
    if clashes:  # one reason is enough: "is the database" beats "lies inside the home"
        _, relation, item, p = min(clashes, key=lambda c: c[0])
        problems.append(f"{out}: refusing to write there, it {relation} {item.what} ({p})")
    return problems


def check_output(out: Path, protected: Iterable[Protected]) -> None:
    """Raise :class:`UnsafeOutputError` listing every reason ``out`` may not be written."""
    problems = output_problems(out, protected)
    if problems:
        raise UnsafeOutputError("; ".join(problems))
