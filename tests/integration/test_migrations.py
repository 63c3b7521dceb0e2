"""Alembic owns the schema: upgrades keep data, models match migrations, newer DBs are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers.factories import insert_legacy_rows
from pvreg import Registry
from pvreg.migrations import HEAD, SCRIPT_LOCATION
from pvreg.registry.errors import DatabaseVersionError
from pvreg.registry.settings import Settings
from pvreg.registry.storage import db
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.usefixtures("backend")


def _upgrade_to(url: str, settings: Settings, revision: str) -> None:
    from alembic import command

    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(db._alembic_config(conn), revision)
    finally:
        engine.dispose()


def test_head_constant_matches_scripts() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(SCRIPT_LOCATION)).get_current_head() == HEAD


def test_models_match_migrations(home: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from pvreg.registry.storage.models import Base

    with Registry.open() as reg:
        with reg.store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_old_database_with_data_upgrades_without_losing_rows(home: Path, cli, vector_file, base_dir) -> None:
    settings = Settings.resolve()
    home.mkdir(parents=True)
    _upgrade_to(settings.database_url, settings, "0001")
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        insert_legacy_rows(conn)
    engine.dispose()
    r = cli("db", "current")
    assert r.stdout.strip() == "0001"
    # any command opens (and upgrades) the registry
    r = cli("show", "legacy@prod", "--json")
    assert r.exit_code == 0, r.stderr
    assert '"norm": 2.5' in r.stdout
    assert cli("db", "current").stdout.strip() == HEAD
    if settings.sqlite_path is not None:
        backups = list(home.glob("registry.db.backup-0001-*"))
        assert len(backups) == 1
        with sqlite3.connect(backups[0]) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"
            assert conn.execute("SELECT name FROM vectors").fetchall() == [("legacy",)]
    # and new data goes in next to the old
    assert cli("add", "fresh", "--vector", vector_file, "--base", base_dir).exit_code == 0
    assert {e["name"] for e in __import__("json").loads(cli("list", "--json").stdout)} == {"legacy", "fresh"}


def test_db_upgrade_command(home: Path, cli) -> None:
    settings = Settings.resolve()
    home.mkdir(parents=True)
    _upgrade_to(settings.database_url, settings, "0001")
    r = cli("db", "upgrade")
    assert r.exit_code == 0 and r.stdout.startswith(f"upgraded 0001 -> {HEAD}")
    assert cli("db", "upgrade").stdout.strip() == f"already at {HEAD}"


def test_newer_database_is_refused(home: Path, cli) -> None:
    with Registry.open() as reg:
        with reg.store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    r = cli("list")
    assert r.exit_code == 1
    assert "newer than this pvreg" in r.stderr and r.stderr.count("\n") == 1
    with pytest.raises(DatabaseVersionError):
        Registry.open()
