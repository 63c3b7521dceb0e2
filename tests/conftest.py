"""Shared fixtures: an isolated registry home, database backends, tiny models, the CLI.

Every test gets its own ``PVREG_HOME``.  Tests that use the ``backend``
fixture run twice: on SQLite, and on a real PostgreSQL server when
``PVREG_TEST_POSTGRES_URL`` names one (``.ci/run`` starts it and sets
``PVREG_REQUIRE_POSTGRES=1`` so a missing server fails instead of skipping).
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from factories import make_base, make_vector  # noqa: E402

POSTGRES_URL = os.environ.get("PVREG_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "pvreg-home"
    monkeypatch.setenv("PVREG_HOME", str(h))
    monkeypatch.delenv("PVREG_DATABASE_URL", raising=False)
    monkeypatch.delenv("PVREG_DEBUG", raising=False)
    return h


def _postgres_database() -> tuple[str, str]:
    import psycopg

    name = f"pvreg_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    return name, f"{base}/{name}"


def _drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the requesting test on SQLite and on PostgreSQL."""
    if request.param == "postgres":
        if not POSTGRES_URL:
            if os.environ.get("PVREG_REQUIRE_POSTGRES") == "1":
                pytest.fail("PVREG_REQUIRE_POSTGRES=1 but PVREG_TEST_POSTGRES_URL is not set")
            pytest.skip("PostgreSQL not configured (set PVREG_TEST_POSTGRES_URL)")
        name, url = _postgres_database()
        monkeypatch.setenv("PVREG_DATABASE_URL", url)
        request.addfinalizer(lambda: _drop_postgres_database(name))
    return request.param


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    from pvreg.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    d = tmp_path / "base"
    make_base(d, seed=0)
    return d


@pytest.fixture
def base_tensors(base_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(base_dir / "model.safetensors"))


@pytest.fixture
def vector_file(tmp_path: Path, base_tensors) -> Path:
    p = tmp_path / "vec.safetensors"
    make_vector(p, base_tensors, seed=1)
    return p


def registry_snapshot(home: Path) -> dict[str, object]:
    """Everything a failed command must leave unchanged: every table's rows and every stored file.

    SQLite's -wal/-shm files and lock files are excluded (they change on any
    read); the rows come from a fresh connection, so uncommitted work would show.
    """
    from pvreg.registry.settings import Settings
    from sqlalchemy import MetaData, create_engine, select

    settings = Settings.resolve()
    db_bytes = None
    if settings.sqlite_path is not None and settings.sqlite_path.exists():
        import sqlite3

        # Fold the WAL into the main file so its bytes are comparable.
        with sqlite3.connect(settings.sqlite_path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        db_bytes = hashlib.sha256(settings.sqlite_path.read_bytes()).hexdigest()
    engine = create_engine(settings.database_url)
    tables: dict[str, list] = {}
    try:
        md = MetaData()
        md.reflect(engine)
        with engine.connect() as conn:
            for name, table in sorted(md.tables.items()):
                rows = conn.execute(select(table)).all()
                tables[name] = sorted(repr(tuple(r)) for r in rows)
    finally:
        engine.dispose()
    files = {}
    if home.exists():
        for p in sorted(home.rglob("*")):
            rel = p.relative_to(home).as_posix()
            if p.is_file() and not rel.endswith(("-wal", "-shm", ".lock")) and not rel.startswith("cache/") \
                    and rel != "registry.db":
                files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                files[rel + "/"] = "dir"
    return {"tables": tables, "files": files, "sqlite_bytes": db_bytes}


@pytest.fixture
def snapshot(home: Path):
    return lambda: registry_snapshot(home)
