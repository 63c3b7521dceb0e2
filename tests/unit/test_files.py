"""Crash-safe files and the locks that order writers against ``gc`` (``pvreg.registry.files``), directly.

What each function promises is observed from outside: directory listings, file bytes,
and ``flock`` probes from a second process (``helpers.locks``), which sees a lock the way
a concurrent ``pvreg`` or ``gc`` would.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from helpers.locks import LockHolder, can_lock
from pvreg.registry import files
from pvreg.registry.files import (
    TEMP_NAME_RE,
    TEMP_PREFIX,
    AtomicFile,
    file_lock,
    is_stale_temp,
    remove_path,
    rename_noreplace,
    temp_sibling,
    write_bytes_atomic,
)


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- AtomicFile ------------------------------------------------------------------------------------------------------


def test_commit_makes_the_complete_file_appear_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "out.bin"
    with AtomicFile(target) as f:
        assert target.parent.is_dir() and not target.exists()  # parents made, nothing visible yet
        (temp,) = target.parent.iterdir()
        assert TEMP_NAME_RE.fullmatch(temp.name) and temp.name.endswith(".part")
        f.write(b"abc")
        f.write(memoryview(b"def"))
        f.write(bytearray(b"g"))
        assert not target.exists()
        assert f.commit() == target
    assert target.read_bytes() == b"abcdefg"
    assert listing(target.parent) == ["out.bin"]


def test_a_temporary_being_written_is_locked_against_gc(tmp_path: Path) -> None:
    with AtomicFile(tmp_path / "out.bin") as f:
        f.write(b"x")
        assert not can_lock(f.temp, shared=False)  # another process (gc) cannot take it
        assert not is_stale_temp(f.temp)
        f.commit()
    assert listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("how", ["no-commit", "exception", "explicit-abort"])
def test_leaving_without_commit_leaves_nothing(tmp_path: Path, how: str) -> None:
    target = tmp_path / "out.bin"
    if how == "no-commit":
        with AtomicFile(target) as f:
            f.write(b"partial")
    elif how == "exception":
        with pytest.raises(RuntimeError), AtomicFile(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    else:
        f = AtomicFile(target)
        f.write(b"partial")
        f.abort()
        f.abort()  # idempotent
    assert listing(tmp_path) == []


def test_overwrite_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with AtomicFile(target) as f:
        f.write(b"new")
        f.commit()
    assert target.read_bytes() == b"new" and listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("existing", ["file", "empty-dir", "symlink"])
def test_overwrite_false_refuses_and_keeps_what_is_there(tmp_path: Path, existing: str) -> None:
    target = tmp_path / "out.bin"
    if existing == "file":
        target.write_bytes(b"old")
    elif existing == "empty-dir":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "elsewhere")
    with AtomicFile(target, overwrite=False) as f:
        f.write(b"new")
        with pytest.raises(FileExistsError):
            f.commit()
    assert listing(tmp_path) == ["out.bin"]  # no temporary left
    if existing == "file":
        assert target.read_bytes() == b"old"
    elif existing == "empty-dir":
        assert target.is_dir() and not any(target.iterdir())
    else:
        assert target.is_symlink() and os.readlink(target) == str(tmp_path / "elsewhere")


def test_overwrite_false_publishes_when_nothing_is_there(tmp_path: Path) -> None:
    with AtomicFile(tmp_path / "out.bin", overwrite=False) as f:
        f.write(b"new")
        f.commit()
    assert (tmp_path / "out.bin").read_bytes() == b"new"


def test_commit_to_a_target_learned_late(tmp_path: Path) -> None:
    """Content-addressed writers learn the final name only after hashing every byte."""
    first = tmp_path / "staging.bin"
    final = tmp_path / "ab" / "cdef.bin"
    with AtomicFile(first) as f:
        f.write(b"payload")
        assert f.commit(final) == final
    assert final.read_bytes() == b"payload"
    assert not first.exists() and listing(tmp_path) == ["ab"]


def test_write_bytes_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x" / "f.json"
    write_bytes_atomic(target, b"{}")
    write_bytes_atomic(target, b"[1]")
    assert target.read_bytes() == b"[1]" and listing(target.parent) == ["f.json"]


def test_temp_sibling_names_are_unique_gc_names_in_the_same_directory(tmp_path: Path) -> None:
    names = {temp_sibling(tmp_path / "t", ".part") for _ in range(100)}
    assert len(names) == 100
    for p in names:
        assert p.parent == tmp_path and p.name.startswith(TEMP_PREFIX)
        m = TEMP_NAME_RE.fullmatch(p.name)
        assert m and m.group("suffix") == ".part"
    assert TEMP_NAME_RE.fullmatch(temp_sibling(tmp_path / "t").name).group("suffix") == ""
    assert not TEMP_NAME_RE.fullmatch(TEMP_PREFIX + "not-hex")


# --- rename_noreplace ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["renameat2", "fallback"])
def rename_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both code paths: the kernel's RENAME_NOREPLACE, and the link/check fallback where it is missing."""
    if request.param == "renameat2":
        if files._RENAMEAT2 is None:
            pytest.skip("renameat2 is not available here")
    else:
        monkeypatch.setattr(files, "_RENAMEAT2", None)
    return request.param


def test_rename_noreplace_moves_files_and_directories(tmp_path: Path, rename_impl: str) -> None:
    (tmp_path / "f").write_bytes(b"1")
    rename_noreplace(tmp_path / "f", tmp_path / "g")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inner").write_bytes(b"2")
    rename_noreplace(tmp_path / "d", tmp_path / "e")
    assert listing(tmp_path) == ["e", "g"]
    assert (tmp_path / "g").read_bytes() == b"1" and (tmp_path / "e" / "inner").read_bytes() == b"2"


@pytest.mark.parametrize("src_kind", ["file", "dir"])
@pytest.mark.parametrize("dst_kind", ["file", "empty-dir", "dangling-symlink"])
def test_rename_noreplace_never_replaces_anything(tmp_path: Path, rename_impl: str, src_kind: str,
                                                  dst_kind: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    if src_kind == "file":
        src.write_bytes(b"src")
    else:
        src.mkdir()
    if dst_kind == "file":
        dst.write_bytes(b"dst")
    elif dst_kind == "empty-dir":
        dst.mkdir()
    else:
        dst.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert listing(tmp_path) == ["dst", "src"]
    assert src.read_bytes() == b"src" if src_kind == "file" else src.is_dir()
    if dst_kind == "file":
        assert dst.read_bytes() == b"dst"
    elif dst_kind == "empty-dir":
        assert dst.is_dir() and not dst.is_symlink()
    else:
        assert dst.is_symlink()


def test_rename_noreplace_of_a_missing_source_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rename_noreplace(tmp_path / "missing", tmp_path / "dst")
    assert listing(tmp_path) == []


# --- file_lock: shared for writers, exclusive for gc -----------------------------------------------------------------


def test_shared_lock_admits_other_readers_but_not_an_exclusive_one(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / ".gc.lock"
    with file_lock(lock, shared=True):
        assert lock.is_file()  # created, parents too
        assert can_lock(lock, shared=True)
        assert not can_lock(lock, shared=False)
    assert can_lock(lock, shared=False)


def test_exclusive_lock_admits_nobody(tmp_path: Path) -> None:
    lock = tmp_path / ".gc.lock"
    with file_lock(lock, shared=False):
        assert not can_lock(lock, shared=True)
        assert not can_lock(lock, shared=False)
    assert can_lock(lock, shared=False)


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / ".gc.lock"
    with pytest.raises(RuntimeError), file_lock(lock, shared=False):
        raise RuntimeError("boom")
    assert can_lock(lock, shared=False)


@pytest.mark.parametrize("held,wanted", [("exclusive", "shared"), ("exclusive", "exclusive"),
                                         ("shared", "exclusive")])
def test_a_conflicting_lock_waits_for_the_holder(tmp_path: Path, held: str, wanted: str) -> None:
    lock = tmp_path / ".gc.lock"
    got = threading.Event()

    def take() -> None:
        with file_lock(lock, shared=wanted == "shared"):
            got.set()

    with LockHolder(lock, shared=held == "shared") as holder:
        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(0.5), "took a lock another process holds in a conflicting mode"
        holder.release()
        assert got.wait(30), "never got the lock after it was released"
    t.join(30)


def test_two_shared_holders_do_not_wait_for_each_other(tmp_path: Path) -> None:
    lock = tmp_path / ".gc.lock"
    with LockHolder(lock, shared=True):
        got = threading.Event()

        def take() -> None:
            with file_lock(lock, shared=True):
                got.set()

        threading.Thread(target=take, daemon=True).start()
        assert got.wait(30)


# --- is_stale_temp, remove_path --------------------------------------------------------------------------------------


def test_a_temporary_file_is_stale_only_when_no_process_holds_its_lock(tmp_path: Path) -> None:
    temp = temp_sibling(tmp_path / "x", ".part")
    temp.write_bytes(b"half")
    with LockHolder(temp, shared=False):
        assert not is_stale_temp(temp)
    assert is_stale_temp(temp)  # its writer is gone
    assert temp.read_bytes() == b"half"  # checking never deletes


def test_a_temporary_directory_is_stale_without_a_held_lock_file(tmp_path: Path) -> None:
    d = temp_sibling(tmp_path / "out")
    d.mkdir()
    assert is_stale_temp(d)  # never claimed: no .lock inside
    (d / ".lock").write_bytes(b"")
    with LockHolder(d / ".lock", shared=False):
        assert not is_stale_temp(d)
    assert is_stale_temp(d)


def test_a_missing_temporary_is_not_stale(tmp_path: Path) -> None:
    assert not is_stale_temp(tmp_path / (TEMP_PREFIX + "0" * 32))


def test_remove_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "g").write_bytes(b"y")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_bytes(b"z")
    (tmp_path / "link").symlink_to(keep)
    for name in ("f", "d", "link", "missing"):
        remove_path(tmp_path / name)
    assert listing(tmp_path) == ["keep"]
    assert (keep / "precious").read_bytes() == b"z"  # a link to a directory is removed, not followed
