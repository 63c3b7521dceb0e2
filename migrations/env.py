"""Alembic environment: runs on the connection pvreg hands over.

pvreg builds the Alembic config at runtime (no alembic.ini) and passes its own
connection in ``config.attributes["connection"]``; batch mode makes ALTERs work
on SQLite.
"""

from alembic import context

from pvreg.registry.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - pvreg always passes one
    raise RuntimeError("pvreg migrations must be run through pvreg (db upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
