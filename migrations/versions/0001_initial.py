"""Initial schema: vectors, versions, lineage, tags, aliases, base models.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vectors")),
        sa.UniqueConstraint("name", name=op.f("uq_vectors_name")),
    )
    op.create_table(
        "base_models",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("hub_id", sa.Text(), nullable=True),
        sa.Column("architecture", sa.Text(), nullable=True),
        sa.Column("num_tensors", sa.Integer(), nullable=True),
        sa.Column("num_params", sa.BigInteger(), nullable=True),
        sa.Column("local_path", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_base_models")),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vector_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=True),
        sa.Column("sign", sa.SmallInteger(), nullable=False),
        sa.Column("norm", sa.Double(), nullable=False),
        sa.Column("tensor_norms", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(length=32), nullable=False),
        sa.Column("num_tensors", sa.Integer(), nullable=False),
        sa.Column("num_params", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_fingerprint"],
            ["base_models.fingerprint"],
            name=op.f("fk_versions_base_fingerprint_base_models"),
        ),
        sa.ForeignKeyConstraint(
            ["vector_id"], ["vectors.id"], name=op.f("fk_versions_vector_id_vectors"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("vector_id", "version", name="uq_versions_vector_version"),
    )
    with op.batch_alter_table("versions") as batch:
        batch.create_index(batch.f("ix_versions_base_fingerprint"), ["base_fingerprint"])
        batch.create_index(batch.f("ix_versions_sha256"), ["sha256"])
        batch.create_index(batch.f("ix_versions_vector_id"), ["vector_id"])
    op.create_table(
        "version_parents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_ref", sa.Text(), nullable=False),
        sa.Column("parent_sha256", sa.String(length=64), nullable=False),
        sa.Column("coefficient", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_parents_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_parents")),
    )
    with op.batch_alter_table("version_parents") as batch:
        batch.create_index(batch.f("ix_version_parents_version_id"), ["version_id"])
    op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_tags_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_version_tags")),
    )
    op.create_table(
        "aliases",
        sa.Column("vector_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_id"], ["vectors.id"], name=op.f("fk_aliases_vector_id_vectors"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_aliases_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("vector_id", "alias", name=op.f("pk_aliases")),
    )
    with op.batch_alter_table("aliases") as batch:
        batch.create_index(batch.f("ix_aliases_version_id"), ["version_id"])


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("version_tags")
    op.drop_table("version_parents")
    op.drop_table("versions")
    op.drop_table("base_models")
    op.drop_table("vectors")
