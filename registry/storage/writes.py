"""Every write to the metadata database, as functions of an ORM session inside the caller's transaction.

Reads go through :mod:`pvreg.registry.storage.catalog` (SQLAlchemy Core); the
ORM is imported only here and by :mod:`pvreg.registry.storage.db`'s session
factory, so read-only commands never pay for it.  Each function runs inside a
transaction that :func:`pvreg.registry.storage.db.run_transaction` retries on
genuine contention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import NotFoundError
from pvreg.registry.storage import catalog
from pvreg.registry.storage.bases import ResolvedBase
from pvreg.schemas.vector import ParentRef, VectorMeta

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pvreg.registry.sources.ingest import BlobStats
    from pvreg.registry.storage.models import Version
    from pvreg.schemas.evaluation import EvaluationRecord


@dataclass
class NewVersion:
    """Everything needed to insert a version once its blob is stored."""

    name: str
    stats: BlobStats | None
    base: ResolvedBase
    kind: str = "file"
    dataset: str | None = None
    sign: int = 1
    description: str | None = None
    message: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    parents: list[ParentRef] = field(default_factory=list)
    dedupe: bool = False
    #: The blob of the exact LoRA factors (LoRA-sourced vectors), already in the store.
    factors_sha256: str | None = None

    def __post_init__(self) -> None:
        # The one gate for a version's text, whatever its source (command line, Python API,
        # an exported file, a Hub repo, compose --register): it runs before the blob is
        # written and before any row, so a bad field leaves the registry untouched.
        from pvreg.registry.refs import check_version_text

        check_version_text(
            self.name,
            dataset=self.dataset,
            tags=self.tags,
            description=self.description,
            message=self.message,
            parents=self.parents,
        )


def insert_version(s: Session, new: NewVersion) -> tuple[int, bool]:
    """Insert ``new`` inside the caller's transaction: (version id, whether a row was created).

    With ``new.dedupe`` an existing version of the same name with the same sha256 is
    returned (created False).  ``Store.commit_version`` runs it in a transaction of
    its own; ``pull`` runs one per vector in a single transaction (all or nothing).
    """
    from sqlalchemy import func, select

    from pvreg.registry.storage.models import (
        BaseModelRow,
        Vector,
        Version,
        VersionParent,
        VersionTag,
    )

    stats = new.stats
    assert stats is not None, "the blob is stored before its version is inserted"
    vec = s.scalar(select(Vector).where(Vector.name == new.name))
    if vec is None:
        vec = Vector(name=new.name, description=new.description)
        s.add(vec)
        s.flush()
    elif new.description is not None:
        vec.description = new.description
    if new.dedupe:
        existing = s.scalar(select(Version.id).where(Version.vector_id == vec.id, Version.sha256 == stats.sha256))
        if existing is not None:
            return existing, False
    base_row = s.get(BaseModelRow, new.base.fingerprint)
    if base_row is None:
        base_row = BaseModelRow(fingerprint=new.base.fingerprint)
        s.add(base_row)
    for key in ("label", "hub_id", "architecture", "num_tensors", "num_params", "local_path"):
        value = new.base.facts.get(key)
        if value is not None and (key in ("local_path", "num_tensors", "num_params") or getattr(base_row, key) is None):
            setattr(base_row, key, value)
    last = s.scalar(select(func.max(Version.version)).where(Version.vector_id == vec.id)) or 0
    row = Version(
        vector_id=vec.id,
        version=last + 1,
        sha256=stats.sha256,
        size_bytes=stats.size_bytes,
        base_fingerprint=new.base.fingerprint,
        dataset=new.dataset,
        sign=new.sign,
        norm=stats.norm,
        tensor_norms=stats.tensor_norms,
        dtype=stats.dtype,
        num_tensors=stats.num_tensors,
        num_params=stats.num_params,
        kind=new.kind,
        provenance={**new.provenance, **stats.extra},
        message=new.message,
        state="active",
        factors_sha256=new.factors_sha256,
    )
    s.add(row)
    s.flush()
    for pos, p in enumerate(new.parents):
        s.add(
            VersionParent(
                version_id=row.id, position=pos, parent_ref=p.ref, parent_sha256=p.sha256, coefficient=p.coefficient
            )
        )
    for k, v in sorted(new.tags.items()):
        s.add(VersionTag(version_id=row.id, key=k, value=v))
    return row.id, True


def resolve_row(s: Session, ref: str) -> Version:
    """The ORM row ``ref`` names, resolved inside the writer's own transaction."""
    from pvreg.registry.storage.models import Version

    row = s.get(Version, catalog.resolve_id(s.connection(), ref))
    if row is None:  # pragma: no cover - same transaction as the resolve
        raise NotFoundError(f"unknown reference {ref!r}")
    return row


def set_alias(s: Session, ref: str, alias: str) -> int:
    """Point ``alias`` of the referenced vector at that version (moving it if set); the version id."""
    from pvreg.registry.storage.models import Alias

    row = resolve_row(s, ref)
    existing = s.get(Alias, (row.vector_id, alias))
    if existing is None:
        s.add(Alias(vector_id=row.vector_id, alias=alias, version_id=row.id))
    else:
        existing.version_id = row.id
    return row.id


def remove_alias(s: Session, name: str, alias: str) -> None:
    from sqlalchemy import select

    from pvreg.registry.storage.models import Alias, Vector

    vec = s.scalar(select(Vector).where(Vector.name == name))
    row = s.get(Alias, (vec.id, alias)) if vec else None
    if row is None:
        raise NotFoundError(f"{name} has no alias {alias!r}")
    s.delete(row)


def deprecate(s: Session, ref: str) -> int:
    row = resolve_row(s, ref)
    row.state = "deprecated"
    return row.id


def remove_version(s: Session, ref: str) -> VectorMeta:
    """Delete a version's rows (and its name when it was the last); returns what it was."""
    from sqlalchemy import func, select

    from pvreg.registry.storage.models import Vector, Version

    row = resolve_row(s, ref)
    meta = catalog.meta(s.connection(), row.id)
    vector_id = row.vector_id
    s.delete(row)
    s.flush()
    remaining = s.scalar(select(func.count()).select_from(Version).where(Version.vector_id == vector_id))
    if not remaining:
        s.delete(s.get(Vector, vector_id))
    return meta


def add_composition(
    s: Session,
    *,
    method: str,
    spec: dict[str, Any],
    base_fingerprint: str,
    output_kind: str,
    output_path: Path | None,
    output_fingerprint: str,
    result: VectorMeta | None,
    pvreg_version: str,
    kind: str = "compose",
    report: dict[str, Any] | None = None,
) -> int:
    """Record one compose run (or, ``kind="lora"``, one LoRA export with its error report); its id."""
    from pvreg.registry.storage.models import Composition

    version_id = catalog.version_id(s.connection(), result.name, result.version) if result else None
    row = Composition(
        method=method,
        spec=spec,
        base_fingerprint=base_fingerprint,
        output_kind=output_kind,
        output_path=str(output_path.resolve()) if output_path is not None else None,
        output_fingerprint=output_fingerprint,
        result_version_id=version_id,
        pvreg_version=pvreg_version,
        kind=kind,
        report=report,
    )
    s.add(row)
    s.flush()
    return int(row.id)


def add_hub_records(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Record Hub transfers (push or pull), one row per version; a record already there is not repeated."""
    from sqlalchemy import select

    from pvreg.registry.storage.models import HubRecord

    for r in rows:
        exists = s.scalar(select(HubRecord.id).where(*(getattr(HubRecord, k) == v for k, v in r.items())).limit(1))
        if exists is None:
            s.add(HubRecord(**r))


def add_evaluation(s: Session, record: EvaluationRecord) -> int:
    """Store one evaluation and link it to the versions of its spec (by ``record.refs``); its id.

    A ref that no longer resolves (removed meanwhile) is simply not linked: the
    resolved spec inside the record still names it.
    """
    from pvreg.registry.refs import parse_ref
    from pvreg.registry.storage.models import Evaluation, EvaluationVersion

    row = Evaluation(
        key=record.key,
        target_kind=record.target.kind,
        model_fingerprint=record.target.model_fingerprint,
        base_fingerprint=record.target.base_fingerprint,
        spec=record.target.spec,
        eval_sets=[e.model_dump(mode="json") for e in record.eval_sets],
        metrics={k: {m: v.model_dump(mode="json") for m, v in ms.items()} for k, ms in record.metrics.items()},
        scalar_metrics=dict(record.scalar_metrics),
        options=dict(record.options),
        sweep=record.sweep,
        seconds=record.seconds,
        pvreg_version=record.pvreg_version,
    )
    s.add(row)
    s.flush()
    terms = (record.target.spec or {}).get("terms", [])
    conn = s.connection()
    for position, (ref, term) in enumerate(zip(record.refs, terms, strict=False)):
        parsed = parse_ref(ref)
        if parsed.name is None or parsed.version is None:
            continue
        version_id = catalog.version_id(conn, parsed.name, parsed.version)
        if version_id is not None:
            s.add(
                EvaluationVersion(
                    evaluation_id=row.id,
                    position=position,
                    version_id=version_id,
                    coefficient=float(term.get("coefficient", 1.0)),
                )
            )
    s.flush()
    return int(row.id)
