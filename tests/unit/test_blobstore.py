"""The content-addressed blob store (``pvreg.registry.storage.blobstore.BlobStore``), directly.

The layout is the README's (``blobs/sha256/<2 hex>/<62 hex>.safetensors``), written out
here; digests come from ``hashlib``; locks are probed from a second process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers.locks import can_lock
from pvreg.registry.files import AtomicFile, temp_sibling
from pvreg.registry.storage.blobstore import BlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path / "blobs" / "sha256")
    s.ensure()
    return s


def put(store: BlobStore, data: bytes) -> str:
    """Place a blob where the layout says it goes, without asking the store."""
    digest = sha(data)
    p = store.root / digest[:2] / f"{digest[2:]}.safetensors"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return digest


def test_path_layout(store: BlobStore) -> None:
    digest = sha(b"vector")
    assert store.path(digest) == store.root / digest[:2] / (digest[2:] + ".safetensors")
    assert len(store.path(digest).stem) == 62
    assert store.staging == store.root / "staging.safetensors"


def test_ensure_creates_the_root_and_is_idempotent(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "a" / "b")
    assert not s.root.exists()
    assert list(s.iter_blobs()) == [] and list(s.iter_temp()) == []  # a missing store is empty, not an error
    s.ensure()
    s.ensure()
    assert s.root.is_dir()


def test_exists_only_for_a_regular_file_at_the_blob_path(store: BlobStore) -> None:
    digest = put(store, b"one")
    assert store.exists(digest)
    other = sha(b"two")
    assert not store.exists(other)
    store.path(other).mkdir(parents=True)  # a directory where a blob would be is not a blob
    assert not store.exists(other)


def test_iter_blobs_lists_every_blob_sorted_with_its_digest(store: BlobStore) -> None:
    digests = sorted(put(store, bytes([i]) * (i + 1)) for i in range(20))
    listed = list(store.iter_blobs())
    assert [d for d, _ in listed] == digests
    for digest, path in listed:
        assert path == store.path(digest) and sha(path.read_bytes()) == digest


def test_iter_blobs_ignores_what_is_not_a_blob(store: BlobStore) -> None:
    digest = put(store, b"real")
    junk = [
        store.root / "staging.safetensors",                 # the writers' staging target
        store.root / "README",                              # a file at the top
        store.root / "abc" / "x.safetensors",               # a folder whose name is not 2 characters
        store.root / "a" / "x.safetensors",
        store.root / digest[:2] / "notes.txt",              # not a .safetensors file
        store.root / digest[:2] / (temp_sibling(store.root / "t", ".part").name),  # a writer's temporary
    ]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"junk")
    (store.root / "zz").write_bytes(b"a file named like a shard folder")
    assert list(store.iter_blobs()) == [(digest, store.path(digest))]


def test_iter_blobs_ignores_a_directory_named_like_a_blob(store: BlobStore) -> None:
    store.path(sha(b"dir")).mkdir(parents=True)
    assert list(store.iter_blobs()) == []


def test_iter_temp_finds_temporaries_at_any_depth(store: BlobStore) -> None:
    top = temp_sibling(store.root / "x", ".part")
    deep = temp_sibling(store.root / "ab" / "x", ".part")
    for p in (top, deep):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    put(store, b"blob")
    assert sorted(store.iter_temp()) == sorted([top, deep])


def test_delete_removes_one_blob_and_reports_its_size(store: BlobStore) -> None:
    a, b = put(store, b"a" * 10), put(store, b"b" * 7)
    assert store.delete(a) == 10
    assert not store.path(a).exists() and store.path(b).read_bytes() == b"b" * 7
    assert store.delete(a) == 0  # already gone: nothing to do, no error
    assert [d for d, _ in store.iter_blobs()] == [b]


@pytest.mark.parametrize("size", [0, 1, 4096, 8 * 1024 * 1024 - 1, 8 * 1024 * 1024, 8 * 1024 * 1024 + 1,
                                  2 * 8 * 1024 * 1024 + 3])
def test_hash_file_is_the_files_sha256(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert BlobStore.hash_file(p) == hashlib.sha256(data).hexdigest()


def test_writer_lock_is_shared_and_gc_lock_is_exclusive(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs" / "sha256")
    assert store.lock == tmp_path / "blobs" / ".gc.lock"  # a private store locks beside itself
    with store.writer_lock():
        assert can_lock(store.lock, shared=True)  # other writers go on
        assert not can_lock(store.lock, shared=False)  # gc waits
    with store.gc_lock():
        assert not can_lock(store.lock, shared=True)
    assert can_lock(store.lock, shared=False)
    given = tmp_path / "elsewhere.lock"
    assert BlobStore(tmp_path / "b", lock=given).lock == given


def test_stale_tells_a_dead_writers_temporary_from_a_live_one(store: BlobStore) -> None:
    with AtomicFile(store.staging) as f:
        f.write(b"half")
        assert not BlobStore.stale(f.temp)
        (listed,) = store.iter_temp()
        assert listed == f.temp
    leftover = temp_sibling(store.root / "x", ".part")
    leftover.write_bytes(b"left by a killed writer")
    assert BlobStore.stale(leftover)
