"""Large files bypass the page cache (registry/directio.py): the same bytes, the exact length, nothing left behind."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from pvreg.registry import directio
from pvreg.registry.files import AtomicFile

#: Pieces that cross the staging buffer's edges in every way: tiny, unaligned, exactly one buffer, several.
SIZES = [8, 4095, 1, directio.CHUNK - 4104, directio.CHUNK, 3 * directio.CHUNK + 17, 12345, 4096 * 3]


def _pieces(seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in SIZES]


def _write(target: Path, pieces: list[bytes]) -> AtomicFile:
    f = AtomicFile(target, size_hint=directio.MIN_BYTES)
    for p in pieces:
        f.write(memoryview(p))
    f.commit()
    return f


def test_direct_writes_give_the_same_bytes_and_length(tmp_path: Path) -> None:
    fd = directio.open_direct(_probe(tmp_path))
    if fd is None:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(fd)
    pieces = _pieces()
    target = tmp_path / "big.bin"
    f = AtomicFile(target, size_hint=directio.MIN_BYTES)
    assert f._direct is not None  # the direct path is the one under test
    for p in pieces:
        f.write(memoryview(p))
    f.commit()
    data = target.read_bytes()
    assert len(data) == sum(map(len, pieces)) and data == b"".join(pieces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "probe"]  # no temporary file is left


def test_small_files_and_refusing_filesystems_use_the_page_cache(tmp_path: Path, monkeypatch) -> None:
    assert AtomicFile(tmp_path / "small", size_hint=directio.MIN_BYTES - 1)._direct is None
    monkeypatch.setattr("pvreg.registry.files.open_direct", lambda path: None)
    pieces = _pieces(1)
    f = _write(tmp_path / "buffered.bin", pieces)
    assert f._direct is None
    assert (tmp_path / "buffered.bin").read_bytes() == b"".join(pieces)


def test_a_refusal_at_the_first_write_falls_back_to_buffered_writes(tmp_path: Path, monkeypatch) -> None:
    real_write = os.write
    refused: list[int] = []

    def write(fd: int, data) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", write)
    monkeypatch.setattr(directio, "open_direct", lambda path: os.open(path, os.O_WRONLY))
    monkeypatch.setattr("pvreg.registry.files.open_direct", lambda path: os.open(path, os.O_WRONLY | _direct_flag()))
    pieces = _pieces(2)
    try:
        f = AtomicFile(tmp_path / "x.bin", size_hint=directio.MIN_BYTES)
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT at open")
    for p in pieces:
        f.write(p)
    f.commit()
    assert refused, "the first write was meant to be refused"
    assert (tmp_path / "x.bin").read_bytes() == b"".join(pieces)


def test_a_failed_background_write_is_raised_and_nothing_is_published(tmp_path: Path, monkeypatch) -> None:
    """Full buffers are written by the writer's thread; a device error there reaches the caller, once."""
    real_write = os.write
    calls: list[int] = []

    def write(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 2:  # the second buffer: the first write call after one has succeeded
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", write)
    target = tmp_path / "x.bin"
    f = AtomicFile(target, size_hint=directio.MIN_BYTES)
    if f._direct is None:
        pytest.skip("this filesystem refuses O_DIRECT")
    with pytest.raises(OSError, match="Input/output error"):
        for _ in range(4):  # the failure of buffer 2 surfaces at a later write or at the commit
            f.write(b"y" * directio.CHUNK)
        f.commit()
    f.abort()
    assert list(tmp_path.iterdir()) == []


def test_abort_removes_the_temporary_file(tmp_path: Path) -> None:
    f = AtomicFile(tmp_path / "gone.bin", size_hint=directio.MIN_BYTES)
    f.write(b"x" * (directio.CHUNK + 5))
    f.abort()
    assert list(tmp_path.iterdir()) == []


def _direct_flag() -> int:
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        pytest.skip("no O_DIRECT on this platform")
    return flag


def _probe(tmp_path: Path) -> Path:
    p = tmp_path / "probe"
    p.touch()
    return p
