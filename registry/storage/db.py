"""The metadata database: engine set-up, schema upgrades, and retried transactions.

SQLite runs in WAL mode with a busy timeout so readers never block writers and
concurrent writers wait instead of failing.  A SQLite file this process cannot
write is opened read-only (``mode=ro``, or ``immutable=1`` when its directory
is read-only too, since WAL readers otherwise need to create the ``-shm``
file), so read-only commands work on read-only copies and mounts.  The schema
is owned by Alembic: opening a database at an older revision backs it up and
upgrades it; a database newer than this code is refused, and an empty or
missing database is never initialised over an existing blob store (it was
most likely lost).  Every DBAPI error that is the environment's fault becomes
a one-line error through :mod:`pvreg.registry.storage.environment`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    event,
    inspect,
    make_url,
    text,
)
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError

from pvreg.migrations import HEAD, SCRIPT_LOCATION
from pvreg.registry.errors import (
    DatabaseVersionError,
    LostDatabaseError,
    PvregError,
    ReadOnlyRegistryError,
    StorageError,
)
from pvreg.registry.files import (
    TEMP_PREFIX,
    file_lock,
    fsync_dir,
    fsync_path,
    remove_path,
)
from pvreg.registry.settings import Settings
from pvreg.registry.storage import environment
from pvreg.registry.storage.blobstore import BlobStore

if TYPE_CHECKING:  # the ORM is imported only by writers (see catalog.py for why)
    from alembic.config import Config
    from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

# Execution option marking a read-only transaction: on SQLite it begins
# DEFERRED, so readers never queue behind writers' locks (WAL gives them a snapshot).
READ_ONLY = "pvreg_read_only"


# How a SQLite file is opened: read-write, read-only, or read-only and immutable.
RW, RO, IMMUTABLE = "rw", "ro", "immutable"

# Unique constraints two writers can legitimately race on (PostgreSQL, READ COMMITTED):
# both read "no such row / next version is N" and both insert.  Retrying re-reads.
# On SQLite writers are serialised by BEGIN IMMEDIATE, so these cannot race there.
RACE_CONSTRAINTS = frozenset({"uq_versions_vector_version", "uq_vectors_name", "pk_base_models", "pk_aliases"})


def _sqlite_file(url: str | URL) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory ones)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def sqlite_access(path: Path) -> str:
    """How this process can open the SQLite file at ``path``.

    A missing file is opened read-write (and created).  A file this process
    cannot write is opened ``mode=ro`` when its directory is writable (SQLite
    can still create the ``-shm``), else ``immutable=1``: WAL readers need a
    ``-shm`` they cannot create there — unless a writer's ``-wal`` and
    ``-shm`` are there to share.  Immutable mode ignores the ``-wal``, so a
    non-empty ``-wal`` without its ``-shm`` is refused rather than read stale.
    (Immutable mode also takes no locks: it assumes nobody writes the file,
    which holds for read-only mounts and copies; a writer that starts while
    such a reader runs is outside that assumption.)

    Raises:
        StorageError: the directory is read-only and committed changes sit in a ``-wal`` it cannot read.
    """
    if not path.exists():
        return RW
    directory_ok = os.access(path.parent, os.W_OK)
    if directory_ok and os.access(path, os.W_OK):
        return RW
    if directory_ok:
        return RO
    wal, shm = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
    if wal.exists() and shm.exists():
        return RO  # a writer (with write access) is or was at work: share its -shm, read its WAL
    if wal.exists() and wal.stat().st_size > 0:
        raise StorageError(
            f"{path}: cannot be read here: its directory is read-only and {wal.name} holds changes not yet "
            f"written into the database (its -shm file is missing); open the registry once where it is "
            "writable, or copy it to a writable place"
        )
    return IMMUTABLE


def make_engine(url: str, *, access: str = RW, busy_timeout_s: float = 60.0) -> Engine:
    """An engine for ``url``; ``access`` (from :func:`sqlite_access`) opens SQLite read-only.

    ``busy_timeout_s`` is how long a SQLite statement waits for another
    writer's lock before :func:`run_transaction` retries the transaction.

    Every DBAPI error goes through :func:`environment.db_failure` first, so a
    full disk, a read-only file or an unreachable server is a one-line
    :class:`StorageError` on every path, including connect and commit.
    """
    where = environment.database_label(url)
    if url.startswith("sqlite"):
        options: dict[str, object] = {"connect_args": {"timeout": busy_timeout_s}}
        path = _sqlite_file(url)
        if access != RW and path is not None:
            uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if access == IMMUTABLE else "")
            options = {
                "creator": functools.partial(
                    sqlite3.connect, uri, uri=True, timeout=busy_timeout_s, check_same_thread=False
                )
            }
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # Let SQLAlchemy own transactions; take the write lock at BEGIN so
            # concurrent writers queue on busy_timeout instead of deadlocking.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if access == RW:  # WAL is persistent in the file; a read-only connection cannot set it
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    else:
        engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "handle_error")
    def _environment_failure(ctx: object) -> None:
        if getattr(ctx, "is_pre_ping", False):
            return  # the pool reconnects on its own
        original = getattr(ctx, "original_exception", None)
        err = environment.db_failure(original, where) if original is not None else None
        if err is not None:
            raise err from original

    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision, or None for an empty (or, for SQLite, missing) database."""
    if engine.url.get_backend_name() == "sqlite":
        path = _sqlite_file(engine.url)
        if path is not None and (not path.exists() or path.stat().st_size == 0):
            return None  # do not create (or, with the WAL pragma, write) the file just to look at it
    with read_connection(engine) as conn:  # checked on every open: take no write lock
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _alembic_config(connection: Connection) -> Config:
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


def upgrade(
    engine: Engine, settings: Settings, *, target: str = "head", adopt_blobs: bool = False
) -> tuple[str | None, str | None, Path | None]:
    """Upgrade the schema under an exclusive lock; returns (from, to, backup).

    An empty database is initialised only when the blob store is empty too, or
    with ``adopt_blobs`` (see :func:`refuse_lost_database`).
    """
    from alembic import command

    with file_lock(settings.migrate_lock, shared=False):
        before = current_revision(engine)
        if before == HEAD and target == "head":
            return before, before, None
        if before is None and not adopt_blobs:
            refuse_lost_database(settings)
        if before is not None and before not in known_revisions():
            raise DatabaseVersionError(
                f"{where(settings)}: database schema revision {before} is newer than this pvreg "
                f"(head {HEAD}); upgrade pvreg"
            )
        backup = None
        if before is not None and settings.sqlite_path is not None:
            backup = backup_sqlite(settings.sqlite_path, before)
        hint = f"; the database is unchanged and a backup is at {backup}" if backup else ""
        try:
            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), target)
        except StorageError as exc:  # disk full, read-only, ...: say what did not happen
            raise type(exc)(f"{exc}; migration from {before or '(empty)'} not done{hint}") from exc
        except PvregError:
            raise
        except Exception as exc:
            raise DatabaseVersionError(
                f"{where(settings)}: migration from {before} failed: {exc.__class__.__name__}{hint}"
            ) from exc
        return before, current_revision(engine), backup


def where(settings: Settings) -> str:
    return str(settings.sqlite_path) if settings.sqlite_path else environment.database_label(settings.database_url)


def _empty_state(settings: Settings) -> str:
    path = settings.sqlite_path
    if path is None:
        return "has no pvreg tables"
    if not path.exists():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    return "is empty (no pvreg tables)"


def refuse_lost_database(settings: Settings) -> None:
    """Refuse to start a new database while the blob store holds blobs.

    A registry's database only becomes empty or missing by accident (a failed
    copy or restore, a deleted file, the wrong ``PVREG_DATABASE_URL``); a
    silently re-initialised one would list nothing, and the next ``gc``
    would have deleted every blob.  A fresh registry (no blobs) passes.

    Raises:
        LostDatabaseError: with the ways to recover.
    """
    count = size = 0
    for _, blob in BlobStore(settings.blob_dir).iter_blobs():
        count += 1
        with contextlib.suppress(OSError):
            size += blob.stat().st_size
    if count == 0:
        return
    restore = "restore it from a backup"
    path = settings.sqlite_path
    if path is not None:
        backups = sorted(path.parent.glob(f"{path.name}.backup-*"))
        if backups:
            restore = f"restore it from a backup (newest here: {backups[-1].name})"
    else:
        restore = "check PVREG_DATABASE_URL or restore the database from a backup"
    raise LostDatabaseError(
        f"{where(settings)}: the database {_empty_state(settings)} but the blob store {settings.blob_dir} "
        f"holds {count} blob(s) ({size} bytes), so it was probably lost or truncated and pvreg will not "
        f"start a new one over them: {restore}, or start an empty database anyway with "
        "'pvreg db init --adopt-blobs' (the blobs stay, unreferenced)"
    )


def ensure_current(engine: Engine, settings: Settings, *, adopt_blobs: bool = False, read_only: bool = False) -> None:
    """Cheap check on every open; upgrades (with backup) only when behind.

    A missing or 0-byte SQLite file is checked before anything connects, so a
    refusal leaves it exactly as it was.
    """
    path = settings.sqlite_path
    if not adopt_blobs and path is not None and (not path.exists() or path.stat().st_size == 0):
        refuse_lost_database(settings)
    rev = current_revision(engine)
    if rev == HEAD:
        return
    if read_only:
        state = f"is at schema revision {rev}, older than this pvreg ({HEAD})" if rev else "has no database yet"
        raise ReadOnlyRegistryError(
            f"registry {settings.home} is read-only and {state}: open it once with write access"
        )
    upgrade(engine, settings, adopt_blobs=adopt_blobs)


def is_retryable(exc: BaseException) -> bool:
    """Genuine contention only, worth retrying the whole transaction.

    SQLite: busy/locked.  PostgreSQL: serialisation failure (40001), deadlock
    (40P01), and a unique violation on one of :data:`RACE_CONSTRAINTS` (two
    writers picked the same next version number or created the same name,
    base or alias).  Every other error — any other IntegrityError included —
    is a bug or a real failure and must surface at once, not after ~10 s of
    retries.
    """
    orig = getattr(exc, "orig", None)
    code, _ = environment.sqlite_code(orig) if orig is not None else (None, "")
    if code is not None:
        return isinstance(exc, OperationalError) and code in environment.SQLITE_CONTENTION
    state = getattr(orig, "sqlstate", None)
    if state in ("40001", "40P01"):
        return True
    if state == "23505" and isinstance(exc, SAIntegrityError):
        return getattr(getattr(orig, "diag", None), "constraint_name", None) in RACE_CONSTRAINTS
    return False


def run_transaction(factory: sessionmaker[Session], work: Callable[[Session], T], *, attempts: int = 12) -> T:
    """Run ``work`` in one transaction, retrying it whole on contention (see :func:`is_retryable`).

    Any other error propagates after rollback; contention that outlasts every
    attempt becomes a one-line :class:`StorageError` naming the database.
    """
    for attempt in range(attempts):
        session = factory()
        try:
            with session.begin():
                result = work(session)
            return result
        except (OperationalError, SAIntegrityError) as exc:
            if not is_retryable(exc):
                raise
            if attempt == attempts - 1:
                url = session.get_bind().engine.url  # get_bind() may be a Connection: .engine is on both
                reason = environment.first_line(exc.orig if exc.orig is not None else exc)
                raise StorageError(
                    f"{environment.database_label(url)}: gave up after {attempts} attempts: the database "
                    f"stayed locked by, or kept conflicting with, other writers ({reason})"
                ) from exc
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        finally:
            session.close()
    raise AssertionError("unreachable")


def sessions(engine: Engine) -> sessionmaker[Session]:
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """One consistent read transaction, without the ORM and without taking write locks."""
    with engine.connect() as raw:
        conn = raw.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn
