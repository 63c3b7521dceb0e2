"""Canonical base-model fingerprints.

A fingerprint identifies weights, not files: sha256 over the sorted list of
(tensor name, dtype, shape, sha256 of the tensor's bytes).  Re-sharding a
checkpoint, changing its file-level metadata, or converting it between
safetensors and ``.bin`` leaves it unchanged; changing any tensor byte does not.

Hashing a multi-GB base is slow, so per-file results are cached by
(absolute path, size, mtime_ns): the second use of a large base costs a stat.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pvreg.registry.files import write_bytes_atomic
from pvreg.registry.tensors.checkpoint import Checkpoint, open_checkpoint
from pvreg.registry.tensors.safetensors import TensorInfo

FingerprintEntry = tuple[str, str, tuple[int, ...], str]


def combine(entries: list[FingerprintEntry]) -> str:
    """The fingerprint of a set of per-tensor entries (order-insensitive)."""
    h = hashlib.sha256()
    for name, dtype, shape, digest in sorted(entries):
        h.update(f"{name}\t{dtype}\t{'x'.join(map(str, shape))}\t{digest}\n".encode())
    return h.hexdigest()


def _hash(view: memoryview) -> str:
    # hashlib releases the GIL on large buffers, so tensors hash in parallel.
    return hashlib.sha256(view).hexdigest()


def _hash_and_release(checkpoint: Checkpoint, name: str) -> str:
    # Drop the tensor's pages once hashed, so hashing a large model keeps RSS flat.
    digest = _hash(checkpoint.raw(name))
    checkpoint.release(name)
    return digest


def _file_entries(checkpoint: Checkpoint, file: Path, infos: dict[str, TensorInfo]) -> list[FingerprintEntry]:
    names = sorted(infos)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda n: _hash_and_release(checkpoint, n), names))
    return [(n, infos[n].dtype, infos[n].shape, d) for n, d in zip(names, digests, strict=True)]


class FingerprintCache:
    """Per-file tensor digests stored as small JSON files under the registry's cache."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _slot(self, file: Path) -> Path | None:
        if self.directory is None:
            return None
        key = hashlib.sha256(str(file.resolve()).encode()).hexdigest()
        return self.directory / f"{key}.json"

    @staticmethod
    def _stamp(file: Path) -> dict[str, object]:
        st = file.stat()
        return {"path": str(file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def get(self, file: Path) -> list[FingerprintEntry] | None:
        slot = self._slot(file)
        if slot is None or not slot.is_file():
            return None
        try:
            data = json.loads(slot.read_text())
            if data.get("stamp") != self._stamp(file):
                return None
            return [(n, d, tuple(s), h) for n, d, s, h in data["entries"]]
        except (ValueError, KeyError, TypeError, OSError):
            return None  # a damaged cache entry is recomputed, never trusted

    def put(self, file: Path, entries: list[FingerprintEntry]) -> None:
        slot = self._slot(file)
        if slot is None:
            return
        payload = {"stamp": self._stamp(file), "entries": [[n, d, list(s), h] for n, d, s, h in entries]}
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            write_bytes_atomic(slot, json.dumps(payload).encode())


def fingerprint_checkpoint(checkpoint: Checkpoint, cache: FingerprintCache | None = None) -> str:
    return combine(checkpoint_entries(checkpoint, cache))


def tensor_digests(checkpoint: Checkpoint, cache: FingerprintCache | None = None) -> dict[str, str]:
    """sha256 of every tensor's bytes (cached like fingerprints).

    Equal digests (with equal dtype and shape) mean bit-identical tensors, which
    is how extraction learns which deltas are exactly zero before writing.
    """
    return {name: digest for name, _, _, digest in checkpoint_entries(checkpoint, cache)}


def checkpoint_entries(checkpoint: Checkpoint, cache: FingerprintCache | None = None) -> list[FingerprintEntry]:
    cache = cache or FingerprintCache(None)
    # The checkpoint already parsed (and validated) every file: group its tensors by file rather
    # than opening any file a second time.
    by_file: dict[Path, dict[str, TensorInfo]] = {file: {} for file in checkpoint.files}
    for name, info in checkpoint.infos.items():
        by_file[checkpoint.file_of(name)][name] = info
    entries: list[FingerprintEntry] = []
    for file in checkpoint.files:
        cached = cache.get(file)
        if cached is None:
            cached = _file_entries(checkpoint, file, by_file[file])
            cache.put(file, cached)
        entries.extend(cached)
    return entries


def fingerprint_path(path: str | os.PathLike[str], cache: FingerprintCache | None = None) -> str:
    with open_checkpoint(path) as checkpoint:
        return fingerprint_checkpoint(checkpoint, cache)
