"""Everything a failed command must leave unchanged: every table's rows and every stored file.

Tests take a snapshot before a command that must fail and compare it with one
taken after: the README promises that a refused command leaves the registry
byte-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def registry_snapshot(home: Path) -> dict[str, object]:
    """The rows of every table, the sha256 of every stored file, and the SQLite file's bytes.

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
