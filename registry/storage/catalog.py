"""Read-only queries over the metadata database, in SQLAlchemy Core.

Everything that only *reads* metadata (resolving references, ``list``,
``show``, ``log``, ``verify``'s inventory, bases, compose and Hub records)
comes through here and returns ``pvreg.schemas`` models.  It works on any ``Connection``, so writers
resolve a reference inside their own transaction with
``session.connection()`` and readers use a short read transaction
(:func:`pvreg.registry.storage.db.read_connection`).  It deliberately avoids the ORM:
``import sqlalchemy.orm`` plus mapper configuration cost more start-up time
than the queries themselves, which matters for ``pvreg list``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Row, func, select

from pvreg.registry.errors import AmbiguousReferenceError, NotFoundError, PvregError
from pvreg.registry.refs import Ref, parse_ref
from pvreg.registry.storage.tables import (
    aliases,
    base_models,
    evaluation_versions,
    vectors,
    version_parents,
    version_tags,
    versions,
)
from pvreg.registry.storage.tables import compositions as compositions_table
from pvreg.registry.storage.tables import evaluations as evaluations_table
from pvreg.registry.storage.tables import hub_records as hub_records_table
from pvreg.schemas.vector import BaseModelInfo, ListEntry, ParentRef, VectorMeta

if TYPE_CHECKING:
    from pvreg.schemas.compose import CompositionRecord
    from pvreg.schemas.evaluation import EvaluationRecord

# Bound parameters per IN (...) query: well under SQLite's and PostgreSQL's limits.
_CHUNK = 500

M = TypeVar("M", bound=VectorMeta)
T = TypeVar("T")

_VERSION_COLUMNS = (*versions.c, vectors.c.name, vectors.c.description)
_NAMED_VERSIONS = versions.join(vectors, versions.c.vector_id == vectors.c.id)


def utc(dt: Any) -> Any:
    """SQLite hands back naive datetimes; everything pvreg stores is UTC."""
    return dt.replace(tzinfo=timezone.utc) if isinstance(dt, datetime) and dt.tzinfo is None else dt


def _versions() -> Any:
    return select(*_VERSION_COLUMNS).select_from(_NAMED_VERSIONS)


def resolve_id(conn: Connection, ref: str | Ref) -> int:
    """The id of the version ``ref`` names.

    Raises:
        InvalidReferenceError, NotFoundError, AmbiguousReferenceError.
    """
    r = parse_ref(ref) if isinstance(ref, str) else ref
    v = versions.c
    if r.sha_prefix is not None:
        rows = conn.execute(
            select(v.id, v.sha256).where(v.sha256.startswith(r.sha_prefix)).order_by(v.created_at.desc(), v.id.desc())
        ).all()
        if not rows:
            raise NotFoundError(f"unknown reference {r.text!r}: no version has that sha256")
        shas = {row.sha256 for row in rows}
        if len(shas) > 1:
            raise AmbiguousReferenceError(
                f"ambiguous reference {r.text!r}: matches {len(shas)} blobs; give more hex digits"
            )
        return int(rows[0].id)
    vector_id = conn.scalar(select(vectors.c.id).where(vectors.c.name == r.name))
    if vector_id is None:
        raise NotFoundError(f"unknown reference {r.text!r}: no vector named {r.name!r}")
    if r.version is not None:
        found = conn.scalar(select(v.id).where(v.vector_id == vector_id, v.version == r.version))
        if found is None:
            raise NotFoundError(f"unknown reference {r.text!r}: {r.name} has no version {r.version}")
        return int(found)
    if r.alias is not None:
        found = conn.scalar(
            select(aliases.c.version_id).where(aliases.c.vector_id == vector_id, aliases.c.alias == r.alias)
        )
        if found is None:
            raise NotFoundError(f"unknown reference {r.text!r}: {r.name} has no alias {r.alias!r}")
        return int(found)
    found = conn.scalar(
        select(v.id).where(v.vector_id == vector_id, v.state == "active").order_by(v.version.desc()).limit(1)
    )
    if found is None:
        raise NotFoundError(f"unknown reference {r.text!r}: {r.name} has no active version (name one as {r.name}@N)")
    return int(found)


def meta(conn: Connection, version_id: int) -> VectorMeta:
    """The full metadata of one version (it must exist)."""
    rows = conn.execute(_versions().where(versions.c.id == version_id)).all()
    if not rows:
        raise NotFoundError(f"version id {version_id} vanished (removed concurrently?)")
    return _metas(conn, rows, VectorMeta)[0]


def show(conn: Connection, ref: str | Ref) -> VectorMeta:
    return meta(conn, resolve_id(conn, ref))


def resolve_many(conn: Connection, refs: Sequence[str]) -> list[VectorMeta | PvregError]:
    """Each reference's version, or the error resolving it raised, in order.

    One metadata query per chunk of versions rather than per reference, so a
    spec of thousands of terms resolves in one pass.
    """
    found: list[int | PvregError] = []
    for ref in refs:
        try:
            found.append(resolve_id(conn, ref))
        except PvregError as exc:
            found.append(exc)
    ids = sorted({f for f in found if isinstance(f, int)})
    rows: list[Row[Any]] = []
    for chunk in _chunks(ids):
        rows.extend(conn.execute(_versions().where(versions.c.id.in_(chunk))).all())
    by_id = {r.id: m for r, m in zip(rows, _metas(conn, rows, VectorMeta), strict=True)}
    return [by_id[f] if isinstance(f, int) else f for f in found]


def history(conn: Connection, name: str) -> list[VectorMeta]:
    """All versions of ``name``, newest first."""
    vector_id = conn.scalar(select(vectors.c.id).where(vectors.c.name == name))
    if vector_id is None:
        raise NotFoundError(f"unknown vector {name!r}")
    rows = conn.execute(_versions().where(versions.c.vector_id == vector_id).order_by(versions.c.version.desc())).all()
    return _metas(conn, rows, VectorMeta)


def everything(conn: Connection) -> list[VectorMeta]:
    """Every version, by name then version number."""
    return _metas(conn, conn.execute(_versions().order_by(vectors.c.name, versions.c.version)).all(), VectorMeta)


def latest(conn: Connection) -> list[ListEntry]:
    """Per name: the latest active version (else the latest), its version count and base label."""
    v = versions.c
    active_max = (
        select(v.vector_id, func.max(v.version).label("v")).where(v.state == "active").group_by(v.vector_id).subquery()
    )
    any_max = (
        select(v.vector_id, func.max(v.version).label("v"), func.count().label("n")).group_by(v.vector_id).subquery()
    )
    rows = conn.execute(
        _versions()
        .add_columns(any_max.c.n, base_models.c.label.label("base_label"))
        .join(any_max, any_max.c.vector_id == v.vector_id)
        .outerjoin(active_max, active_max.c.vector_id == v.vector_id)
        .outerjoin(base_models, base_models.c.fingerprint == v.base_fingerprint)
        .where(v.version == func.coalesce(active_max.c.v, any_max.c.v))
    ).all()
    # Sorted here, not in SQL: PostgreSQL's collation may order '-', '_' and '.' differently.
    rows = sorted(rows, key=lambda r: r.name)
    return _metas(conn, rows, ListEntry, lambda r: {"versions": r.n, "base_label": r.base_label})


def referenced_blobs(conn: Connection) -> set[str]:
    """Every blob a version needs: its vector and, for LoRA-sourced vectors, its factors."""
    factors = conn.scalars(select(versions.c.factors_sha256).where(versions.c.factors_sha256.is_not(None)).distinct())
    return set(conn.scalars(select(versions.c.sha256).distinct()).all()) | set(factors.all())


def blob_referenced(conn: Connection, sha256: str) -> bool:
    """Whether any version references ``sha256`` as its vector or its factors blob."""
    v = versions.c
    return conn.scalar(select(v.id).where((v.sha256 == sha256) | (v.factors_sha256 == sha256)).limit(1)) is not None


def bases(conn: Connection, *, prefix: str | None = None) -> list[BaseModelInfo]:
    """Known base models, oldest first; only those whose fingerprint starts with ``prefix`` if given."""
    q = select(base_models).order_by(base_models.c.created_at)
    if prefix is not None:
        q = q.where(base_models.c.fingerprint.startswith(prefix))
    return [_base_info(r) for r in conn.execute(q)]


def base_info(conn: Connection, fingerprint: str) -> BaseModelInfo | None:
    row = conn.execute(select(base_models).where(base_models.c.fingerprint == fingerprint)).first()
    return _base_info(row) if row is not None else None


def _base_info(row: Row[Any]) -> BaseModelInfo:
    return BaseModelInfo(
        fingerprint=row.fingerprint,
        label=row.label,
        hub_id=row.hub_id,
        architecture=row.architecture,
        num_tensors=row.num_tensors,
        num_params=row.num_params,
        local_path=row.local_path,
    )


def _chunks(values: Sequence[T]) -> Iterable[Sequence[T]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _metas(
    conn: Connection,
    rows: Sequence[Row[Any]],
    model: type[M],  # no default: mypy cannot type a default for a TypeVar parameter
    extra: Callable[[Row[Any]], dict[str, Any]] = lambda _row: {},
) -> list[M]:
    """``model`` instances for version rows (from :func:`_versions`), in the same order.

    Lineage, tags and aliases come in one query each per chunk of ids rather
    than one per version.
    """
    ids = [r.id for r in rows]
    parents: dict[int, list[ParentRef]] = {}
    tags: dict[int, dict[str, str]] = {}
    alias_names: dict[int, list[str]] = {}
    p, t, a = version_parents.c, version_tags.c, aliases.c
    for chunk in _chunks(ids):
        for pr in conn.execute(
            select(p.version_id, p.parent_ref, p.parent_sha256, p.coefficient)
            .where(p.version_id.in_(chunk))
            .order_by(p.version_id, p.position)
        ):
            parents.setdefault(pr.version_id, []).append(
                ParentRef(ref=pr.parent_ref, sha256=pr.parent_sha256, coefficient=pr.coefficient)
            )
        for tr in conn.execute(select(t.version_id, t.key, t.value).where(t.version_id.in_(chunk))):
            tags.setdefault(tr.version_id, {})[tr.key] = tr.value
        for ar in conn.execute(select(a.version_id, a.alias).where(a.version_id.in_(chunk)).order_by(a.alias)):
            alias_names.setdefault(ar.version_id, []).append(ar.alias)
    return [
        model(
            name=r.name,
            version=r.version,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            base_fingerprint=r.base_fingerprint,
            dataset=r.dataset,
            sign=r.sign,
            norm=r.norm,
            tensor_norms=r.tensor_norms or {},
            dtype=r.dtype,
            num_tensors=r.num_tensors,
            num_params=r.num_params,
            kind=r.kind,
            provenance=r.provenance or {},
            parents=parents.get(r.id, []),
            message=r.message,
            tags=dict(sorted(tags.get(r.id, {}).items())),
            aliases=alias_names.get(r.id, []),
            created_at=utc(r.created_at),
            state=r.state,
            description=r.description,
            factors_sha256=r.factors_sha256,
            **extra(r),
        )
        for r in rows
    ]


# --- bookkeeping of compose runs and Hub transfers ------------------------------------------------


def version_id(conn: Connection, name: str, version: int) -> int | None:
    return conn.scalar(
        select(versions.c.id).select_from(_NAMED_VERSIONS).where(vectors.c.name == name, versions.c.version == version)
    )


def has_blob_under(conn: Connection, name: str, sha256: str) -> bool:
    """Whether some version of ``name`` already stores exactly this blob."""
    return (
        conn.scalar(
            select(versions.c.id)
            .select_from(_NAMED_VERSIONS)
            .where(vectors.c.name == name, versions.c.sha256 == sha256)
            .limit(1)
        )
        is not None
    )


def refs_by_blob(conn: Connection, shas: Sequence[str]) -> dict[str, list[str]]:
    """``name@version`` of every local version storing each of ``shas``."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(sorted(set(shas))):
        for name, version, sha in conn.execute(
            select(vectors.c.name, versions.c.version, versions.c.sha256)
            .select_from(_NAMED_VERSIONS)
            .where(versions.c.sha256.in_(chunk))
            .order_by(vectors.c.name, versions.c.version)
        ):
            out.setdefault(sha, []).append(f"{name}@{version}")
    return out


def hub_records(conn: Connection, version_id: int) -> list[dict[str, Any]]:
    """Every push/pull recorded for one version, oldest first."""
    h = hub_records_table.c
    return [
        {
            "direction": r.direction,
            "endpoint": r.endpoint,
            "repo": r.repo,
            "revision": r.revision,
            "commit_sha": r.commit_sha,
            "path": r.path,
            "created_at": utc(r.created_at),
        }
        for r in conn.execute(select(hub_records_table).where(h.version_id == version_id).order_by(h.id))
    ]


def compositions(conn: Connection) -> list[CompositionRecord]:
    """Every recorded compose run and LoRA export, oldest first."""
    from pvreg.schemas.compose import CompositionRecord

    return [
        CompositionRecord(
            id=r.id,
            created_at=utc(r.created_at),
            method=r.method,
            spec=r.spec,
            base_fingerprint=r.base_fingerprint,
            output_kind=r.output_kind,
            output_path=r.output_path,
            output_fingerprint=r.output_fingerprint,
            result_version_id=r.result_version_id,
            pvreg_version=r.pvreg_version,
            kind=r.kind,
            report=r.report,
        )
        for r in conn.execute(select(compositions_table).order_by(compositions_table.c.id))
    ]


def _evaluation(row: Row[Any], refs: list[str]) -> EvaluationRecord:
    from pvreg.schemas.evaluation import EvaluationRecord

    return EvaluationRecord.model_validate(
        {
            "id": row.id,
            "created_at": utc(row.created_at),
            "key": row.key,
            "target": {
                "kind": row.target_kind,
                "model_fingerprint": row.model_fingerprint,
                "base_fingerprint": row.base_fingerprint,
                "spec": row.spec,
            },
            "eval_sets": row.eval_sets,
            "metrics": row.metrics,
            "scalar_metrics": row.scalar_metrics or {},
            "options": row.options or {},
            "refs": refs,
            "sweep": row.sweep,
            "seconds": row.seconds,
            "pvreg_version": row.pvreg_version,
        }
    )


def _spec_refs(spec: Any) -> list[str]:
    """The resolved refs of a stored spec, in term order (they were resolved to name@version when stored)."""
    terms = spec.get("terms", []) if isinstance(spec, dict) else []
    return [str(t.get("ref")) for t in terms if isinstance(t, dict)]


def evaluations(conn: Connection, *, version_id: int | None = None) -> list[EvaluationRecord]:
    """Stored evaluations, oldest first; with ``version_id`` only those whose composition contains it."""
    e = evaluations_table.c
    query = select(evaluations_table).order_by(e.id)
    if version_id is not None:
        linked = select(evaluation_versions.c.evaluation_id).where(evaluation_versions.c.version_id == version_id)
        query = query.where(e.id.in_(linked))
    return [_evaluation(r, _spec_refs(r.spec)) for r in conn.execute(query)]


def evaluation_by_key(conn: Connection, key: str) -> EvaluationRecord | None:
    """The latest stored evaluation with this key (what a sweep re-run would measure again), if any."""
    e = evaluations_table.c
    row = conn.execute(select(evaluations_table).where(e.key == key).order_by(e.id.desc()).limit(1)).first()
    return None if row is None else _evaluation(row, _spec_refs(row.spec))


def evaluation_count(conn: Connection) -> int:
    """How many evaluations are stored."""
    return int(conn.execute(select(func.count()).select_from(evaluations_table)).scalar_one())
