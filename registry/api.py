"""The ``Registry`` service: every pvreg operation, for the CLI and for Python users.

It takes and returns ``pvreg.schemas`` models, never ORM rows, and raises only
``PvregError`` subclasses for expected failures.  Storage sits below it: the
database (``db``/``models``), the blob store, and tensor I/O.  Heavy modules
(torch, alembic, huggingface_hub) load inside the operations that need them,
so read-only commands stay fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry import catalog, db, environment
from pvreg.registry.blobstore import BlobStore
from pvreg.registry.errors import (
    AmbiguousReferenceError,
    BaseMismatchError,
    InvalidNameError,
    InvalidVectorError,
    NotFoundError,
    OutputExistsError,
    PvregError,
    UserError,
)
from pvreg.registry.refs import HEX64_RE, check_alias, check_name
from pvreg.registry.settings import Settings
from pvreg.schemas import (
    BaseModelInfo,
    GcReport,
    ListEntry,
    ParentRef,
    VectorMeta,
    VerifyReport,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from pvreg.registry.models import Version
    from pvreg.registry.compose import ComposeResult, CompositionRecord
    from pvreg.registry.fingerprint import FingerprintCache
    from pvreg.schemas.compose import ComposeSpec
    from pvreg.registry.ingest import BlobStats, TensorSource
    from pvreg.registry.tensorio import TensorInfo

FP_PREFIX_RE = re.compile(r"[0-9a-f]{8,64}")


@dataclass
class ResolvedBase:
    """A base model as given on the command line, resolved to a fingerprint."""

    fingerprint: str
    infos: "Mapping[str, TensorInfo] | None" = None
    facts: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@dataclass
class NewVersion:
    """Everything needed to insert a version once its blob is stored."""

    name: str
    stats: "BlobStats"
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

    def __post_init__(self) -> None:
        # The one gate for a version's text, whatever its source (command line, Python API,
        # an exported file, a Hub repo, compose --register): it runs before the blob is
        # written and before any row, so a bad field leaves the registry untouched.
        from pvreg.registry.text import check_version_text

        check_version_text(self.name, dataset=self.dataset, tags=self.tags, description=self.description,
                           message=self.message, parents=self.parents)


def parse_tags(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings to a dict; a malformed pair is a user error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or len(key) > 128:
            raise UserError(f"invalid tag {pair!r}: expected KEY=VALUE with a key of 1-128 characters")
        tags[key.strip()] = value
    return tags


def _check_sign(sign: int) -> int:
    if sign not in (1, -1):
        raise UserError(f"invalid sign {sign!r}: must be 1 or -1")
    return sign


@environment.guarded
class Registry:
    """A preference-vector registry: metadata database plus blob store.

    Open one with :meth:`open`; it is a context manager that disposes of its
    database connections on exit.  Every public method reports a full disk,
    a read-only file or an unreachable database as a one-line
    :class:`~pvreg.registry.errors.StorageError` (see :mod:`pvreg.registry.environment`).
    """

    def __init__(self, settings: Settings, *, access: str = db.RW, read_only: bool = False) -> None:
        self.settings = settings
        # read_only: this process cannot write the registry (read-only mount or permissions);
        # reads work, and writes fail naming the registry instead of the file that refused.
        self.read_only = read_only or access != db.RW
        self.engine = db.make_engine(settings.database_url, access=access)
        self.blobs = BlobStore(settings.blob_dir)
        self._session_factory: "sessionmaker[Session] | None" = None

    @property
    def _sessions(self) -> "sessionmaker[Session]":
        """ORM sessions for writers, built on first use: readers go through
        :mod:`pvreg.registry.catalog` and never import the ORM."""
        if self._session_factory is None:
            self._session_factory = db.sessions(self.engine)
        return self._session_factory

    # --- lifecycle -----------------------------------------------------------

    @classmethod
    def open(
        cls, location: str | os.PathLike[str] | None = None, *, upgrade: bool = True, adopt_blobs: bool = False
    ) -> "Registry":
        """Open (creating if needed) the registry at ``location``.

        A registry this process cannot write (a read-only mount, a directory
        or database file without write permission) opens read-only: reading
        works, and every write fails with one line naming the registry.

        Args:
            location: a registry directory or a SQLAlchemy database URL; default
                ``PVREG_HOME`` or the platform data directory.
            upgrade: migrate an older schema (after backing up a SQLite file).
            adopt_blobs: initialise an empty or missing database even though
                the blob store holds blobs (``pvreg db init --adopt-blobs``):
                the recovery when the database is known to be lost for good.

        Raises:
            RegistryPathError: ``location`` is, or lies under, a regular file.
            LostDatabaseError: the database is empty or missing but the blob
                store holds blobs (and ``adopt_blobs`` is false).
            DatabaseVersionError: the database is newer than this pvreg, or a
                migration failed (the original database stays usable).
            StorageError: the environment refused (disk full, permissions, an
                unreachable database server, ...).
        """
        settings = Settings.resolve(location)
        settings.check_home()
        with environment.guard(home=settings.home, database=environment.database_label(settings.database_url),
                               op="open"):
            settings.home.mkdir(parents=True, exist_ok=True)
            path = settings.sqlite_path
            access = db.sqlite_access(path) if path is not None else db.RW
            read_only = access != db.RW or not os.access(settings.home, os.W_OK)
            reg = cls(settings, access=access, read_only=read_only)
            try:
                if not read_only:
                    reg.blobs.ensure()
                    (settings.home / "pending").mkdir(exist_ok=True)  # compose staging markers (compose.staging)
                if upgrade:
                    db.ensure_current(reg.engine, settings, adopt_blobs=adopt_blobs, read_only=read_only)
            except BaseException:
                reg.close()
                raise
        return reg

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def db_current(self) -> str | None:
        """The schema revision the database is at."""
        return db.current_revision(self.engine)

    def db_upgrade(self) -> tuple[str | None, str | None, Path | None]:
        """Upgrade the schema to this pvreg's head; returns (from, to, backup path)."""
        return db.upgrade(self.engine, self.settings)

    @property
    def fingerprint_cache(self) -> "FingerprintCache":
        from pvreg.registry.fingerprint import FingerprintCache

        return FingerprintCache(self.settings.cache_dir / "fingerprints")

    # --- bases ---------------------------------------------------------------

    def fingerprint(self, path: str | os.PathLike[str]) -> str:
        """Canonical fingerprint of a model (directory, shards, file or ``.bin``)."""
        from pvreg.registry.fingerprint import fingerprint_path

        return fingerprint_path(path, self.fingerprint_cache)

    def resolve_base(self, base: str | os.PathLike[str]) -> ResolvedBase:
        """A base given as a path (fingerprinted, shapes known) or a fingerprint (prefix).

        Raises:
            NotFoundError: neither an existing path nor a known fingerprint.
            AmbiguousReferenceError: a fingerprint prefix matches several bases.
        """
        from pvreg.registry.fingerprint import fingerprint_checkpoint
        from pvreg.registry.ingest import base_config_facts
        from pvreg.registry.tensorio import open_checkpoint

        text = os.fspath(base)
        path = Path(text).expanduser()
        if path.exists():
            with open_checkpoint(path) as ckpt:
                fp = fingerprint_checkpoint(ckpt, self.fingerprint_cache)
                directory = ckpt.directory
                facts: dict[str, Any] = {
                    "label": (directory or path).name,
                    "num_tensors": len(ckpt.infos),
                    "num_params": ckpt.num_params,
                    "local_path": str(path.resolve()),
                    **base_config_facts(directory),
                }
                return ResolvedBase(fp, dict(ckpt.infos), facts, path.resolve())
        lowered = text.lower().removeprefix("sha256:")
        if FP_PREFIX_RE.fullmatch(lowered):
            with db.read_connection(self.engine) as conn:
                rows = catalog.bases(conn, prefix=lowered)
            if len(rows) > 1:
                raise AmbiguousReferenceError(f"base fingerprint prefix {text!r} matches {len(rows)} bases")
            if rows:
                row = rows[0]
                if row.local_path and Path(row.local_path).exists():
                    resolved = self.resolve_base(row.local_path)
                    if resolved.fingerprint == row.fingerprint:
                        return resolved
                return ResolvedBase(row.fingerprint)
            if HEX64_RE.fullmatch(lowered):
                return ResolvedBase(lowered)
            raise NotFoundError(f"base {text!r}: no such path, and no known base fingerprint starts with it")
        raise NotFoundError(f"base {text!r}: no such file or directory")

    def bases(self) -> list[BaseModelInfo]:
        with db.read_connection(self.engine) as conn:
            return catalog.bases(conn)

    def base_info(self, fingerprint: str) -> BaseModelInfo | None:
        with db.read_connection(self.engine) as conn:
            return catalog.base_info(conn, fingerprint)

    # --- adding ----------------------------------------------------------------

    def add(
        self,
        name: str | None,
        vector: str | os.PathLike[str] | None = None,
        *,
        base: str | os.PathLike[str] | None = None,
        positive: str | os.PathLike[str] | None = None,
        negative: str | os.PathLike[str] | None = None,
        finetuned: str | os.PathLike[str] | None = None,
        lora: str | os.PathLike[str] | None = None,
        dataset: str | None = None,
        sign: int | None = None,
        description: str | None = None,
        message: str | None = None,
        tags: Mapping[str, str] | None = None,
        dtype: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> VectorMeta:
        """Validate a vector and store it as the next version of ``name``.

        Exactly one source is given: ``vector`` (a delta file; an exported pvreg
        file restores its metadata, so ``name`` and ``base`` may then be
        omitted), ``positive``+``negative`` (φ = θ+ − θ−), ``finetuned``
        (φ = θft − θbase), or ``lora`` (a PEFT adapter's dense ΔW).

        Raises:
            InvalidNameError, NotFoundError, InvalidTensorFileError,
            InvalidVectorError, BaseMismatchError, UnsupportedAdapterError.
        """
        sources = {
            "vector": vector is not None,
            "positive/negative": positive is not None or negative is not None,
            "finetuned": finetuned is not None,
            "lora": lora is not None and positive is None,
        }
        chosen = [k for k, v in sources.items() if v]
        if len(chosen) != 1:
            raise UserError(
                "give exactly one source: --vector FILE, --positive DIR --negative DIR, "
                "--finetuned DIR or --lora DIR"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        if name is not None:
            check_name(name)
        tag_map = dict(tags or {})
        if sign is not None:
            _check_sign(sign)
        if vector is not None:
            return self._add_file(
                name, Path(vector), base=base, dataset=dataset, sign=sign, description=description,
                message=message, tags=tag_map, progress=progress,
            )
        from pvreg.registry import extract

        if name is None:
            raise InvalidNameError("a vector name is required")
        if base is None:
            raise UserError("--base is required to build a vector from checkpoints")
        resolved = self.resolve_base(base)
        made = extract.build_source(
            resolved, positive=positive, negative=negative, finetuned=finetuned, lora=lora,
            dtype=dtype, cache=self.fingerprint_cache,
        )
        return self._store(
            made.source,
            NewVersion(
                name=name, stats=None, base=resolved, kind=made.kind,  # type: ignore[arg-type]
                dataset=dataset, sign=sign or 1, description=description, message=message,
                tags=tag_map, provenance=made.provenance,
            ),
            progress=progress,
            after=made.finish,
        )

    def _add_file(
        self,
        name: str | None,
        path: Path,
        *,
        base: str | os.PathLike[str] | None,
        dataset: str | None,
        sign: int | None,
        description: str | None,
        message: str | None,
        tags: dict[str, str],
        progress: Callable[[int], None] | None,
    ) -> VectorMeta:
        from pvreg.registry.ingest import CheckpointSource, check_plan
        from pvreg.registry.tensorio import open_checkpoint

        with open_checkpoint(path) as ckpt:
            embedded = _embedded_meta(str(path), ckpt.metadata)
            if name is None:
                if embedded is None:
                    raise InvalidNameError("a vector name is required (the file carries no pvreg metadata)")
                name = embedded.name
            if base is None:
                if embedded is None:
                    raise UserError("--base is required (the file carries no pvreg metadata)")
                base = embedded.base_fingerprint
            resolved = self.resolve_base(base)
            if embedded is not None and embedded.base_fingerprint != resolved.fingerprint:
                raise BaseMismatchError(
                    f"{path}: was made for base {embedded.base_fingerprint[:16]} "
                    f"but --base has fingerprint {resolved.fingerprint[:16]}"
                )
            source = CheckpointSource(ckpt, str(path))
            check_plan(source.plan(), str(path), resolved.infos)
            e = embedded
            new = NewVersion(
                name=name,
                stats=None,  # type: ignore[arg-type]
                base=resolved,
                kind=e.kind if e else "file",
                dataset=dataset if dataset is not None else (e.dataset if e else None),
                sign=sign if sign is not None else (e.sign if e else 1),
                description=description if description is not None else (e.description if e else None),
                message=message if message is not None else (e.message if e else None),
                tags={**(e.tags if e else {}), **tags},
                provenance=(
                    {**e.provenance, "restored_from": {"ref": e.ref, "path": str(path.resolve())}}
                    if e
                    else {"source": "file", "path": str(path.resolve())}
                ),
                parents=list(e.parents) if e else [],
            )
            return self._store(
                source, new, progress=progress, expect_sha256=e.sha256 if e else None
            )

    def _store(
        self,
        source: "TensorSource",
        new: NewVersion,
        *,
        progress: Callable[[int], None] | None = None,
        expect_sha256: str | None = None,
        after: Callable[["BlobStats"], None] | None = None,
    ) -> VectorMeta:
        """Write the blob and insert its version, holding gc off in between.

        If anything fails after this call published a new blob (the version
        insert hit a full disk, say), the blob is removed again when no version
        references it, so a failed command leaves the store as it found it.
        """
        from pvreg.registry.ingest import write_blob

        created: str | None = None
        try:
            with self.blobs.writer_lock():
                new.stats = write_blob(source, self.blobs, progress=progress, expect_sha256=expect_sha256)
                created = new.stats.sha256 if new.stats.created else None
                if after is not None:
                    after(new.stats)
                return self.commit_version(new)
        except BaseException:
            if created is not None:
                self._drop_if_unreferenced(created)
            raise

    def _drop_if_unreferenced(self, sha256: str) -> None:
        """Delete a blob this command published if, after all, no version references it.

        Same discipline as gc: the exclusive lock is taken only after our shared
        one is released (flock would deadlock against our own shared lock), so
        every concurrent writer has either committed — a writer that found our
        blob already in place and reused it holds the shared lock until its row
        is in, and then the blob is referenced and stays — or not yet looked for
        the blob, and then it writes the blob afresh.  Best effort: when even
        the check fails (the database is unreachable), the blob stays for gc.
        """
        try:
            with self.blobs.gc_lock():
                with db.read_connection(self.engine) as conn:
                    if catalog.refs_by_blob(conn, [sha256]).get(sha256):
                        return
                self.blobs.delete(sha256)
        except Exception:  # the original failure is what the user must see
            pass

    def commit_version(self, new: NewVersion) -> VectorMeta:
        """Insert a version for a blob already in the store (one transaction, retried).

        With ``new.dedupe`` an existing version of the same name with the same
        sha256 is returned instead of creating another.
        """
        version_id, _ = db.run_transaction(self._sessions, lambda s: insert_version(s, new))
        return self._meta_by_id(version_id)

    # --- reading ---------------------------------------------------------------

    def resolve(self, ref: str) -> VectorMeta:
        """The version a reference points at.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError.
        """
        with db.read_connection(self.engine) as conn:
            return catalog.show(conn, ref)

    show = resolve

    def resolve_many(self, refs: Sequence[str]) -> "list[VectorMeta | PvregError]":
        """Each reference's version, or the error resolving it raised, in order (one read transaction)."""
        with db.read_connection(self.engine) as conn:
            return catalog.resolve_many(conn, refs)

    def _meta_by_id(self, version_id: int) -> VectorMeta:
        with db.read_connection(self.engine) as conn:
            return catalog.meta(conn, version_id)

    def list(self) -> list[ListEntry]:
        """The latest version of every name (latest active one when there is one), by name."""
        with db.read_connection(self.engine) as conn:
            return catalog.latest(conn)

    def log(self, name: str) -> list[VectorMeta]:
        """All versions of ``name``, newest first."""
        check_name(name)
        with db.read_connection(self.engine) as conn:
            return catalog.history(conn, name)

    def blob_path(self, ref: str) -> Path:
        """Where the canonical blob of ``ref`` is stored (read-only!)."""
        meta = self.resolve(ref)
        path = self.blobs.path(meta.sha256)
        if not path.is_file():
            raise NotFoundError(f"{meta.ref}: blob sha256:{meta.sha256[:12]} is missing from the store (run pvreg verify)")
        return path

    # --- changing metadata --------------------------------------------------------

    def tag(self, ref: str, alias: str) -> VectorMeta:
        """Point ``alias`` of the referenced vector at this version (moving it if set)."""
        from pvreg.registry.models import Alias

        check_alias(alias)

        def work(s: Session) -> int:
            row = _resolve_row(s, ref)
            existing = s.get(Alias, (row.vector_id, alias))
            if existing is None:
                s.add(Alias(vector_id=row.vector_id, alias=alias, version_id=row.id))
            else:
                existing.version_id = row.id
            return row.id

        return self._meta_by_id(db.run_transaction(self._sessions, work))

    def untag(self, name: str, alias: str) -> None:
        from sqlalchemy import select

        from pvreg.registry.models import Alias, Vector

        check_name(name)
        check_name(alias, what="alias")

        def work(s: Session) -> None:
            vec = s.scalar(select(Vector).where(Vector.name == name))
            row = s.get(Alias, (vec.id, alias)) if vec else None
            if row is None:
                raise NotFoundError(f"{name} has no alias {alias!r}")
            s.delete(row)

        db.run_transaction(self._sessions, work)

    def deprecate(self, ref: str) -> VectorMeta:
        """Mark a version deprecated: bare ``NAME`` no longer resolves to it."""

        def work(s: Session) -> int:
            row = _resolve_row(s, ref)
            row.state = "deprecated"
            return row.id

        return self._meta_by_id(db.run_transaction(self._sessions, work))

    def rm(self, ref: str) -> VectorMeta:
        """Remove a version's metadata; its blob stays until ``gc`` finds it unreferenced."""
        from sqlalchemy import func, select

        from pvreg.registry.models import Vector, Version

        def work(s: Session) -> VectorMeta:
            row = _resolve_row(s, ref)
            meta = catalog.meta(s.connection(), row.id)
            vector_id = row.vector_id
            s.delete(row)
            s.flush()
            remaining = s.scalar(select(func.count()).select_from(Version).where(Version.vector_id == vector_id))
            if not remaining:
                s.delete(s.get(Vector, vector_id))
            return meta

        return db.run_transaction(self._sessions, work)

    # --- maintenance ------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, all_unreferenced: bool = False) -> GcReport:
        """Delete unreferenced blobs and the leftovers of dead writers (see :mod:`pvreg.registry.gc`).

        When the database lists no versions at all, deleting every blob is
        refused unless ``all_unreferenced`` (a lost or replaced database looks
        exactly like that); ``dry_run`` still reports what would go.

        Raises:
            UnsafeGcError: no versions, blobs present, and neither flag given.
        """
        from pvreg.registry.gc import collect

        def referenced() -> set[str]:
            with db.read_connection(self.engine) as conn:
                return catalog.referenced_blobs(conn)

        return collect(self.blobs, self.settings.home / "pending", referenced, dry_run=dry_run,
                       all_unreferenced=all_unreferenced, database=db.where(self.settings))

    def verify(self, ref: str | None = None) -> VerifyReport:
        """Re-hash blobs and recompute norms; report every mismatch (never raises for them)."""
        from pvreg.registry.verify import verify_versions

        metas = [self.resolve(ref)] if ref is not None else self._all_versions()
        return verify_versions(metas, self.blobs)

    def _all_versions(self) -> list[VectorMeta]:
        with db.read_connection(self.engine) as conn:
            return catalog.everything(conn)

    def export(self, ref: str, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the blob with its ``VectorMeta`` embedded in ``__metadata__['pvreg']``.

        Raises:
            OutputExistsError: ``path`` exists and ``force`` is false.
        """
        from pvreg.registry.export import write_exported

        from pvreg.registry.outputs import check_output, registry_paths

        meta = self.resolve(ref)
        out = Path(path)
        blob = self.blob_path(meta.ref)
        check_output(out, registry_paths(self.settings))
        if (out.exists() or out.is_symlink()) and not force:
            raise OutputExistsError(f"{out}: already exists (use --force to overwrite)")
        if out.is_dir():
            raise OutputExistsError(f"{out}: is a directory")
        try:
            write_exported(blob, meta, out, overwrite=force)
        except FileExistsError:
            raise OutputExistsError(f"{out}: was created while the export was written; left alone "
                                    "(use --force to overwrite)") from None
        return out

    # --- composing (implemented in compose.py / apply.py) --------------------------

    def compose(self, spec: "ComposeSpec | str | Sequence[str]", **options: Any) -> "ComposeResult":
        """Merge registered vectors into a base model (or into one vector).

        See :func:`pvreg.registry.compose.compose` for the options.
        """
        from pvreg.registry.compose import compose

        return compose(self, spec, **options)

    def compositions(self) -> "list[CompositionRecord]":
        """Every recorded compose run, oldest first."""
        from pvreg.registry.compose import list_compositions

        return list_compositions(self)

    def apply(self, model: Any, spec: "ComposeSpec | str | Sequence[str]", **options: Any) -> Any:
        """Add a composed delta into a loaded ``torch.nn.Module`` in place.

        The return value is also a context manager that restores the original
        parameters bit-exactly on exit.  See :mod:`pvreg.registry.apply`.
        """
        from pvreg.registry.apply import apply

        return apply(self, model, spec, **options)

    # --- Hub (implemented in hub.py) ------------------------------------------------

    def push(self, refs: Sequence[str], repo: str, **options: Any) -> Any:
        """Publish versions to a Hugging Face Hub model repo in one commit."""
        from pvreg.registry.hub import push

        return push(self, refs, repo, **options)

    def pull(self, repo: str, **options: Any) -> Any:
        """Download vectors from a Hub repo, verify them, and register them."""
        from pvreg.registry.hub import pull

        return pull(self, repo, **options)

    def remote_ls(self, repo: str, **options: Any) -> Any:
        """List the vectors in a Hub repo without downloading blobs."""
        from pvreg.registry.hub import remote_ls

        return remote_ls(self, repo, **options)


def insert_version(s: "Session", new: NewVersion) -> tuple[int, bool]:
    """Insert ``new`` inside the caller's transaction: (version id, whether a row was created).

    With ``new.dedupe`` an existing version of the same name with the same sha256 is
    returned (created False).  :meth:`Registry.commit_version` runs it in a transaction of
    its own; ``pull`` runs one per vector in a single transaction (all or nothing).
    """
    from sqlalchemy import func, select

    from pvreg.registry.models import BaseModelRow, Vector, Version, VersionParent, VersionTag

    stats = new.stats
    vec = s.scalar(select(Vector).where(Vector.name == new.name))
    if vec is None:
        vec = Vector(name=new.name, description=new.description)
        s.add(vec)
        s.flush()
    elif new.description is not None:
        vec.description = new.description
    if new.dedupe:
        existing = s.scalar(
            select(Version.id).where(Version.vector_id == vec.id, Version.sha256 == stats.sha256)
        )
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
    )
    s.add(row)
    s.flush()
    for pos, p in enumerate(new.parents):
        s.add(VersionParent(version_id=row.id, position=pos, parent_ref=p.ref,
                            parent_sha256=p.sha256, coefficient=p.coefficient))
    for k, v in sorted(new.tags.items()):
        s.add(VersionTag(version_id=row.id, key=k, value=v))
    return row.id, True


def _resolve_row(s: Session, ref: str) -> Version:
    """The ORM row ``ref`` names, resolved inside the writer's own transaction."""
    from pvreg.registry.models import Version

    row = s.get(Version, catalog.resolve_id(s.connection(), ref))
    if row is None:  # pragma: no cover - same transaction as the resolve
        raise NotFoundError(f"unknown reference {ref!r}")
    return row


def _embedded_meta(label: str, metadata: Mapping[str, str]) -> VectorMeta | None:
    """The ``VectorMeta`` a pvreg export carries in its header, or None for a plain file.

    It comes from outside (a file anyone can forge), so besides the schema every text
    field is held to the same rules as local input before any of it is used; errors
    name ``label`` (the file, or the Hub path it was downloaded from).
    """
    raw = metadata.get("pvreg")
    if raw is None:
        return None
    from pydantic import ValidationError

    from pvreg.registry.errors import PvregError
    from pvreg.registry.text import check_version_text

    try:
        meta = VectorMeta.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidVectorError(f"{label}: embedded pvreg metadata is invalid at {where or 'top level'}: {first.get('msg')}") from None
    try:
        check_version_text(meta.name, dataset=meta.dataset, tags=meta.tags, description=meta.description,
                           message=meta.message, parents=meta.parents, aliases=meta.aliases)
    except PvregError as exc:
        raise type(exc)(f"{label}: embedded pvreg metadata: {exc}") from None
    return meta
