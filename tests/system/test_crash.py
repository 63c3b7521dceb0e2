"""Crash safety: ``add``, ``compose``, ``pull`` and ``db upgrade`` killed with SIGKILL at random moments.

The harness
-----------
Importing torch costs 2-4 s per interpreter here, which would dwarf the commands themselves, so a *zygote*
process imports pvreg and torch once and forks one child per run (``os.fork``; the zygote has started no
threads, opened no database and imported no Hub client, so every child starts clean).  Each child runs the
real CLI entry point (``pvreg.cli.main.main``) with its own argv and environment; the zygote, which is the
child's parent, sends ``SIGKILL`` after the requested delay (so a pid can never be reused under us) and
reports the exit status.  For every command an unkilled run is timed first; kill delays are then drawn
uniformly from ``[0, duration]`` with a fixed seed.

After every run the registry must be sound: SQLite's integrity check passes and the registry opens,
``pvreg verify`` is clean, every version's blob is present and complete, an ``--out`` path is either absent or
a complete, correct output, and one ``pvreg gc`` removes every leftover (blob-store temporaries, pending
markers, compose staging directories beside ``--out``).

The failed-migration test at the end swaps in a copy of the migrations with an extra revision that raises
half-way and checks that the original database stays usable and the backup is kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from helpers.factories import insert_legacy_rows, make_base, make_vector
from pvreg import Registry
from pvreg.migrations import HEAD
from pvreg.registry.files import TEMP_PREFIX
from safetensors.torch import load_file, save_file

SEED = 20240607
TOKEN = "hf_dummy_crash_token"
REPO = "alice/crash"

ZYGOTE = r"""
import json, os, signal, sys, time
import torch  # noqa: F401  (the expensive import, paid once)
import pvreg.cli.main  # noqa: F401
from pvreg.registry import api  # noqa: F401
from pvreg.registry.merge import compose
from pvreg.registry.sources import ingest
from pvreg.registry.tensors import safetensors
assert "huggingface_hub" not in sys.modules  # children must read their own HF_* environment
out = sys.stdout
out.write(json.dumps({"ready": os.getpid()}) + "\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    out.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            os.environ.update(req["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
            sys.argv = ["pvreg"] + req["argv"]
            from pvreg.cli.main import main
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 97
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    start = time.monotonic()
    kill_after = req.get("kill_after")
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_after is not None and not killed and time.monotonic() - start >= kill_after:
            os.kill(pid, signal.SIGKILL)  # our own unreaped child: the pid cannot have been reused
            killed = True
        time.sleep(0.0005)
    rc = os.waitstatus_to_exitcode(status)
    out.write(json.dumps({"pid": pid, "rc": rc, "killed": rc == -signal.SIGKILL,
                          "seconds": time.monotonic() - start}) + "\n")
    out.flush()
"""


class Zygote:
    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_TOKEN": TOKEN}
        for var in ("PVREG_DATABASE_URL", "PVREG_DEBUG", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
            env.pop(var, None)
        self.tmp = tmp
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert "ready" in json.loads(self.proc.stdout.readline())
        self.count = 0

    def run(self, argv: list[object], *, home: Path, kill_after: float | None = None,
            env: dict[str, str] | None = None) -> dict:
        self.count += 1
        log = self.tmp / f"run-{self.count}.log"
        req = {"argv": [str(a) for a in argv], "env": {"PVREG_HOME": str(home), **(env or {})},
               "log": str(log), "kill_after": kill_after}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        result = json.loads(line)
        result["output"] = log.read_text()
        if not result["killed"]:
            assert result["rc"] == 0, result["output"]
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def baseline(zygote: Zygote, argv: list[object], *, home: Path, env=None, after=None) -> float:
    """Duration of an unkilled run: the fastest of three (warm caches).

    Kill delays are drawn within it, so on a noisy machine a slower run only
    makes a kill land earlier, never after the command has finished.
    """
    seconds = []
    for _ in range(3):
        seconds.append(zygote.run(argv, home=home, env=env() if env else None)["seconds"])
        if after is not None:
            after()
    return min(seconds)


# --- the invariants checked after every run ------------------------------------------------------------------------


def leftovers(home: Path, out_dirs: tuple[Path, ...] = ()) -> list[Path]:
    found = list(home.rglob(f"{TEMP_PREFIX}*"))
    pending = home / "pending"
    if pending.is_dir():
        found += list(pending.iterdir())
    for d in out_dirs:
        found += list(d.glob(f"{TEMP_PREFIX}*"))
    return found


def check_sound(home: Path, *, out_dirs: tuple[Path, ...] = ()) -> tuple[list, int]:
    """Database opens and is intact, verify is clean, every blob is complete; gc leaves nothing behind.

    Returns the versions and how many leftovers gc removed.
    """
    with sqlite3.connect(home / "registry.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Registry.open(home) as reg:
        metas = reg.store.all_versions()
        for m in metas:
            blob = reg.blobs.path(m.sha256)
            assert blob.is_file(), f"{m.ref} points at a missing blob"
            assert blob.stat().st_size == m.size_bytes, f"{m.ref} points at a partial blob"
        by_name: dict[str, list[int]] = {}
        for m in metas:
            by_name.setdefault(m.name, []).append(m.version)
    r = run_cli("--registry", home, "verify")
    assert r.exit_code == 0, r.stdout + r.stderr
    before = leftovers(home, out_dirs)
    r = run_cli("--registry", home, "gc", "--json")
    if not metas and any((home / "blobs" / "sha256").glob("??/*.safetensors")):
        # a first add/pull killed between its blob and its row: no versions, one blob.  gc cannot tell that
        # from a lost database, so it refuses to empty the store unless told (and removes nothing meanwhile).
        assert r.exit_code == 1 and "lists no versions at all" in r.stderr, r.stdout + r.stderr
        r = run_cli("--registry", home, "gc", "--all-unreferenced", "--json")
    assert r.exit_code == 0, r.stderr
    assert leftovers(home, out_dirs) == [], "gc left temporary files behind"
    return metas, len(before)


# --- add -----------------------------------------------------------------------------------------------------------


def test_add_killed_at_random_moments(zygote, tmp_path) -> None:
    home = tmp_path / "reg"
    base = tmp_path / "base"
    base.mkdir()
    g = torch.Generator().manual_seed(0)
    shapes = {"model.a.weight": (2048, 4096), "model.b.weight": (2048, 4096)}  # 64 MiB of float32
    save_file({n: torch.randn(s, generator=g) for n, s in shapes.items()}, str(base / "model.safetensors"))
    vec = tmp_path / "big.safetensors"
    save_file({n: torch.randn(s, generator=g) * 0.01 for n, s in shapes.items()}, str(vec))
    argv = ["add", "big", "--vector", vec, "--base", base]

    def reset() -> None:  # remove the version and its blob, so every run writes the blob afresh
        with Registry.open(home) as reg:
            for m in reg.store.all_versions():
                reg.rm(m.ref)
            reg.gc(all_unreferenced=True)

    duration = baseline(zygote, argv, home=home, after=reset)
    rng = random.Random(SEED)
    killed = dirty = 0
    for _ in range(16):
        res = zygote.run(argv, home=home, kill_after=rng.uniform(0, duration))
        killed += res["killed"]
        metas, found = check_sound(home)
        dirty += found > 0
        assert [m.version for m in metas] in ([], [1]), metas
        reset()
    print(f"add: {killed} killed, {dirty} left temporaries, duration {duration:.2f}s")
    assert killed >= 8, f"only {killed} of 16 runs were killed (duration {duration:.2f}s)"
    assert dirty >= 1, "no kill landed while the blob was being written"


def test_first_add_killed_never_looks_like_a_lost_database(zygote, tmp_path) -> None:
    """The very first add of a fresh registry creates the database, then writes the blob, then the row.

    Killed anywhere in that, the registry must still open (no database yet and no blob, or a database at
    head): never the "empty database but blobs present" refusal, which would demand a recovery step.
    """
    base = tmp_path / "base"
    base.mkdir()
    g = torch.Generator().manual_seed(1)
    shapes = {"model.a.weight": (1024, 4096), "model.b.weight": (1024, 4096)}  # 32 MiB of float32
    save_file({n: torch.randn(s, generator=g) for n, s in shapes.items()}, str(base / "model.safetensors"))
    vec = tmp_path / "big.safetensors"
    save_file({n: torch.randn(s, generator=g) * 0.01 for n, s in shapes.items()}, str(vec))
    argv = ["add", "big", "--vector", vec, "--base", base]
    duration = min(zygote.run(argv, home=tmp_path / f"warm-{i}")["seconds"] for i in range(2))
    rng = random.Random(SEED + 4)
    killed = 0
    for i in range(10):
        home = tmp_path / f"fresh-{i}"
        res = zygote.run(argv, home=home, kill_after=rng.uniform(0, duration))
        killed += res["killed"]
        if not (home / "registry.db").exists():
            assert not list(home.glob("blobs/sha256/??/*")), "a blob without a database"
            continue
        metas, _ = check_sound(home)
        assert [m.version for m in metas] in ([], [1]), metas
    print(f"first add: {killed} killed, duration {duration:.2f}s")
    assert killed >= 5, f"only {killed} of 10 runs were killed (duration {duration:.2f}s)"


# --- compose -------------------------------------------------------------------------------------------------------


@pytest.fixture
def compose_registry(tmp_path):
    """Two vectors on a ~46 MB base, so compose spends its time writing."""
    home = tmp_path / "reg"
    base = tmp_path / "base"
    tensors = make_base(base, seed=0, cfg={"hidden_size": 512, "intermediate_size": 2048, "vocab_size": 4096,
                                           "num_attention_heads": 4, "num_key_value_heads": 2})
    vectors = {}
    for i, name in enumerate(("a", "b")):
        f = tmp_path / f"{name}.safetensors"
        vectors[name] = make_vector(f, tensors, seed=10 + i)
        r = run_cli("--registry", home, "add", name, "--vector", f, "--base", base)
        assert r.exit_code == 0, r.stderr
    return home, base, tensors, vectors


def _expected(vectors: dict, x: float, y: float) -> dict[str, torch.Tensor]:
    return {n: (x * vectors["a"][n] + y * vectors["b"][n]) for n in vectors["a"]}


def _check_vector_file(path: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(str(path))
    assert got.keys() == expected.keys()
    for n, t in got.items():
        torch.testing.assert_close(t, expected[n], rtol=1e-5, atol=1e-7)


def _check_model_dir(path: Path, base: dict, expected: dict[str, torch.Tensor]) -> None:
    from pvreg.registry.tensors.fingerprint import fingerprint_path

    names = {p.name for p in path.iterdir()}
    assert {"config.json", "README.md", "pvreg-composition.json"} <= names, names
    record = json.loads((path / "pvreg-composition.json").read_text())
    assert fingerprint_path(path) == record["output_fingerprint"]
    from pvreg.registry.tensors.checkpoint import open_checkpoint

    with open_checkpoint(path) as ckpt:
        assert sorted(ckpt.infos) == sorted(base)
        for n in ckpt.names():
            torch.testing.assert_close(ckpt.tensor(n).clone(), base[n] + expected[n], rtol=1e-5, atol=1e-6)


def test_compose_killed_at_random_moments(zygote, tmp_path, compose_registry) -> None:
    home, base, base_tensors, vectors = compose_registry
    outs = tmp_path / "outs"
    outs.mkdir()
    rng = random.Random(SEED + 1)
    counter = iter(range(10_000))

    def argv(mode: str, x: float, y: float) -> tuple[list, Path | None]:
        terms = [f"a:{x!r}", f"b:{y!r}"]
        if mode == "register":
            return ["compose", *terms, "--vector-only", "--register", "combo", "--quiet"], None
        if mode == "vector":
            out = outs / f"v{next(counter)}.safetensors"
            return ["compose", *terms, "--vector-only", "--out", out, "--quiet"], out
        if mode == "force":  # replace one existing model directory again and again
            return ["compose", *terms, "--base", base, "--out", outs / "forced", "--force", "--quiet"], outs / "forced"
        out = outs / f"m{next(counter)}"
        return ["compose", *terms, "--base", base, "--out", out, "--quiet"], out

    modes = ("register", "vector", "model", "force")
    durations = {}
    for mode in modes:
        durations[mode] = [zygote.run(argv(mode, 1.0, 1.0)[0], home=home)["seconds"] for _ in range(2)][-1]
    for p in outs.iterdir():
        if p.name != "forced":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    forced = (1.0, 1.0)  # what outs/forced holds now
    killed = dirty = 0
    registered = 2  # combo@1, combo@2 from the baselines
    for i in range(20):
        mode = modes[i % len(modes)]
        x, y = round(rng.uniform(-2, 2), 3), round(rng.uniform(-2, 2), 3)
        args, out = argv(mode, x, y)
        res = zygote.run(args, home=home, kill_after=rng.uniform(0, durations[mode]))
        killed += res["killed"]
        metas, found = check_sound(home, out_dirs=(outs,))
        dirty += found > 0
        combos = sorted(m.version for m in metas if m.name == "combo")
        assert combos == list(range(1, len(combos) + 1)), combos  # consecutive, no gaps
        if mode == "register" and len(combos) > registered:
            registered = len(combos)
            with Registry.open(home) as reg:
                _check_vector_file(reg.blob_path(f"combo@{registered}"), _expected(vectors, x, y))
        if mode == "force":  # the old output or the new one, complete, never neither
            for candidate in ((x, y), forced):
                try:
                    _check_model_dir(out, base_tensors, _expected(vectors, *candidate))
                except AssertionError:
                    continue
                forced = candidate
                break
            else:
                raise AssertionError(f"{out} is neither the old nor the new composition")
        elif out is not None and out.exists():  # complete, or nothing at all
            if mode == "vector":
                _check_vector_file(out, _expected(vectors, x, y))
                out.unlink()
            else:
                _check_model_dir(out, base_tensors, _expected(vectors, x, y))
                shutil.rmtree(out)
    print(f"compose: {killed} killed, {dirty} left temporaries, durations {durations}")
    assert killed >= 10, f"only {killed} of 20 runs were killed ({durations})"
    assert dirty >= 1, "no kill landed while compose was writing"


# --- pull ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from helpers.hubserver import HubServer, isolate_hf_client

    isolate_hf_client(monkeypatch, tmp_path / "hf-test", token=TOKEN)
    with HubServer(tmp_path / "hubdata", tokens={TOKEN: "alice"}) as srv:
        yield srv


def test_pull_killed_at_random_moments(zygote, tmp_path, hub) -> None:
    src = tmp_path / "src"
    base = tmp_path / "base"
    tensors = make_base(base, seed=0, cfg={"hidden_size": 256, "intermediate_size": 1024, "vocab_size": 1024,
                                           "num_attention_heads": 4, "num_key_value_heads": 2})
    for name, seed in (("p", 1), ("q", 2)):
        make_vector(tmp_path / f"{name}.safetensors", tensors, seed=seed)
        assert run_cli("--registry", src, "add", name, "--vector", tmp_path / f"{name}.safetensors",
                       "--base", base).exit_code == 0
    r = run_cli("--registry", src, "push", "p", "q", "--repo", REPO, "--create", "--endpoint", hub.url)
    assert r.exit_code == 0, r.stderr
    home = tmp_path / "reg"
    counter = iter(range(10_000))

    def env() -> dict[str, str]:  # a fresh client cache every run, so every run downloads
        return {"HF_HOME": str(tmp_path / f"hf-{next(counter)}")}

    def reset() -> None:
        with Registry.open(home) as reg:
            for m in reg.store.all_versions():
                reg.rm(m.ref)
            reg.gc(all_unreferenced=True)

    argv = ["pull", REPO, "--endpoint", hub.url]
    duration = baseline(zygote, argv, home=home, env=env, after=reset)
    rng = random.Random(SEED + 2)
    killed = dirty = 0
    for _ in range(12):
        res = zygote.run(argv, home=home, env=env(), kill_after=rng.uniform(0, duration))
        killed += res["killed"]
        metas, found = check_sound(home)
        dirty += found > 0
        # one transaction for the whole pull: a kill leaves both vectors or neither, never one
        assert {m.name for m in metas} in (set(), {"p", "q"}) and all(m.version == 1 for m in metas), metas
        reset()
    print(f"pull: {killed} killed, {dirty} left temporaries, duration {duration:.2f}s")
    assert killed >= 6, f"only {killed} of 12 runs were killed (duration {duration:.2f}s)"


# --- db upgrade ----------------------------------------------------------------------------------------------------


def _old_registry(home: Path) -> None:
    """A registry at revision 0001 holding one vector, one version and an alias."""
    from alembic import command
    from pvreg.registry.storage import db
    from sqlalchemy import text

    home.mkdir(parents=True)
    engine = db.make_engine(f"sqlite:///{home / 'registry.db'}")
    try:
        with engine.begin() as conn:
            command.upgrade(db._alembic_config(conn), "0001")
        with engine.begin() as conn:
            insert_legacy_rows(conn)
            # bulk, so that the backup and the migration take long enough to be interrupted
            conn.execute(text("INSERT INTO vectors (id, name, created_at) VALUES (2, 'bulk', CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO versions (vector_id, version, sha256, size_bytes, base_fingerprint, sign, norm, "
                "tensor_norms, dtype, num_tensors, num_params, kind, provenance, state, created_at) VALUES "
                "(2, :v, :s, 10, :f, 1, 1.0, '{}', 'float32', 1, 4, 'file', :p, 'active', CURRENT_TIMESTAMP)"),
                [{"v": v, "s": f"{v:064x}", "f": "a" * 64, "p": json.dumps({"pad": "x" * 1000})}
                 for v in range(1, BULK + 1)])
    finally:
        engine.dispose()
    assert not (home / "registry.db-wal").exists()


def _db_state(path: Path) -> tuple[str, list, int]:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        rows = conn.execute("SELECT v.name, s.version, s.norm, a.alias FROM vectors v JOIN versions s "
                            "ON s.vector_id = v.id LEFT JOIN aliases a ON a.version_id = s.id "
                            "WHERE v.name = 'legacy'").fetchall()
        bulk = conn.execute("SELECT count(*) FROM versions WHERE vector_id = 2").fetchone()[0]
    conn.close()
    return rev, rows, bulk


BULK = 20_000
LEGACY_ROWS = [("legacy", 1, 2.5, "prod")]


def test_db_upgrade_killed_at_random_moments(zygote, tmp_path) -> None:
    template = tmp_path / "template"
    _old_registry(template)

    def fresh(i: int) -> Path:
        home = tmp_path / f"reg-{i}"
        home.mkdir()
        shutil.copyfile(template / "registry.db", home / "registry.db")
        return home

    duration = max(zygote.run(["db", "upgrade"], home=fresh(100 + k))["seconds"] for k in range(2))
    rng = random.Random(SEED + 3)
    killed = upgraded = 0
    for i in range(12):
        home = fresh(i)
        res = zygote.run(["db", "upgrade"], home=home, kill_after=rng.uniform(0, duration))
        killed += res["killed"]
        rev, rows, bulk = _db_state(home / "registry.db")
        assert rev in ("0001", HEAD)
        assert rows == LEGACY_ROWS and bulk == BULK
        backups = sorted(home.glob("registry.db.backup-*"))
        if rev == HEAD:
            upgraded += 1
            assert backups, "upgraded without keeping a backup"
        for b in backups:  # every backup there is complete: the old revision with its data
            assert _db_state(b) == ("0001", LEGACY_ROWS, BULK)
        # and a later open finishes the job
        with Registry.open(home) as reg:
            assert reg.db_current() == HEAD
            assert reg.resolve("legacy@prod").norm == 2.5
        backups = sorted(home.glob("registry.db.backup-*"))
        assert backups and all(_db_state(b) == ("0001", LEGACY_ROWS, BULK) for b in backups)
        assert list(home.glob(f"{TEMP_PREFIX}*")) == []
    print(f"db upgrade: {killed} killed, {upgraded} finished before the kill, duration {duration:.2f}s")
    assert killed >= 6, f"only {killed} of 12 runs were killed (duration {duration:.2f}s)"


BACKUP_SCRIPT = r"""
import sys
from pathlib import Path
from pvreg.registry.storage.db import backup_sqlite
print("go", flush=True)
backup_sqlite(Path(sys.argv[1]), "0001")
print("done", flush=True)
"""


def test_backup_killed_midway_leaves_no_false_backup(tmp_path) -> None:
    """The pre-migration backup is the one file a user restores from: it must be complete or absent."""
    import time

    from pvreg.registry.storage.db import backup_sqlite

    home = tmp_path / "reg"
    _old_registry(home)
    db_path = home / "registry.db"

    def spawn() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", BACKUP_SCRIPT, str(db_path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "go"
        return p

    p = spawn()
    start = time.monotonic()
    assert p.stdout.readline().strip() == "done"
    duration = time.monotonic() - start
    assert p.wait() == 0
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
        p = spawn()
        time.sleep(fraction * duration)
        p.kill()  # SIGKILL
        p.wait()
        for b in sorted(home.glob("registry.db.backup-*")):
            assert _db_state(b) == ("0001", LEGACY_ROWS, BULK), b
    backup_sqlite(db_path, "0001")  # the next backup clears an interrupted one's temporary file
    assert list(home.glob(f"{TEMP_PREFIX}*")) == []
    assert _db_state(db_path) == ("0001", LEGACY_ROWS, BULK)


# --- a migration that fails half-way ---------------------------------------------------------------------------------

FAILING_REVISION = '''"""A revision that creates a table, writes to it, then fails.

Revision ID: 9001
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("doomed", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("INSERT INTO doomed (id) VALUES (1)")
    op.execute("UPDATE vectors SET name = 'renamed'")
    raise RuntimeError("migration 9001 failed half-way")


def downgrade() -> None:
    op.drop_table("doomed")
'''


@pytest.mark.usefixtures("backend")
def test_failed_migration_keeps_backup_and_leaves_database_usable(tmp_path, home, monkeypatch, cli,
                                                                  vector_file, base_dir) -> None:
    from pvreg.migrations import SCRIPT_LOCATION
    from pvreg.registry.errors import DatabaseVersionError
    from pvreg.registry.settings import Settings
    from pvreg.registry.storage import db
    from sqlalchemy import create_engine, inspect, text

    assert cli("add", "keep", "--vector", vector_file, "--base", base_dir).exit_code == 0
    assert cli("tag", "keep@1", "prod").exit_code == 0
    scripts = tmp_path / "migrations"
    shutil.copytree(SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9001_doomed.py").write_text(FAILING_REVISION.format(down=HEAD))
    monkeypatch.setattr(db, "SCRIPT_LOCATION", scripts)
    monkeypatch.setattr(db, "HEAD", "9001")

    settings = Settings.resolve()
    with pytest.raises(DatabaseVersionError) as info:
        Registry.open()
    message = str(info.value)
    assert "\n" not in message and "migration from" in message and HEAD in message
    backups = sorted(home.glob(f"registry.db.backup-{HEAD}-*"))
    if settings.sqlite_path is not None:
        assert len(backups) == 1 and str(backups[0]) in message
        with sqlite3.connect(backups[0]) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == HEAD
            assert conn.execute("SELECT name FROM vectors").fetchall() == [("keep",)]
        conn.close()
    else:
        assert backups == []

    r = cli("list")  # the CLI says the same in one line, exit code 1
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr

    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
            assert conn.execute(text("SELECT name FROM vectors")).all() == [("keep",)]
            assert conn.execute(text("SELECT count(*) FROM versions")).scalar() == 1
            assert conn.execute(text("SELECT alias FROM aliases")).all() == [("prod",)]
            assert not inspect(conn).has_table("doomed")
    finally:
        engine.dispose()

    monkeypatch.undo()  # the real migrations again: the original database is fully usable
    monkeypatch.setenv("PVREG_HOME", str(home))
    if settings.sqlite_path is None:
        monkeypatch.setenv("PVREG_DATABASE_URL", settings.database_url)
    r = cli("show", "keep@prod", "--json")
    assert r.exit_code == 0, r.stderr
    assert cli("verify").exit_code == 0
