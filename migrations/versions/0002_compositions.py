"""Record every compose run.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compositions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("output_kind", sa.String(length=16), nullable=False),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("output_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("result_version_id", sa.Integer(), nullable=True),
        sa.Column("pvreg_version", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_version_id"],
            ["versions.id"],
            name=op.f("fk_compositions_result_version_id_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compositions")),
    )
    with op.batch_alter_table("compositions") as batch:
        batch.create_index(batch.f("ix_compositions_result_version_id"), ["result_version_id"])


def downgrade() -> None:
    op.drop_table("compositions")
