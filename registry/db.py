"""The metadata database: engine set-up, schema upgrades, and retried transactions.

SQLite runs in WAL mode with a busy timeout so readers never block writers and
concurrent writers wait instead of failing.  The schema is owned by Alembic:
opening a database at an older revision backs it up and upgrades it; a
database newer than this code is refused.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError

from pvreg.migrations import HEAD, SCRIPT_LOCATION
from pvreg.registry.errors import DatabaseVersionError, PvregError
from pvreg.registry.fsutil import TEMP_PREFIX, file_lock, fsync_dir, fsync_path, remove_path
from pvreg.registry.settings import Settings

if TYPE_CHECKING:  # the ORM is imported only by writers (see catalog.py for why)
    from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

# Execution option marking a read-only transaction: on SQLite it begins
# DEFERRED, so readers never queue behind writers' locks (WAL gives them a snapshot).
READ_ONLY = "pvreg_read_only"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # Let SQLAlchemy own transactions; take the write lock at BEGIN so
            # concurrent writers queue on busy_timeout instead of deadlocking.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout = 60000")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def current_revision(engine: Engine) -> str | None:
    with read_connection(engine) as conn:  # checked on every open: take no write lock
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _alembic_config(connection: object) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(SCRIPT_LOCATION))
    return [rev.revision for rev in script.walk_revisions()]


def backup_sqlite(path: Path, revision: str) -> Path:
    """A consistent copy (WAL included) via SQLite's online backup API.

    Written under a temporary name and renamed when complete, so a crash never
    leaves a file named like a backup that is not one.  Callers hold the
    migration lock, so any temporary backup found is a dead writer's.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.backup-{revision}-{stamp}")
    for stale in path.parent.glob(f"{TEMP_PREFIX}backup-{path.name}-*"):
        remove_path(stale)
    temp = path.with_name(f"{TEMP_PREFIX}backup-{path.name}-{uuid.uuid4().hex}")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(temp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    fsync_path(temp)  # sqlite3 closed it without fsync
    os.replace(temp, target)
    fsync_dir(target.parent)
    return target


def upgrade(engine: Engine, settings: Settings, *, target: str = "head") -> tuple[str | None, str | None, Path | None]:
    """Upgrade the schema under an exclusive lock; returns (from, to, backup)."""
    from alembic import command

    with file_lock(settings.home / ".migrate.lock", shared=False):
        before = current_revision(engine)
        if before == HEAD and target == "head":
            return before, before, None
        if before is not None and before not in known_revisions():
            raise DatabaseVersionError(
                f"{_where(settings)}: database schema revision {before} is newer than this pvreg "
                f"(head {HEAD}); upgrade pvreg"
            )
        backup = None
        if before is not None and settings.sqlite_path is not None:
            backup = backup_sqlite(settings.sqlite_path, before)
        try:
            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), target)  # type: ignore[arg-type]
        except PvregError:
            raise
        except Exception as exc:
            hint = f"; the database is unchanged and a backup is at {backup}" if backup else ""
            raise DatabaseVersionError(
                f"{_where(settings)}: migration from {before} failed: {exc.__class__.__name__}{hint}"
            ) from exc
        return before, current_revision(engine), backup


def _where(settings: Settings) -> str:
    return str(settings.sqlite_path) if settings.sqlite_path else "database"


def ensure_current(engine: Engine, settings: Settings) -> None:
    """Cheap check on every open; upgrades (with backup) only when behind."""
    rev = current_revision(engine)
    if rev == HEAD:
        return
    upgrade(engine, settings)


def is_retryable(exc: BaseException) -> bool:
    """Lock contention and serialisation failures are worth retrying whole."""
    if isinstance(exc, OperationalError):
        msg = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
        return "locked" in msg or "busy" in msg or "deadlock" in msg or "could not serialize" in msg
    return isinstance(exc, SAIntegrityError)


def run_transaction(
    factory: sessionmaker[Session], work: Callable[[Session], T], *, attempts: int = 12
) -> T:
    """Run ``work`` in one transaction, retrying it whole on contention.

    A unique-constraint clash (two writers picking the same next version
    number) is retried too; any other error propagates after rollback.
    """
    for attempt in range(attempts):
        session = factory()
        try:
            with session.begin():
                result = work(session)
            return result
        except (OperationalError, SAIntegrityError) as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        finally:
            session.close()
    raise AssertionError("unreachable")


def sessions(engine: Engine) -> "sessionmaker[Session]":
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """One consistent read transaction, without the ORM and without taking write locks."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn
