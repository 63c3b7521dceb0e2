"""Content-addressed blob store: ``blobs/sha256/<2 hex>/<62 hex>.safetensors``.

A blob is the canonical safetensors form of a vector (tensors sorted by name,
compact header, no pvreg metadata), so its sha256 — the file's own sha256 —
identifies tensor content whatever file it came from, and ``sha256sum`` on
the blob agrees with the registry.  Blobs are immutable; writers stream into a
locked temporary file in the store and rename it to its digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from pvreg.registry.files import TEMP_PREFIX, file_lock, is_stale_temp, remove_path

_CHUNK = 8 * 1024 * 1024


class BlobStore:
    def __init__(self, root: Path, lock: Path | None = None) -> None:
        self.root = root
        # The registry's store passes Settings.gc_lock; a private staging store locks beside itself.
        self.lock = lock if lock is not None else root.parent / ".gc.lock"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}.safetensors"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    @property
    def staging(self) -> Path:
        """The target given to writers before their digest is known (never published)."""
        return self.root / "staging.safetensors"

    def writer_lock(self) -> AbstractContextManager[None]:
        """Shared lock held from a blob's write until its row is committed."""
        return file_lock(self.lock, shared=True)

    def gc_lock(self) -> AbstractContextManager[None]:
        return file_lock(self.lock, shared=False)

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.glob("*.safetensors")):
                if f.is_file() and not f.is_symlink():  # a blob is a regular file; anything else is not ours
                    yield sub.name + f.name.removesuffix(".safetensors"), f

    def iter_temp(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        yield from self.root.rglob(f"{TEMP_PREFIX}*")

    def delete(self, sha256: str) -> int:
        p = self.path(sha256)
        size = p.stat().st_size if p.exists() else 0
        remove_path(p)
        return size

    @staticmethod
    def hash_file(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
        return h.hexdigest()

    @staticmethod
    def stale(path: Path) -> bool:
        return is_stale_temp(path)
