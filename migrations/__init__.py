"""Alembic migrations, shipped inside the package.

``HEAD`` lets a registry check whether it is current by reading one row of
``alembic_version``, without importing Alembic (which only loads when an
upgrade is actually needed).  A test asserts it equals the script head.
"""

from pathlib import Path

HEAD = "0005"
SCRIPT_LOCATION = Path(__file__).resolve().parent
