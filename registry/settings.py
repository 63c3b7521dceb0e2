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


@dataclass(frozen=True)
class Settings:
    """Resolved locations of one registry."""

    home: Path
    database_url: str

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs" / "sha256"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file behind ``database_url``, if it is one."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and ":memory:" not in self.database_url:
            return Path(self.database_url[len(prefix):])
        return None

    @classmethod
    def resolve(cls, location: str | os.PathLike[str] | None = None) -> "Settings":
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
        url = url_override or f"sqlite:///{home / 'registry.db'}"
        return cls(home=home, database_url=url)
