"""The registry's environment: lost databases, gc's no-versions rule, full disks, read-only registries, retries.

Everything here is real: SQLite files truncated or deleted, PostgreSQL databases emptied or opened by a role
that may only read, tmpfs mounts filled to the last page, read-only remounts, ``chattr +i``, and processes
running without the capabilities that let root ignore permission bits (``setpriv``).  Tests that need a
privilege this machine does not grant skip, saying which.

Expected results are computed independently of pvreg: blob files are listed and hashed with ``os``/``hashlib``,
SQLite files are compared byte for byte, and tensors are read back with ``safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line
from helpers.factories import make_vector
from safetensors.torch import load_file

ROOT = os.geteuid() == 0


# --- helpers -----------------------------------------------------------------------------------------------------------


def blob_files(home: Path) -> dict[str, str]:
    """sha256 (computed here) -> relative path of every file in the blob store's shard directories."""
    out = {}
    root = home / "blobs" / "sha256"
    if root.is_dir():
        for f in sorted(root.glob("??/*")):
            out[hashlib.sha256(f.read_bytes()).hexdigest()] = f.relative_to(home).as_posix()
    return out


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (lock files included) with its sha256: for registries nothing may touch."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def temporaries(home: Path) -> list[Path]:
    return list(home.rglob(".pvreg-tmp-*"))


def seed_registry(cli, tmp_path: Path, base_dir: Path, base_tensors, names=("helpful", "harmless")) -> list[str]:
    """Add one vector per name; return their blobs' sha256, each checked against the file on disk."""
    shas = []
    for i, name in enumerate(names):
        f = tmp_path / f"{name}.safetensors"
        make_vector(f, base_tensors, seed=10 + i)
        r = cli("add", name, "--vector", f, "--base", base_dir)
        assert r.exit_code == 0, r.stderr
        sha = json.loads(cli("show", name, "--json").stdout)["sha256"]
        shas.append(sha)
    home = Path(os.environ["PVREG_HOME"])
    files = blob_files(home)
    for name, sha in zip(names, shas):
        assert sha in files, f"{name}: no blob file hashes to {sha}"
        stored, given = load_file(str(home / files[sha])), load_file(str(tmp_path / f"{name}.safetensors"))
        assert stored.keys() == given.keys() and all(torch.equal(stored[k], given[k]) for k in given)
    return shas


def empty_the_database(backend: str, home: Path) -> None:
    """What a failed restore leaves: SQLite truncated to 0 bytes; PostgreSQL without a single table."""
    if backend == "sqlite":
        db = home / "registry.db"
        db.write_bytes(b"")
        for side in ("registry.db-wal", "registry.db-shm"):
            (home / side).unlink(missing_ok=True)
        return
    import psycopg

    url = os.environ["PVREG_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def pg_table_count() -> int:
    import psycopg

    url = os.environ["PVREG_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]


@pytest.fixture
def mounts() -> Iterator[Callable[..., Path]]:
    """``mount(path, size, ro=False)``: a tmpfs there (or a read-only bind of ``source``); all undone at teardown."""
    done: list[Path] = []

    def mount(path: Path, size: str | None = None, *, bind: Path | None = None) -> Path:
        if not ROOT or shutil.which("mount") is None:
            pytest.skip("needs root and mount(8) for a real tmpfs / read-only mount")
        path.mkdir(parents=True, exist_ok=True)
        if bind is not None:
            cmds = [["mount", "--bind", str(bind), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]]
        else:
            cmds = [["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]]
        for i, cmd in enumerate(cmds):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                if i:
                    subprocess.run(["umount", str(path)])
                pytest.skip(f"mounting is not permitted here: {r.stderr.strip()}")
        done.append(path)
        return path

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs_root: Path, leave: int = 0) -> Path:
    """Fill the file system holding ``fs_root`` to the last page, then free ``leave`` bytes."""
    filler = fs_root / "filler"
    chunk = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == 28, exc
                break
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-linux_immutable"]


def pvreg_process(argv: list[object], *, home: Path, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process, optionally as root without the capabilities that bypass permissions."""
    prefix = UNPRIVILEGED if unprivileged and ROOT else []
    env = {**os.environ, "PVREG_HOME": str(home)}
    return subprocess.run([*prefix, sys.executable, "-c", "from pvreg.cli.main import main; main()",
                           *[str(a) for a in argv]], capture_output=True, text=True, env=env, timeout=300)


def check_unprivileged_works(tmp_path: Path) -> None:
    if not ROOT:
        return  # permission bits already apply to us
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to drop CAP_DAC_OVERRIDE")
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        r = subprocess.run([*UNPRIVILEGED, "touch", str(probe / "x")], capture_output=True)
    finally:
        probe.chmod(0o755)
    if r.returncode == 0:
        pytest.skip("setpriv did not drop CAP_DAC_OVERRIDE here")


# --- 6: an empty or missing database over existing blobs -----------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_emptied_database_with_blobs_is_refused_then_adopted(backend, cli, tmp_path, home, base_dir, base_tensors) -> None:
    shas = seed_registry(cli, tmp_path, base_dir, base_tensors)
    blobs = blob_files(home)
    assert sorted(blobs) == sorted(shas)
    empty_the_database(backend, home)
    state = "is empty (0 bytes)" if backend == "sqlite" else "has no pvreg tables"
    for argv in (["list"], ["add", "x", "--vector", tmp_path / "helpful.safetensors", "--base", base_dir],
                 ["gc"], ["db", "upgrade"], ["db", "init"]):
        line = one_error_line(cli(*argv), 1, state, "holds 2 blob(s)", "pvreg db init --adopt-blobs")
        assert str(home / "blobs" / "sha256") in line
        assert blob_files(home) == blobs  # nothing deleted
        if backend == "sqlite":
            assert (home / "registry.db").read_bytes() == b""  # not initialised behind the refusal
            assert not (home / "registry.db-wal").exists()
        else:
            assert pg_table_count() == 0
    # `db current` only looks
    r = cli("db", "current")
    assert r.exit_code == 0 and r.stdout.strip() == "(empty database)"
    # the explicit recovery: an empty database that keeps the blobs
    r = cli("db", "init", "--adopt-blobs")
    assert r.exit_code == 0, r.stderr
    assert "2 blob(s) are unreferenced" in r.stdout
    assert cli("list", "--json").stdout.strip() == "[]"
    assert blob_files(home) == blobs
    # a blob is a safetensors file: re-registering it from the store works
    helpful_blob = home / blobs[shas[0]]
    assert cli("add", "helpful", "--vector", helpful_blob, "--base", base_dir).exit_code == 0
    assert load_file(str(helpful_blob)).keys() == load_file(str(tmp_path / "helpful.safetensors")).keys()


def test_deleted_sqlite_file_with_blobs_is_refused(cli, tmp_path, home, base_dir, base_tensors) -> None:
    seed_registry(cli, tmp_path, base_dir, base_tensors)
    blobs = blob_files(home)
    os.replace(home / "registry.db", tmp_path / "saved.db")  # "deleted", kept aside to restore
    for argv in (["list"], ["show", "helpful"], ["db", "current"], ["db", "upgrade"]):
        r = cli(*argv)
        if argv == ["db", "current"]:
            assert r.exit_code == 0 and "(empty database)" in r.stdout
        else:
            one_error_line(r, 1, f"{home / 'registry.db'}: the database is missing", "holds 2 blob(s)",
                           "restore it from a backup", "pvreg db init --adopt-blobs")
        assert not (home / "registry.db").exists(), f"{argv} created the database file"
        assert blob_files(home) == blobs
    # restoring the file is the other way out
    os.replace(tmp_path / "saved.db", home / "registry.db")
    assert [e["name"] for e in json.loads(cli("list", "--json").stdout)] == ["harmless", "helpful"]


def test_lost_database_message_names_the_newest_backup(cli, tmp_path, home, base_dir, base_tensors) -> None:
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    shutil.copyfile(home / "registry.db", home / "registry.db.backup-0002-20250101T000000000000Z")
    shutil.copyfile(home / "registry.db", home / "registry.db.backup-0002-20260101T000000000000Z")
    (home / "registry.db").write_bytes(b"")
    one_error_line(cli("list"), 1, "newest here: registry.db.backup-0002-20260101T000000000000Z")


@pytest.mark.usefixtures("backend")
def test_fresh_registry_still_initialises_silently(backend, cli, home) -> None:
    r = cli("list")
    assert r.exit_code == 0 and r.stderr == ""
    assert cli("db", "current").stdout.strip() not in ("", "(empty database)")
    if backend == "sqlite":
        # a 0-byte file with an empty blob store is a fresh registry too
        for f in home.glob("registry.db*"):
            f.unlink()
        (home / "registry.db").write_bytes(b"")
        r = cli("list")
        assert r.exit_code == 0 and r.stderr == ""
        assert (home / "registry.db").stat().st_size > 0


# --- 6: gc never deletes every blob of a database that lists no versions, unless told ------------------------------


@pytest.mark.usefixtures("backend")
def test_gc_refuses_when_the_database_lists_no_versions(cli, tmp_path, home, base_dir, base_tensors) -> None:
    shas = seed_registry(cli, tmp_path, base_dir, base_tensors)
    blobs = blob_files(home)
    for name in ("helpful", "harmless"):
        assert cli("rm", name).exit_code == 0
    stale = home / "blobs" / "sha256" / ".pvreg-tmp-dead.part"
    stale.write_bytes(b"partial")
    line = one_error_line(cli("gc"), 1, "lists no versions at all", "2 blob(s)", "pvreg gc --all-unreferenced")
    assert str(sum((home / p).stat().st_size for p in blobs.values())) in line
    assert blob_files(home) == blobs and stale.exists()  # refused as a whole: nothing removed
    dry = json.loads(cli("gc", "--dry-run", "--json").stdout)
    assert sorted(dry["removed_blobs"]) == sorted(shas) and dry["needs_all_unreferenced"] is True
    assert dry["freed_bytes"] == sum((home / p).stat().st_size for p in blobs.values())
    r = cli("gc", "--dry-run")
    assert r.exit_code == 0 and "would remove 2 blob(s)" in r.stdout and "only with --all-unreferenced" in r.stdout
    assert blob_files(home) == blobs
    r = cli("gc", "--all-unreferenced", "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(json.loads(r.stdout)["removed_blobs"]) == sorted(shas)
    assert blob_files(home) == {} and not stale.exists()


@pytest.mark.usefixtures("backend")
def test_gc_with_some_versions_removes_unreferenced_blobs_as_before(cli, tmp_path, home, base_dir, base_tensors) -> None:
    shas = seed_registry(cli, tmp_path, base_dir, base_tensors)
    assert cli("rm", "harmless").exit_code == 0
    r = cli("gc")
    assert r.exit_code == 0, r.stderr
    assert sorted(blob_files(home)) == [shas[0]]


# --- 8: --registry naming a file ------------------------------------------------------------------------------------


def test_registry_location_that_is_a_file(cli, tmp_path, monkeypatch) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    one_error_line(cli("--registry", f, "list"), 2, f"registry directory {f}: is a file, not a directory")
    one_error_line(cli("--registry", f / "sub" / "reg", "add", "x", "--vector", f, "--base", f), 2,
                   f"{f} is a file, so the registry cannot be created under it")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_error_line(cli("--registry", tmp_path / "dangling", "list"), 2, "symbolic link to a missing target")
    monkeypatch.setenv("PVREG_HOME", str(f))
    one_error_line(cli("list"), 2, "is a file, not a directory")
    assert f.read_text() == "x" and not (tmp_path / "nowhere").exists()


# --- 8: databases that cannot be opened or reached -----------------------------------------------------------------


def test_sqlite_file_that_is_not_a_database(cli, home) -> None:
    home.mkdir(parents=True)
    junk = b"this is not a database, it only has the name of one" * 100
    (home / "registry.db").write_bytes(junk)
    one_error_line(cli("list"), 1, f"{home / 'registry.db'}: is not a valid SQLite database", "restore it")
    assert (home / "registry.db").read_bytes() == junk


def test_unreachable_postgres_is_one_line(cli, monkeypatch) -> None:
    monkeypatch.setenv("PVREG_DATABASE_URL", "postgresql+psycopg://someone:s3cret@127.0.0.1:9/nodb")
    line = one_error_line(cli("list"), 1, "database postgresql+psycopg://someone:***@127.0.0.1:9/nodb", "cannot connect")
    assert "s3cret" not in line


# --- 8 + 9a: full disks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["vector", "finetuned"])
def test_disk_full_while_writing_the_blob(how, cli, tmp_path, base_dir, base_tensors, mounts, snapshot,
                                          monkeypatch) -> None:
    """ENOSPC while the blob is written (on the write-behind thread) is one line and changes nothing: for a delta
    file stored as given, and for a vector extracted from a fine-tuned checkpoint."""
    from helpers.factories import save_checkpoint

    fs = mounts(tmp_path / "fs", "2m")
    home = fs / "reg"
    monkeypatch.setenv("PVREG_HOME", str(home))
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    if how == "vector":
        src = tmp_path / "new.safetensors"
        make_vector(src, base_tensors, seed=99)
    else:
        src = save_checkpoint(tmp_path / "ft", {n: t + 0.01 * torch.ones_like(t) for n, t in base_tensors.items()})
        # one extraction (removed again) first, so the checkpoint's fingerprint is cached before the snapshot
        assert cli("add", "warm", "--finetuned", src, "--base", base_dir).exit_code == 0
        assert cli("rm", "warm").exit_code == 0 and cli("gc").exit_code == 0
    add = ("add", "new", f"--{how}", src, "--base", base_dir)
    before = snapshot()
    filler = fill(fs, leave=32768 + 8192)  # SQLite's 32 kB -shm fits; the 29 kB blob does not
    line = one_error_line(cli(*add), 1, "no space left on device")
    assert str(home / "blobs" / "sha256") in line
    assert temporaries(home) == []
    filler.unlink()
    assert snapshot() == before
    assert cli(*add).exit_code == 0  # works once there is room
    assert cli("verify").exit_code == 0


def test_disk_full_at_commit_leaves_no_orphan_blob(cli, tmp_path, base_dir, base_tensors, mounts, snapshot,
                                                   monkeypatch) -> None:
    """The blob store has room, the database's file system does not: the insert fails after the blob is in place."""
    fs = mounts(tmp_path / "fs", "1m")
    home = fs / "reg"
    mounts(home / "blobs", "8m")
    monkeypatch.setenv("PVREG_HOME", str(home))
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    before, blobs = snapshot(), blob_files(home)
    assert not (home / "registry.db-shm").exists() and not (home / "registry.db-wal").exists()
    filler = fill(fs, leave=32768)  # room for SQLite's 32 kB -shm, none for the WAL frames of the insert
    vec = tmp_path / "new.safetensors"
    make_vector(vec, base_tensors, seed=98)
    one_error_line(cli("add", "new", "--vector", vec, "--base", base_dir), 1,
                   f"{home / 'registry.db'}: database or disk is full")
    assert blob_files(home) == blobs, "the blob of the failed add was left behind"
    assert temporaries(home) == []
    filler.unlink()
    assert snapshot() == before
    assert cli("add", "new", "--vector", vec, "--base", base_dir).exit_code == 0
    new_sha = json.loads(cli("show", "new", "--json").stdout)["sha256"]
    assert set(blob_files(home)) == set(blobs) | {new_sha} and cli("verify").exit_code == 0


def test_disk_full_under_compose_out(cli, tmp_path, home, base_dir, base_tensors, mounts, snapshot) -> None:
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    out_fs = mounts(tmp_path / "outfs", "16k")
    before = snapshot()
    # a first compose elsewhere, so the registry has its pending/ directory before the snapshot
    assert cli("compose", "helpful", "--base", base_dir, "--out", tmp_path / "first").exit_code == 0
    before = snapshot()
    line = one_error_line(cli("compose", "helpful", "--base", base_dir, "--out", out_fs / "merged"), 1,
                          "no space left on device")
    assert str(out_fs) in line
    assert not (out_fs / "merged").exists()
    assert snapshot() == before


# --- 9a: the orphan-blob rule and a concurrent writer of the same content -------------------------------------------


def test_failed_commit_removes_its_blob_unless_a_concurrent_writer_reused_it(tmp_path, home, base_dir,
                                                                             base_tensors) -> None:
    """Writer A publishes a blob and then fails to commit (its connection is read-only).  Writer B, which
    holds the writers' shared lock throughout, finds A's blob in place, reuses it and commits after A failed.
    A's clean-up waits for gc's exclusive lock, so it sees B's row and keeps the blob; without B it removes it."""
    from pvreg import Registry
    from pvreg.registry.errors import ReadOnlyRegistryError
    from pvreg.registry.storage import db
    from pvreg.registry.storage.store import Store

    vec = tmp_path / "same.safetensors"
    make_vector(vec, base_tensors, seed=77)
    with Registry.open(home) as b:
        b.fingerprint(base_dir)
        a = Registry(Store(b.settings, access=db.RO))  # same files, a connection that cannot write
        try:
            # without a concurrent writer: A's blob goes again
            with pytest.raises(ReadOnlyRegistryError):
                a.add("a", vec, base=base_dir)
            assert blob_files(home) == {}

            # with one: B holds the shared lock from before A's write until after its own commit
            errors: list[BaseException] = []
            with b.blobs.writer_lock():
                t = threading.Thread(target=lambda: _catch(errors, lambda: a.add("a", vec, base=base_dir)))
                t.start()
                deadline = time.monotonic() + 60
                while not blob_files(home) and t.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert len(blob_files(home)) == 1, ("A never published its blob", errors)
                time.sleep(0.5)  # A's commit fails; its clean-up now waits for the exclusive lock
                assert t.is_alive() and len(blob_files(home)) == 1
                meta = b.add("b", vec, base=base_dir)  # finds the blob in place: reuses it
            t.join(60)
            assert not t.is_alive()
            assert len(errors) == 1 and isinstance(errors[0], ReadOnlyRegistryError), errors
            assert list(blob_files(home)) == [meta.sha256]
            assert b.verify().ok
            stored = load_file(str(b.blob_path("b")))
            given = load_file(str(vec))
            assert stored.keys() == given.keys() and all(torch.equal(stored[k], given[k]) for k in given)
        finally:
            a.close()


def _catch(errors: list[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        errors.append(exc)


def test_immutable_database_file_refuses_writes_and_keeps_blobs_unchanged(cli, tmp_path, home, base_dir,
                                                                          base_tensors, snapshot) -> None:
    """``chattr +i registry.db`` (root cannot write it either): reads work, an add fails naming the database,
    and the blob it wrote before its insert failed is gone again."""
    if not ROOT or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1)")
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    db_file = home / "registry.db"
    r = subprocess.run(["chattr", "+i", str(db_file)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {r.stderr.strip()}")
    try:
        before, blobs = tree(home), blob_files(home)
        assert cli("list").exit_code == 0 and "helpful" in cli("list").stdout
        assert cli("show", "helpful").exit_code == 0 and cli("verify").exit_code == 0
        vec = tmp_path / "new.safetensors"
        make_vector(vec, base_tensors, seed=55)
        one_error_line(cli("add", "new", "--vector", vec, "--base", base_dir), 1,
                       f"{db_file}: the registry database is read-only")
        one_error_line(cli("tag", "helpful@1", "prod"), 1, "read-only")
        assert blob_files(home) == blobs and temporaries(home) == []
        after = {k: v for k, v in tree(home).items() if not k.endswith(("-wal", "-shm"))}
        assert after == {k: v for k, v in before.items() if not k.endswith(("-wal", "-shm"))}
    finally:
        subprocess.run(["chattr", "-i", str(db_file)])
    assert cli("tag", "helpful@1", "prod").exit_code == 0


# --- 9b: read-only registries --------------------------------------------------------------------------------------

READS = [["list"], ["show", "helpful"], ["log", "helpful"], ["verify"], ["bases"], ["compositions"],
         ["list", "--json"], ["db", "current"]]


def _writes(tmp_path: Path, base_dir: Path) -> list[list[object]]:
    return [["add", "new", "--vector", tmp_path / "new.safetensors", "--base", base_dir], ["tag", "helpful@1", "x"],
            ["rm", "helpful"], ["deprecate", "helpful"], ["gc"],
            ["compose", "helpful", "--base", base_dir, "--vector-only", "--register", "c"]]


def _expected_reads(cli, home: Path) -> dict[str, str]:
    return {" ".join(a): cli("--registry", home, *a).stdout for a in READS}


def test_read_only_by_permissions(cli, tmp_path, home, base_dir, base_tensors) -> None:
    """A registry whose files and directories are not writable by this (unprivileged) process."""
    check_unprivileged_works(tmp_path)
    seed_registry(cli, tmp_path, base_dir, base_tensors)
    make_vector(tmp_path / "new.safetensors", base_tensors, seed=5)
    expected = _expected_reads(cli, home)
    before = tree(home)
    subprocess.run(["chmod", "-R", "a-w", str(home)], check=True)
    try:
        for argv in READS:
            r = pvreg_process(argv, home=home, unprivileged=True)
            assert r.returncode == 0 and r.stderr == "", (argv, r.stderr)
            assert r.stdout == expected[" ".join(argv)], argv
        for argv in _writes(tmp_path, base_dir):
            one_error_line(pvreg_process(argv, home=home, unprivileged=True), 1, "read-only")
        assert tree(home) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(home)], check=True)


def test_read_only_database_file_in_a_writable_directory(cli, tmp_path, home, base_dir, base_tensors) -> None:
    """Only registry.db is read-only: SQLite opens it mode=ro (it can still make its -shm beside it)."""
    check_unprivileged_works(tmp_path)
    seed_registry(cli, tmp_path, base_dir, base_tensors)
    make_vector(tmp_path / "new.safetensors", base_tensors, seed=5)
    expected = _expected_reads(cli, home)
    blobs = blob_files(home)
    db_bytes = (home / "registry.db").read_bytes()
    (home / "registry.db").chmod(0o444)
    try:
        for argv in READS:
            r = pvreg_process(argv, home=home, unprivileged=True)
            assert r.returncode == 0 and r.stdout == expected[" ".join(argv)], (argv, r.stderr)
        one_error_line(pvreg_process(_writes(tmp_path, base_dir)[0], home=home, unprivileged=True), 1,
                   "registry database is read-only")
        assert blob_files(home) == blobs  # the add's blob went again
        assert (home / "registry.db").read_bytes() == db_bytes
    finally:
        (home / "registry.db").chmod(0o644)


def test_read_only_mount(cli, tmp_path, home, base_dir, base_tensors, mounts) -> None:
    """A read-only bind mount of the registry (EROFS even for root)."""
    seed_registry(cli, tmp_path, base_dir, base_tensors)
    make_vector(tmp_path / "new.safetensors", base_tensors, seed=5)
    expected = _expected_reads(cli, home)
    ro = mounts(tmp_path / "ro", bind=home)
    before = tree(ro)
    for argv in READS:
        r = cli("--registry", ro, *argv)
        assert r.exit_code == 0 and r.stderr == "", (argv, r.stderr)
        assert r.stdout == expected[" ".join(argv)].replace(str(home), str(ro)), argv
    for argv in _writes(tmp_path, base_dir):
        one_error_line(cli("--registry", ro, *argv), 1, "read-only")
    # the Python API reports the same, and says so up front
    from pvreg import Registry
    from pvreg.registry.errors import ReadOnlyRegistryError

    with Registry.open(ro) as reg:
        assert reg.read_only and [e.name for e in reg.list()] == ["harmless", "helpful"]
        with pytest.raises(ReadOnlyRegistryError, match=f"registry {ro} is read-only"):
            reg.add("new", tmp_path / "new.safetensors", base=base_dir)
    assert tree(ro) == before


def test_read_only_directory_with_unfolded_wal_is_refused_not_read_stale(cli, tmp_path, home, base_dir,
                                                                         base_tensors, mounts) -> None:
    """A -wal with committed rows but no -shm cannot be read where nothing may be created: refuse, naming it."""
    seed_registry(cli, tmp_path, base_dir, base_tensors)
    copy = tmp_path / "copy"
    conn = sqlite3.connect(home / "registry.db")  # keep the WAL alive while copying, like a crash would
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE vectors SET description = 'changed' WHERE name = 'helpful'")
    conn.commit()
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("*-shm"))
    conn.close()
    assert (copy / "registry.db-wal").stat().st_size > 0
    ro = mounts(tmp_path / "ro", bind=copy)
    one_error_line(cli("--registry", ro, "list"), 1, "registry.db-wal holds changes", "-shm file is missing")
    # with its -shm present the same WAL is read (mode=ro), and the change is visible
    ro2 = tmp_path / "copy2"
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE vectors SET description = 'changed again' WHERE name = 'helpful'")
    conn.commit()
    shutil.copytree(home, ro2)
    conn.close()
    if not (ro2 / "registry.db-shm").exists():
        pytest.skip("SQLite left no -shm to copy")
    ro2m = mounts(tmp_path / "ro2", bind=ro2)
    r = cli("--registry", ro2m, "show", "helpful", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["description"] == "changed again"


# --- PostgreSQL: a role that may only read ----------------------------------------------------------------------------


@pytest.fixture
def pg_reader(backend, monkeypatch):
    """A PostgreSQL URL for a role with SELECT only on the test database (the postgres half only)."""
    if backend != "postgres":
        pytest.skip("PostgreSQL roles")
    import psycopg

    admin_url = os.environ["PVREG_DATABASE_URL"]
    role = f"pvreg_reader_{uuid.uuid4().hex[:8]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")

    def grant() -> None:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")

    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    user = admin_url.split("://", 1)[1].split("@", 1)[0]
    yield admin_url.replace(f"://{user}@", f"://{role}@", 1), grant
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_postgres_reader_role_can_read_and_a_failed_add_keeps_no_blob(cli, tmp_path, home, base_dir, base_tensors,
                                                                        pg_reader, monkeypatch) -> None:
    url, grant = pg_reader
    seed_registry(cli, tmp_path, base_dir, base_tensors, names=("helpful",))
    grant()
    blobs = blob_files(home)
    monkeypatch.setenv("PVREG_DATABASE_URL", url)
    r = cli("list", "--json")
    assert r.exit_code == 0 and '"helpful"' in r.stdout
    vec = tmp_path / "new.safetensors"
    make_vector(vec, base_tensors, seed=66)
    line = one_error_line(cli("add", "new", "--vector", vec, "--base", base_dir), 1, "permission denied",
                          "needs write access")
    assert url.split("@", 1)[1] in line
    assert blob_files(home) == blobs and temporaries(home) == []


# --- retries: contention only ---------------------------------------------------------------------------------------


@pytest.fixture
def opened(backend, home):
    from pvreg import Registry

    with Registry.open() as reg:
        yield reg


def _attempts(reg, work) -> tuple[int, float, BaseException | None]:
    from pvreg.registry.storage import db

    calls = 0

    def counted(s):
        nonlocal calls
        calls += 1
        return work(s)

    start = time.monotonic()
    try:
        db.run_transaction(reg.store.sessions, counted)
        err = None
    except Exception as exc:  # noqa: BLE001
        err = exc
    return calls, time.monotonic() - start, err


def test_a_non_race_integrity_error_is_not_retried(opened) -> None:
    from pvreg.registry.storage.tables import vectors, version_tags
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    def fk_violation(s):
        s.execute(insert(version_tags).values(version_id=987654, key="k", value="v"))

    def not_null(s):
        s.execute(insert(vectors).values(name=None))

    from pvreg.registry.storage import db
    from pvreg.registry.storage.tables import utcnow

    existing = db.run_transaction(opened.store.sessions, lambda s: s.execute(
        insert(vectors).values(name="taken", created_at=utcnow())).inserted_primary_key[0])

    def duplicate_primary_key(s):  # a unique violation, but not on a constraint writers race for
        s.execute(insert(vectors).values(id=existing, name="other", created_at=utcnow()))

    for work in (fk_violation, not_null, duplicate_primary_key):
        calls, seconds, err = _attempts(opened, work)
        assert isinstance(err, IntegrityError), err
        assert calls == 1 and seconds < 2, (work.__name__, calls, seconds)


def test_a_unique_race_is_retried_on_postgres(opened, backend) -> None:
    """Two writers create the same name: the loser's insert violates uq_vectors_name and its retry finds the row."""
    if backend != "postgres":
        pytest.skip("SQLite serialises writers with BEGIN IMMEDIATE: the race cannot happen there")
    from pvreg.registry.storage.tables import utcnow, vectors
    from sqlalchemy import create_engine, insert, select

    other = create_engine(os.environ["PVREG_DATABASE_URL"])
    calls = 0

    def work(s):
        nonlocal calls
        calls += 1
        if s.scalar(select(vectors.c.id).where(vectors.c.name == "raced")) is not None:
            return "found"
        if calls == 1:  # the racing writer commits between our read and our insert
            with other.begin() as conn:
                conn.execute(insert(vectors).values(name="raced", created_at=utcnow()))
        s.execute(insert(vectors).values(name="raced", created_at=utcnow()))
        return "inserted"

    from pvreg.registry.storage import db

    try:
        assert db.run_transaction(opened.store.sessions, work) == "found"
    finally:
        other.dispose()
    assert calls == 2


def test_sqlite_lock_held_past_every_attempt_is_one_line(home, cli) -> None:
    from pvreg.registry.errors import StorageError
    from pvreg.registry.storage import db
    from sqlalchemy import text

    assert cli("list").exit_code == 0  # creates the registry
    path = home / "registry.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    engine = db.make_engine(f"sqlite:///{path}", busy_timeout_s=0.05)
    try:
        with pytest.raises(StorageError, match=r"registry\.db: gave up after 2 attempts: the database stayed locked"):
            db.run_transaction(db.sessions(engine), lambda s: s.execute(text("SELECT 1")), attempts=2)
    finally:
        engine.dispose()
        blocker.rollback()
        blocker.close()
