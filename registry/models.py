"""SQLAlchemy 2 typed ORM models of the metadata database.

Alembic (``pvreg.migrations``) is the only thing that creates or alters these
tables; a test checks that autogenerate finds no difference between these
models and the migrated schema.  Only portable SQL types are used so the same
models run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Vector(Base):
    """A preference name (``helpful``) under which versions accumulate."""

    __tablename__ = "vectors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[Version]] = relationship(
        back_populates="vector", cascade="all, delete-orphan", passive_deletes=True
    )
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="vector", cascade="all, delete-orphan", passive_deletes=True
    )


class BaseModelRow(Base):
    """A base model the registry has seen, identified by its weight fingerprint."""

    __tablename__ = "base_models"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str | None] = mapped_column(Text)
    hub_id: Mapped[str | None] = mapped_column(Text)
    architecture: Mapped[str | None] = mapped_column(Text)
    num_tensors: Mapped[int | None] = mapped_column(Integer)
    num_params: Mapped[int | None] = mapped_column(BigInteger)
    local_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Version(Base):
    """One immutable stored vector: a blob plus the facts about it."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("vector_id", "version", name="uq_versions_vector_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    base_fingerprint: Mapped[str] = mapped_column(ForeignKey("base_models.fingerprint"), index=True)
    dataset: Mapped[str | None] = mapped_column(Text)
    sign: Mapped[int] = mapped_column(SmallInteger, default=1)
    norm: Mapped[float] = mapped_column(Double)
    tensor_norms: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    dtype: Mapped[str] = mapped_column(String(32))
    num_tensors: Mapped[int] = mapped_column(Integer)
    num_params: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16), default="file")
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    vector: Mapped[Vector] = relationship(back_populates="versions")
    base: Mapped[BaseModelRow] = relationship()
    parents: Mapped[list[VersionParent]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="VersionParent.position"
    )
    tags: Mapped[list[VersionTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class VersionParent(Base):
    """Lineage.  Parents are kept by ref and sha256, not by foreign key, so the
    history survives ``rm`` of a parent."""

    __tablename__ = "version_parents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    parent_ref: Mapped[str] = mapped_column(Text)
    parent_sha256: Mapped[str] = mapped_column(String(64))
    coefficient: Mapped[float | None] = mapped_column(Double)


class VersionTag(Base):
    __tablename__ = "version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Alias(Base):
    """A movable name (``prod``) for one version of a vector."""

    __tablename__ = "aliases"

    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)

    vector: Mapped[Vector] = relationship(back_populates="aliases")
    target: Mapped[Version] = relationship()


class Composition(Base):
    """A record of every compose run: inputs, options and what came out."""

    __tablename__ = "compositions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    method: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    output_kind: Mapped[str] = mapped_column(String(16))
    output_path: Mapped[str | None] = mapped_column(Text)
    output_fingerprint: Mapped[str | None] = mapped_column(String(64))
    result_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="SET NULL"), index=True
    )
    pvreg_version: Mapped[str] = mapped_column(String(32))


class HubRecord(Base):
    """Where a version was pushed to or pulled from on a Hugging Face Hub (never a token)."""

    __tablename__ = "hub_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # "push" | "pull"
    endpoint: Mapped[str] = mapped_column(Text)
    repo: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    commit_sha: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
