"""SQLAlchemy 2 typed ORM classes for the write paths.

Each class maps onto a Core table from :mod:`pvreg.registry.storage.tables` (the one
description of the schema); the annotations here give writers typed
attributes and the relationships that cascade deletes.  Read-only queries do
not come through here (see :mod:`pvreg.registry.storage.catalog`), so ``pvreg list``
never pays for importing and configuring the ORM.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from pvreg.registry.storage import tables


class Base(DeclarativeBase):
    metadata = tables.metadata


class Vector(Base):
    """A preference name (``helpful``) under which versions accumulate."""

    __table__ = tables.vectors

    id: Mapped[int]
    name: Mapped[str]
    description: Mapped[str | None]
    created_at: Mapped[datetime]

    versions: Mapped[list[Version]] = relationship(
        back_populates="vector", cascade="all, delete-orphan", passive_deletes=True
    )
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="vector", cascade="all, delete-orphan", passive_deletes=True
    )


class BaseModelRow(Base):
    """A base model the registry has seen, identified by its weight fingerprint."""

    __table__ = tables.base_models

    fingerprint: Mapped[str]
    label: Mapped[str | None]
    hub_id: Mapped[str | None]
    architecture: Mapped[str | None]
    num_tensors: Mapped[int | None]
    num_params: Mapped[int | None]
    local_path: Mapped[str | None]
    created_at: Mapped[datetime]


class Version(Base):
    """One immutable stored vector: a blob plus the facts about it."""

    __table__ = tables.versions

    id: Mapped[int]
    vector_id: Mapped[int]
    version: Mapped[int]
    sha256: Mapped[str]
    size_bytes: Mapped[int]
    base_fingerprint: Mapped[str]
    dataset: Mapped[str | None]
    sign: Mapped[int]
    norm: Mapped[float]
    tensor_norms: Mapped[dict[str, float]]
    dtype: Mapped[str]
    num_tensors: Mapped[int]
    num_params: Mapped[int]
    kind: Mapped[str]
    provenance: Mapped[dict[str, Any]]
    message: Mapped[str | None]
    state: Mapped[str]
    created_at: Mapped[datetime]
    factors_sha256: Mapped[str | None]

    vector: Mapped[Vector] = relationship(back_populates="versions")
    parents: Mapped[list[VersionParent]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="VersionParent.position"
    )
    tags: Mapped[list[VersionTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class VersionParent(Base):
    __table__ = tables.version_parents

    id: Mapped[int]
    version_id: Mapped[int]
    position: Mapped[int]
    parent_ref: Mapped[str]
    parent_sha256: Mapped[str]
    coefficient: Mapped[float | None]


class VersionTag(Base):
    __table__ = tables.version_tags

    version_id: Mapped[int]
    key: Mapped[str]
    value: Mapped[str]


class Alias(Base):
    """A movable name (``prod``) for one version of a vector."""

    __table__ = tables.aliases

    vector_id: Mapped[int]
    alias: Mapped[str]
    version_id: Mapped[int]

    vector: Mapped[Vector] = relationship(back_populates="aliases")


class Composition(Base):
    """A record of every compose run: inputs, options and what came out."""

    __table__ = tables.compositions

    id: Mapped[int]
    created_at: Mapped[datetime]
    method: Mapped[str]
    spec: Mapped[dict[str, Any]]
    base_fingerprint: Mapped[str]
    output_kind: Mapped[str]
    output_path: Mapped[str | None]
    output_fingerprint: Mapped[str | None]
    result_version_id: Mapped[int | None]
    pvreg_version: Mapped[str]
    kind: Mapped[str]
    report: Mapped[dict[str, Any] | None]


class HubRecord(Base):
    """Where a version was pushed to or pulled from on a Hugging Face Hub (never a token)."""

    __table__ = tables.hub_records

    id: Mapped[int]
    version_id: Mapped[int]
    direction: Mapped[str]
    endpoint: Mapped[str]
    repo: Mapped[str]
    revision: Mapped[str]
    commit_sha: Mapped[str]
    path: Mapped[str]
    created_at: Mapped[datetime]


class Evaluation(Base):
    """One stored measurement (``pvreg eval`` or a sweep point)."""

    __table__ = tables.evaluations

    id: Mapped[int]
    created_at: Mapped[datetime]
    key: Mapped[str]
    target_kind: Mapped[str]
    model_fingerprint: Mapped[str | None]
    base_fingerprint: Mapped[str | None]
    spec: Mapped[dict[str, Any] | None]
    eval_sets: Mapped[list[dict[str, Any]]]
    metrics: Mapped[dict[str, Any]]
    scalar_metrics: Mapped[dict[str, float]]
    options: Mapped[dict[str, Any]]
    sweep: Mapped[str | None]
    seconds: Mapped[float | None]
    pvreg_version: Mapped[str]


class EvaluationVersion(Base):
    """A vector version an evaluation's composition contains, with its coefficient."""

    __table__ = tables.evaluation_versions

    evaluation_id: Mapped[int]
    position: Mapped[int]
    version_id: Mapped[int]
    coefficient: Mapped[float]
