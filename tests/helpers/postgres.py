"""Throwaway PostgreSQL databases on the server named by ``PVREG_TEST_POSTGRES_URL``.

Each test that runs on PostgreSQL gets a database of its own (created here and
dropped afterwards), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid

#: The server's URL (``postgresql+psycopg://...``), or None where no server is configured.
POSTGRES_URL = os.environ.get("PVREG_TEST_POSTGRES_URL")


def _admin_url() -> str:
    assert POSTGRES_URL, "PVREG_TEST_POSTGRES_URL is not set"
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


def create_database() -> tuple[str, str]:
    """Create a fresh, uniquely named database; return (its name, its SQLAlchemy URL)."""
    import psycopg

    name = f"pvreg_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    """Drop a database made by :func:`create_database`, even while connections remain."""
    import psycopg

    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
