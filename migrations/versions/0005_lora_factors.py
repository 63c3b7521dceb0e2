"""Keep the exact LoRA factors of LoRA-sourced vectors; record LoRA exports beside compose runs.

``versions.factors_sha256`` names a second content-addressed blob (A, B and scale per
module and adapter) for vectors registered from LoRA adapters, so they can be exported
as adapters exactly.  ``compositions.kind`` tells compose runs from LoRA exports, and
``compositions.report`` holds an export's error report.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite and PostgreSQL both have it): no table copy, so the upgrade of a large
    # registry stays as quick as the others (batch mode would rebuild ``versions`` row by row).
    op.add_column("versions", sa.Column("factors_sha256", sa.String(length=64), nullable=True))
    op.add_column("compositions", sa.Column("kind", sa.String(length=16), nullable=False, server_default="compose"))
    op.add_column("compositions", sa.Column("report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("compositions") as batch:
        batch.drop_column("report")
        batch.drop_column("kind")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("factors_sha256")
