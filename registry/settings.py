"""Where a registry lives, decided once from arguments and the environment.

Precedence: an explicit path > ``PVREG_HOME`` > the platform data directory.
``PVREG_DATABASE_URL`` (any SQLAlchemy URL) moves only the metadata database;
blobs always stay under the registry directory.  Tests point ``PVREG_HOME`` at a
temporary directory, so nothing here caches at import time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """The per-user data directory, following each platform's convention."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pvreg"


#: The SQLite database of a registry that has no ``PVREG_DATABASE_URL``.
DATABASE_FILE = "registry.db"


@dataclass(frozen=True)
class Settings:
    """Resolved locations of one registry."""

    home: Path
    database_url: str

    # The on-disk layout of a registry, spelled here and nowhere else.

    @property
    def blob_dir(self) -> Path:
        """Canonical blobs: ``blob_dir/<2 hex>/<62 hex>.safetensors``."""
        return self.home / "blobs" / "sha256"

    @property
    def gc_lock(self) -> Path:
        """Writers hold it shared from a blob's write to its commit; gc holds it exclusively."""
        return self.home / "blobs" / ".gc.lock"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def pending_dir(self) -> Path:
        """Markers of outputs being staged (see :mod:`pvreg.registry.storage.staging`)."""
        return self.home / "pending"

    @property
    def migrate_lock(self) -> Path:
        """Held while a schema upgrade runs, so two processes never migrate at once."""
        return self.home / ".migrate.lock"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file behind ``database_url``, if it is one."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and ":memory:" not in self.database_url:
            return Path(self.database_url[len(prefix) :])
        return None

    def check_home(self) -> None:
        """Refuse a registry location that is, or lies under, a regular file.

        Checked before anything is created, so the mistake is reported as bad
        input naming the file instead of surfacing later as an OSError from
        ``mkdir`` or SQLite.

        Raises:
            RegistryPathError: ``home`` or one of its parents exists and is not a directory.
        """
        from pvreg.registry.errors import RegistryPathError

        p = self.home
        while not p.exists() and not p.is_symlink() and p.parent != p:
            p = p.parent
        if p.is_dir():
            return
        if p.is_symlink() and not p.exists():
            what = "is a symbolic link to a missing target"
        else:
            what = "is a file" if p.is_file() else "exists and is not a directory"
        if p == self.home:
            raise RegistryPathError(f"registry directory {self.home}: {what}, not a directory")
        raise RegistryPathError(
            f"registry directory {self.home}: {p} {what}, so the registry cannot be created under it"
        )

    @classmethod
    def resolve(cls, location: str | os.PathLike[str] | None = None) -> Settings:
        """Build settings from ``location`` (a directory or a database URL) and the env.

        A location containing ``://`` is a database URL; blobs then go to
        ``PVREG_HOME`` (or the default home).
        """
        url_override = os.environ.get("PVREG_DATABASE_URL") or None
        if location is not None and "://" in str(location):
            url_override, location = str(location), None
        if location is not None:
            home = Path(location)
        elif os.environ.get("PVREG_HOME"):
            home = Path(os.environ["PVREG_HOME"])
        else:
            home = default_home()
        home = home.expanduser().absolute()
        url = url_override or f"sqlite:///{home / DATABASE_FILE}"
        return cls(home=home, database_url=url)
