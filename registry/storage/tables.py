"""The metadata schema as SQLAlchemy Core tables.

These tables are the single description of the schema: the ORM classes in
:mod:`pvreg.registry.storage.models` map onto them, the read-only queries in
:mod:`pvreg.registry.storage.catalog` use them directly, and a test checks that
Alembic's autogenerate finds no difference between them and the migrated
database.  Keeping them importable without ``sqlalchemy.orm`` is what lets
read-only commands (``pvreg list``, ``show``, ``log``) start quickly: the ORM
package alone costs more import time than the whole query.  Only portable SQL
types are used so the same schema runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _created() -> Column[datetime]:
    return Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow)


vectors = Table(
    "vectors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", Text),
    _created(),
)

base_models = Table(
    "base_models",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("label", Text),
    Column("hub_id", Text),
    Column("architecture", Text),
    Column("num_tensors", Integer),
    Column("num_params", BigInteger),
    Column("local_path", Text),
    _created(),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("vector_id", ForeignKey("vectors.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=False, index=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("base_fingerprint", ForeignKey("base_models.fingerprint"), nullable=False, index=True),
    Column("dataset", Text),
    Column("sign", SmallInteger, nullable=False, default=1),
    Column("norm", Double, nullable=False),
    Column("tensor_norms", JSON, nullable=False, default=dict),
    Column("dtype", String(32), nullable=False),
    Column("num_tensors", Integer, nullable=False),
    Column("num_params", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False, default="file"),
    Column("provenance", JSON, nullable=False, default=dict),
    Column("message", Text),
    Column("state", String(16), nullable=False, default="active"),
    _created(),
    # The exact LoRA factors of a LoRA-sourced vector: a second content-addressed blob (migration 0005).
    Column("factors_sha256", String(64)),
    UniqueConstraint("vector_id", "version", name="uq_versions_vector_version"),
)

# Lineage is kept by ref and sha256, not by foreign key, so the history
# survives ``rm`` of a parent.
version_parents = Table(
    "version_parents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("parent_ref", Text, nullable=False),
    Column("parent_sha256", String(64), nullable=False),
    Column("coefficient", Double),
)

version_tags = Table(
    "version_tags",
    metadata,
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("vector_id", ForeignKey("vectors.id", ondelete="CASCADE"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True),
)

compositions = Table(
    "compositions",
    metadata,
    Column("id", Integer, primary_key=True),
    _created(),
    Column("method", String(32), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("base_fingerprint", String(64), nullable=False),
    Column("output_kind", String(16), nullable=False),
    Column("output_path", Text),
    Column("output_fingerprint", String(64)),
    Column("result_version_id", ForeignKey("versions.id", ondelete="SET NULL"), index=True),
    Column("pvreg_version", String(32), nullable=False),
    # "compose" (a compose run) or "lora" (an export-lora run, with its error report).
    Column("kind", String(16), nullable=False, default="compose", server_default="compose"),
    Column("report", JSON),
)

# Where a version was pushed to or pulled from on a Hub; never a token.
hub_records = Table(
    "hub_records",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("direction", String(8), nullable=False),  # "push" | "pull"
    Column("endpoint", Text, nullable=False),
    Column("repo", Text, nullable=False),
    Column("revision", Text, nullable=False),
    Column("commit_sha", String(64), nullable=False),
    Column("path", Text, nullable=False),
    _created(),
)

# One measurement of a target (a model, or a composition on a base) on its eval sets.  ``key`` is a
# sha256 over what determines the numbers (target, eval set sha256s, options), so a sweep re-run finds
# the points already measured.  Vectors are linked by version id for ``pvreg evals REF``; the resolved
# spec in ``target`` keeps the history readable after ``rm`` of a version.
evaluations = Table(
    "evaluations",
    metadata,
    Column("id", Integer, primary_key=True),
    _created(),
    Column("key", String(64), nullable=False, index=True),
    Column("target_kind", String(16), nullable=False),  # "model" | "composition"
    Column("model_fingerprint", String(64)),
    Column("base_fingerprint", String(64)),
    Column("spec", JSON),
    Column("eval_sets", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("scalar_metrics", JSON, nullable=False, default=dict),
    Column("options", JSON, nullable=False, default=dict),
    Column("sweep", Text),
    Column("seconds", Double),
    Column("pvreg_version", String(32), nullable=False),
)

evaluation_versions = Table(
    "evaluation_versions",
    metadata,
    Column("evaluation_id", ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("coefficient", Double, nullable=False),
)
