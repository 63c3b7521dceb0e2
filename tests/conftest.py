"""Shared fixtures: an isolated registry home, database backends, tiny models, the CLI.

Every test gets its own ``PVREG_HOME``.  Tests that use the ``backend``
fixture run twice: on SQLite, and on a real PostgreSQL server when
``PVREG_TEST_POSTGRES_URL`` names one (``.ci/run`` starts it and sets
``PVREG_REQUIRE_POSTGRES=1`` so a missing server fails instead of skipping).

Builders and checks live in ``tests/helpers/`` (importable as ``helpers.X``
through pytest's ``pythonpath`` setting); only fixtures live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import postgres
from helpers.cli import run_cli
from helpers.factories import make_base, make_vector
from helpers.snapshot import registry_snapshot


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "pvreg-home"
    monkeypatch.setenv("PVREG_HOME", str(h))
    monkeypatch.delenv("PVREG_DATABASE_URL", raising=False)
    monkeypatch.delenv("PVREG_DEBUG", raising=False)
    return h


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the requesting test on SQLite and on PostgreSQL (a fresh database of its own, dropped afterwards)."""
    if request.param == "postgres":
        if not postgres.POSTGRES_URL:
            if os.environ.get("PVREG_REQUIRE_POSTGRES") == "1":
                pytest.fail("PVREG_REQUIRE_POSTGRES=1 but PVREG_TEST_POSTGRES_URL is not set")
            pytest.skip("PostgreSQL not configured (set PVREG_TEST_POSTGRES_URL)")
        name, url = postgres.create_database()
        monkeypatch.setenv("PVREG_DATABASE_URL", url)
        request.addfinalizer(lambda: postgres.drop_database(name))
    return request.param


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


@pytest.fixture
def snapshot(home: Path):
    return lambda: registry_snapshot(home)
