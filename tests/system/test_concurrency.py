"""Several processes writing one registry at once: nothing lost, nothing duplicated, gc safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.factories import make_vector

pytestmark = pytest.mark.usefixtures("backend")

WORKER = r"""
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
from pvreg.cli.main import main
sys.argv = ["pvreg"] + sys.argv[2:]
main()
"""


def _spawn(go: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(go), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_eight_concurrent_adds(tmp_path, base_dir, base_tensors, cli) -> None:
    assert cli("fingerprint", base_dir).exit_code == 0  # warm the fingerprint cache
    vectors = []
    for i in range(8):
        p = tmp_path / f"v{i}.safetensors"
        make_vector(p, base_tensors, seed=i)
        vectors.append(p)
    go = tmp_path / "go"
    names = ["shared"] * 4 + [f"own-{i}" for i in range(4)]
    procs = [_spawn(go, "add", name, "--vector", v, "--base", base_dir) for name, v in zip(names, vectors)]
    time.sleep(1.5)  # let every interpreter start and wait on the barrier
    go.touch()
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        assert "locked" not in err
    log = json.loads(cli("log", "shared", "--json").stdout)
    assert sorted(m["version"] for m in log) == [1, 2, 3, 4]
    shared_shas = {m["sha256"] for m in log}
    assert len(shared_shas) == 4
    assert cli("verify").exit_code == 0
    assert len(json.loads(cli("list", "--json").stdout)) == 5


def test_gc_during_adds_never_removes_a_needed_blob(tmp_path, base_dir, base_tensors, cli) -> None:
    assert cli("fingerprint", base_dir).exit_code == 0
    go = tmp_path / "go"
    procs = []
    for i in range(6):
        p = tmp_path / f"v{i}.safetensors"
        make_vector(p, base_tensors, seed=50 + i)
        procs.append(_spawn(go, "add", f"n{i}", "--vector", p, "--base", base_dir))
    gcs = [_spawn(go, "gc") for _ in range(3)]
    time.sleep(1.5)
    go.touch()
    for p in procs + gcs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    r = cli("verify")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(cli("list", "--json").stdout)) == 6


def test_compose_gc_and_add_running_together(tmp_path, base_dir, base_tensors, cli) -> None:
    """compose (--vector-only --register, --vector-only --out, model --out) + gc + add, all at once.

    Writers hold the store's shared lock from blob write to commit and compose announces its staging
    directory with a locked marker, so gc (exclusive lock) never removes anything a live writer needs.
    """
    from pvreg.registry.files import TEMP_PREFIX

    assert cli("fingerprint", base_dir).exit_code == 0
    for name, seed in (("a", 1), ("b", 2)):
        make_vector(tmp_path / f"{name}.safetensors", base_tensors, seed=seed)
        assert cli("add", name, "--vector", tmp_path / f"{name}.safetensors", "--base", base_dir).exit_code == 0
    outs = tmp_path / "outs"
    outs.mkdir()
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        make_vector(tmp_path / f"n{i}.safetensors", base_tensors, seed=80 + i)
        procs.append(_spawn(go, "add", "added", "--vector", tmp_path / f"n{i}.safetensors", "--base", base_dir))
    procs += [_spawn(go, "compose", f"a:{c}", "b:0.5", "--vector-only", "--register", "combo", "--quiet")
              for c in (1, -1)]
    procs.append(_spawn(go, "compose", "a:0.3", "b:-2", "--vector-only", "--out", outs / "v.safetensors", "--quiet"))
    procs.append(_spawn(go, "compose", "a:1", "b:1", "--base", base_dir, "--out", outs / "model", "--quiet"))
    procs += [_spawn(go, "gc") for _ in range(2)]
    time.sleep(1.5)
    go.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    r = cli("verify")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sorted(m["version"] for m in json.loads(cli("log", "combo", "--json").stdout)) == [1, 2]
    assert sorted(m["version"] for m in json.loads(cli("log", "added", "--json").stdout)) == [1, 2]
    combos = json.loads(cli("log", "combo", "--json").stdout)
    assert all(m["kind"] == "compose" and len(m["parents"]) == 2 for m in combos)
    assert (outs / "v.safetensors").is_file()
    assert {"config.json", "README.md", "pvreg-composition.json"} <= {p.name for p in (outs / "model").iterdir()}
    records = json.loads(cli("compositions", "--json").stdout)
    assert len(records) == 4
    # a final gc has nothing of a live writer to leave and nothing referenced to take
    assert cli("gc").exit_code == 0
    assert cli("verify").exit_code == 0
    from pvreg.registry.settings import Settings

    home = Settings.resolve().home
    assert list(home.rglob(f"{TEMP_PREFIX}*")) == [] and list(outs.glob(f"{TEMP_PREFIX}*")) == []
    assert not (home / "pending").exists() or list((home / "pending").iterdir()) == []


def test_readers_do_not_wait_for_an_open_write_transaction(home, cli, vector_file, base_dir) -> None:
    """list/show/log read a snapshot: a writer mid-transaction (held open here) neither blocks nor leaks into them."""
    from pvreg.registry.settings import Settings
    from sqlalchemy import create_engine, text

    assert cli("add", "helpful", "--vector", vector_file, "--base", base_dir).exit_code == 0
    engine = create_engine(Settings.resolve().database_url)
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            # On SQLite this takes the database's write lock until the rollback below.
            conn.execute(text("INSERT INTO vectors (name, created_at) VALUES ('ghost', CURRENT_TIMESTAMP)"))
            for argv, needle in ((["list"], "helpful"), (["show", "helpful"], "helpful@1"), (["log", "helpful"], "active"),
                                 (["bases"], "base"), (["compositions"], "no compositions recorded")):
                # A reader that queued behind the lock would wait out the 60 s busy timeout.
                r = subprocess.run([sys.executable, "-c", "from pvreg.cli.main import main; main()", *argv],
                                   capture_output=True, text=True, env=os.environ.copy(), timeout=30)
                assert r.returncode == 0, (argv, r.stderr)
                assert needle in r.stdout and "ghost" not in r.stdout, (argv, r.stdout)
            trans.rollback()
    finally:
        engine.dispose()
