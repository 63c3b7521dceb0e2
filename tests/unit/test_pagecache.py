"""registry/tensors/pagecache.py: a mapped range's residency, told apart from a dropped one.

The page cache of one file is emptied with ``posix_fadvise(DONTNEED)`` (clean pages, no root needed)
and filled by reading the file; the verdicts are checked against what was done to the file.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest
from pvreg.registry.tensors import pagecache

SIZE = 64 * mmap.PAGESIZE


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    with path.open("rb") as f:
        os.fsync(f.fileno())  # clean pages: DONTNEED can drop them
    return path


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_read_file_is_cached_and_a_dropped_one_is_not(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with path.open("rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        address = pagecache.base_address(m)
        assert address is not None
        path.read_bytes()
        assert pagecache.cached(address, 0, SIZE)
        assert pagecache.cached(address, 5 * mmap.PAGESIZE + 17, 3)  # within one page
        _drop(path)
        if pagecache.cached(address, 0, SIZE):
            pytest.skip("this filesystem keeps the pages after POSIX_FADV_DONTNEED")
        assert not pagecache.cached(address, mmap.PAGESIZE, 10 * mmap.PAGESIZE)
        # Only the head read again (what the kernel's read-ahead of a previous tensor leaves): not cached.
        with path.open("rb") as f:
            f.read(mmap.PAGESIZE)
        assert pagecache.cached(address, 0, mmap.PAGESIZE)
        assert not pagecache.cached(address, 0, SIZE)
        assert not pagecache.cached(address, 0, 0)
    finally:
        m.close()  # no buffer export left behind by base_address


def test_prefetch_still_brings_a_dropped_tensor_in(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from pvreg.registry.tensors.safetensors import SafetensorsFile

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.arange(SIZE // 4, dtype=torch.float32)}, str(path))
    with path.open("rb") as f:
        os.fsync(f.fileno())
    _drop(path)
    sf = SafetensorsFile(path)
    sf.prefetch("w")  # not cached: the advice is given
    slot_start = path.stat().st_size - SIZE
    deadline = time.monotonic() + 5
    while not pagecache.cached(sf._address, slot_start, SIZE) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pagecache.cached(sf._address, slot_start, SIZE)
    sf.prefetch("w")  # cached now: returns without advice, and the data are the file's
    assert torch.equal(sf.tensor("w"), torch.arange(SIZE // 4, dtype=torch.float32))
    sf.close()


def test_a_read_only_mapping_has_no_address(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with path.open("rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert pagecache.base_address(m) is None
    finally:
        m.close()
