"""Failures of the environment as one-line errors, decided in one place.

A full disk, a read-only mount, a permission bit, a database that cannot be
opened or reached: none of these is a bug, so none may surface as
``internal error: OperationalError``.  Three entry points share the rules
below, so every path gets the same message whichever layer noticed first:

* :func:`db_failure` — called from the engine's ``handle_error`` hook
  (:func:`pvreg.registry.storage.db.make_engine`), so every statement, connect and
  commit on SQLite or PostgreSQL is covered, whoever runs it;
* :func:`guarded` — wraps every public :class:`~pvreg.registry.api.Registry`
  method, turning ``OSError`` (ENOSPC, EROFS, EACCES, …) and raw ``sqlite3``
  errors into :class:`~pvreg.registry.errors.StorageError`;
* :func:`guard` — the same as a context manager, for code outside a method
  (``Registry.open``).

Lock contention (SQLite busy/locked, PostgreSQL serialisation failures) is
deliberately *not* translated here: :func:`pvreg.registry.storage.db.run_transaction`
retries it and reports it itself once it gives up.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sqlite3
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pvreg.registry.errors import PvregError, ReadOnlyRegistryError, StorageError

if TYPE_CHECKING:
    from sqlalchemy import URL

C = TypeVar("C", bound=type)

# errno -> what to tell the user.  Anything else stays an internal error (a bug to report).
OS_CAUSES = {
    errno.ENOSPC: "no space left on device (the file system is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
}
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)

# SQLite primary result codes (sqlite3.h); the extended code's low byte is the primary one.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY = 3, 5, 6, 7, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 10, 11, 13, 14, 26
SQLITE_CONTENTION = (SQLITE_BUSY, SQLITE_LOCKED)

_READONLY_WHY = {
    "SQLITE_READONLY_DIRECTORY": "its directory is not writable",
    "SQLITE_READONLY_DBMOVED": "the file was moved or deleted while open",
    "SQLITE_READONLY_CANTLOCK": "its -shm file is read-only",
    "SQLITE_READONLY_ROLLBACK": "a hot journal needs a rollback that cannot be written",
    "SQLITE_READONLY_RECOVERY": "its WAL needs a recovery that cannot be written",
}


def database_label(url: str | URL) -> str:
    """How messages name a database: the SQLite file, or the URL without its password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ":memory:"
        return name.removeprefix("file:").split("?", 1)[0]
    return parsed.render_as_string(hide_password=True)


def sqlite_code(exc: BaseException) -> tuple[int | None, str]:
    """(primary result code, extended code name) of a ``sqlite3`` error, else (None, '')."""
    if not isinstance(exc, sqlite3.Error):
        return None, ""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code & 0xFF if isinstance(code, int) else None), getattr(exc, "sqlite_errorname", "") or ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else exc.__class__.__name__


def _cantopen_reason(path: Path) -> str:
    """Why SQLite could not open ``path``, found out from the filesystem."""
    parent = path.parent
    if not parent.is_dir():
        return f"its directory {parent} does not exist"
    if path.exists() and not os.access(path, os.R_OK):
        return "permission denied"
    if not os.access(parent, os.W_OK):
        return f"its directory {parent} is not writable"
    return "unable to open database file"


def db_failure(exc: BaseException, where: str) -> PvregError | None:
    """The one-line error for a DBAPI exception (``sqlite3`` or psycopg), or None to leave it be.

    None for lock contention (retried by the caller) and for anything that
    looks like a bug (syntax, constraint, missing table), which must stay loud.
    """
    code, name = sqlite_code(exc)
    if code is not None:
        if code == SQLITE_FULL:
            return StorageError(f"{where}: database or disk is full; free some space and retry")
        if code == SQLITE_READONLY:
            why = _READONLY_WHY.get(name, "the file or its directory is not writable")
            return ReadOnlyRegistryError(
                f"{where}: the registry database is read-only ({why}); this command needs write access"
            )
        if code == SQLITE_CANTOPEN:
            return StorageError(f"{where}: cannot open the database: {_cantopen_reason(Path(where))}")
        if code in (SQLITE_NOTADB, SQLITE_CORRUPT):
            return StorageError(
                f"{where}: is not a valid SQLite database ({first_line(exc)}); pvreg left it untouched: "
                "restore it from a backup (registry.db.backup-* beside it)"
            )
        if name == "SQLITE_IOERR_SHMSIZE":  # growing the -shm file failed: in practice a full file system
            return StorageError(
                f"{where}: cannot grow its -shm file: no space left on device (the file system is full)"
            )
        if code == SQLITE_IOERR:
            return StorageError(f"{where}: disk I/O error ({name or first_line(exc)})")
        if code == SQLITE_PERM:
            return StorageError(f"{where}: access permission denied")
        if code == SQLITE_NOMEM:
            return StorageError(f"{where}: SQLite ran out of memory")
        return None
    state = getattr(exc, "sqlstate", None)
    module = type(exc).__module__
    if not module.startswith("psycopg"):
        return None
    msg = first_line(exc)
    if state == "53100":
        return StorageError(f"database {where}: the server's disk is full ({msg})")
    if state in ("53200", "53300"):
        return StorageError(f"database {where}: the server is out of resources ({msg})")
    if state in ("25006", "42501"):
        return ReadOnlyRegistryError(f"database {where}: {msg}; this command needs write access")
    if state == "3D000":
        return StorageError(f"database {where}: does not exist ({msg})")
    if state in ("28000", "28P01"):
        return StorageError(f"database {where}: authentication failed ({msg})")
    if state is not None and state.startswith(("08", "57P")):
        return StorageError(f"database {where}: connection lost ({msg})")
    if state is None and type(exc).__name__ == "OperationalError":  # libpq could not connect at all
        return StorageError(f"database {where}: cannot connect ({msg})")
    return None


def _under(path: Path, home: Path) -> bool:
    try:
        return path.resolve().is_relative_to(home.resolve())
    except (OSError, RuntimeError):
        return False


def os_failure(exc: OSError, *, home: Path | None, read_only: bool = False, op: str | None = None) -> PvregError | None:
    """The one-line error for an ``OSError`` from the environment, or None when it is not one."""
    cause = OS_CAUSES.get(exc.errno or -1)
    if cause is None:
        return None
    path = Path(exc.filename) if exc.filename else None
    inside = home is not None and (path is None or _under(path, home))
    if exc.errno in _DENIED and inside and (read_only or exc.errno == errno.EROFS):
        return ReadOnlyRegistryError(
            f"registry {home} is read-only ({path or home}: {cause})" + (f"; {op} needs write access" if op else "")
        )
    if path is None:
        path = home
    prefix = f"{path}: " if path is not None else ""
    return StorageError(f"{prefix}{cause}" + (f" (during {op})" if op else ""))


def translate(
    exc: BaseException, *, home: Path | None, database: str, read_only: bool = False, op: str | None = None
) -> PvregError | None:
    """Dispatch: ``OSError``, raw ``sqlite3`` errors and SQLAlchemy-wrapped DBAPI errors."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, PvregError):
        return None
    if isinstance(exc, OSError):
        return os_failure(exc, home=home, read_only=read_only, op=op)
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return db_failure(exc.orig, database)
    if isinstance(exc, sqlite3.Error):
        return db_failure(exc, database)
    return None


@contextlib.contextmanager
def guard(*, home: Path | None, database: str, read_only: bool = False, op: str | None = None) -> Iterator[None]:
    """Re-raise environment failures inside the block as :class:`StorageError`."""
    try:
        yield
    except Exception as exc:
        err = translate(exc, home=home, database=database, read_only=read_only, op=op)
        if err is None:
            raise
        raise err from exc


def guarded(cls: C) -> C:
    """Class decorator: every public method of ``cls`` reports environment failures cleanly.

    Applied to ``Registry`` so that the Python API and the CLI (which only
    maps ``PvregError`` to exit codes) both get one-line errors naming the
    file and the cause, including in methods added later.  The instance must
    have ``settings`` and ``read_only`` attributes.  Methods inherited from the
    facade's per-area mixins are wrapped on ``cls`` itself (the mixins stay plain).
    """
    for name in dir(cls):
        fn = inspect.getattr_static(cls, name)
        if name.startswith("_") or not isinstance(fn, types.FunctionType):
            continue
        setattr(cls, name, _guard_method(fn))
    return cls


def _guard_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            settings = self.settings
            err = translate(
                exc,
                home=settings.home,
                database=database_label(settings.database_url),
                read_only=getattr(self, "read_only", False),
                op=fn.__name__,
            )
            if err is None:
                raise
            raise err from exc

    return method
