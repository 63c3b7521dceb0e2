"""The ``Registry`` facade: every pvreg operation, for the CLI and for Python users.

It takes and returns ``pvreg.schemas`` models, never ORM rows, raises only
``PvregError`` subclasses for expected failures, and delegates: storage
(:mod:`pvreg.registry.storage`), vector sources (:mod:`pvreg.registry.sources`),
merging (:mod:`pvreg.registry.merge`) and the Hub (:mod:`pvreg.registry.hub.client`)
receive its :class:`~pvreg.registry.storage.store.Store`, never the facade.
Heavy modules (torch, alembic, huggingface_hub) load inside the operations that
need them, so read-only commands stay fast.

The class is assembled from per-area parts: this module holds the lifecycle, adding
and the catalogue; each area's operations live next to its code as a
:class:`~pvreg.registry.storage.store.StoreFacade` mixin (``merge.ops``, ``hub.ops``,
``training.ops``, ...), so one typed class serves every caller.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from pvreg.registry.evaluation.compare_ops import ComparisonOps
from pvreg.registry.evaluation.ops import EvaluationOps
from pvreg.registry.hub.ops import HubOps
from pvreg.registry.merge.ops import MergeOps
from pvreg.registry.refs import check_alias, check_name
from pvreg.registry.settings import Settings
from pvreg.registry.storage import catalog, db, environment, writes
from pvreg.registry.storage.bases import ResolvedBase
from pvreg.registry.storage.store import Store
from pvreg.registry.training.ops import TrainingOps
from pvreg.schemas.vector import (
    BaseModelInfo,
    GcReport,
    ListEntry,
    VectorMeta,
    VerifyReport,
)


@environment.guarded
class Registry(MergeOps, HubOps, TrainingOps, EvaluationOps, ComparisonOps):
    """A preference-vector registry: metadata database plus blob store.

    Open one with :meth:`open`; it is a context manager that disposes of its
    database connections on exit.  Every public method reports a full disk,
    a read-only file or an unreachable database as a one-line
    :class:`~pvreg.registry.errors.StorageError` (see :mod:`pvreg.registry.storage.environment`).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- lifecycle -----------------------------------------------------------

    @classmethod
    def open(
        cls, location: str | os.PathLike[str] | None = None, *, upgrade: bool = True, adopt_blobs: bool = False
    ) -> Registry:
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
        with environment.guard(
            home=settings.home, database=environment.database_label(settings.database_url), op="open"
        ):
            settings.home.mkdir(parents=True, exist_ok=True)
            path = settings.sqlite_path
            access = db.sqlite_access(path) if path is not None else db.RW
            read_only = access != db.RW or not os.access(settings.home, os.W_OK)
            store = Store(settings, access=access, read_only=read_only)
            try:
                if not read_only:
                    store.blobs.ensure()
                    settings.pending_dir.mkdir(exist_ok=True)
                if upgrade:
                    db.ensure_current(store.engine, settings, adopt_blobs=adopt_blobs, read_only=read_only)
            except BaseException:
                store.close()
                raise
        return cls(store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def db_current(self) -> str | None:
        """The schema revision the database is at (None for an empty database)."""
        return db.current_revision(self.store.engine)

    def db_upgrade(self) -> tuple[str | None, str | None, Path | None]:
        """Upgrade the schema to this pvreg's head; returns (from, to, backup path).

        Raises:
            DatabaseVersionError: the migration failed (the original database stays usable).
        """
        return db.upgrade(self.store.engine, self.settings)

    # --- bases ---------------------------------------------------------------

    def fingerprint(self, path: str | os.PathLike[str]) -> str:
        """Canonical fingerprint of a model (directory, shards, file or ``.bin``).

        Raises:
            NotFoundError, InvalidTensorFileError: the path is missing or not a checkpoint.
        """
        from pvreg.registry.tensors.fingerprint import fingerprint_path

        return fingerprint_path(path, self.store.fingerprint_cache)

    def resolve_base(self, base: str | os.PathLike[str]) -> ResolvedBase:
        """A base given as a path (fingerprinted, shapes known) or a fingerprint (prefix).

        Raises:
            NotFoundError: neither an existing path nor a known fingerprint.
            AmbiguousReferenceError: a fingerprint prefix matches several bases.
        """
        return self.store.resolve_base(base)

    def bases(self) -> builtins.list[BaseModelInfo]:
        """Every base model the registry has seen."""
        with self.store.read() as conn:
            return catalog.bases(conn)

    def base_info(self, fingerprint: str) -> BaseModelInfo | None:
        """What the registry knows of the base with this exact fingerprint."""
        return self.store.base_info(fingerprint)

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
            InvalidNameError, InvalidTextError, NotFoundError, InvalidTensorFileError,
            InvalidVectorError, BaseMismatchError, UnsupportedAdapterError, InvalidOptionError.
        """
        from pvreg.registry.sources.adding import add

        return add(
            self.store,
            name,
            vector,
            base=base,
            positive=positive,
            negative=negative,
            finetuned=finetuned,
            lora=lora,
            dataset=dataset,
            sign=sign,
            description=description,
            message=message,
            tags=dict(tags or {}),
            dtype=dtype,
            progress=progress,
        )

    # --- reading ---------------------------------------------------------------

    def resolve(self, ref: str) -> VectorMeta:
        """The version a reference points at.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError.
        """
        return self.store.resolve(ref)

    show = resolve

    def list(self) -> builtins.list[ListEntry]:
        """The latest version of every name (latest active one when there is one), by name."""
        with self.store.read() as conn:
            return catalog.latest(conn)

    def log(self, name: str) -> builtins.list[VectorMeta]:
        """All versions of ``name``, newest first.

        Raises:
            InvalidNameError, NotFoundError.
        """
        check_name(name)
        with self.store.read() as conn:
            return catalog.history(conn, name)

    def blob_path(self, ref: str) -> Path:
        """Where the canonical blob of ``ref`` is stored (read-only!).

        Raises:
            NotFoundError: unknown reference, or its blob is missing from the store.
        """
        return self.store.blob_path(ref)

    # --- changing metadata --------------------------------------------------------

    def tag(self, ref: str, alias: str) -> VectorMeta:
        """Point ``alias`` of the referenced vector at this version (moving it if set).

        Raises:
            InvalidNameError: a bad alias; NotFoundError etc. for the reference.
        """
        check_alias(alias)
        return self.store.meta_by_id(self.store.transaction(lambda s: writes.set_alias(s, ref, alias)))

    def untag(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``.

        Raises:
            InvalidNameError, NotFoundError: the name has no such alias.
        """
        check_name(name)
        check_name(alias, what="alias")
        self.store.transaction(lambda s: writes.remove_alias(s, name, alias))

    def deprecate(self, ref: str) -> VectorMeta:
        """Mark a version deprecated: bare ``NAME`` no longer resolves to it.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError: for ``ref``.
        """
        return self.store.meta_by_id(self.store.transaction(lambda s: writes.deprecate(s, ref)))

    def rm(self, ref: str) -> VectorMeta:
        """Remove a version's metadata; its blob stays until ``gc`` finds it unreferenced.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError: for ``ref``.
        """
        return self.store.transaction(lambda s: writes.remove_version(s, ref))

    # --- maintenance ------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, all_unreferenced: bool = False) -> GcReport:
        """Delete unreferenced blobs and the leftovers of dead writers (see :mod:`pvreg.registry.storage.gc`).

        When the database lists no versions at all, deleting every blob is
        refused unless ``all_unreferenced`` (a lost or replaced database looks
        exactly like that); ``dry_run`` still reports what would go.

        Raises:
            UnsafeGcError: no versions, blobs present, and neither flag given.
        """
        from pvreg.registry.storage.gc import collect

        def referenced() -> set[str]:
            with self.store.read() as conn:
                return catalog.referenced_blobs(conn)

        return collect(
            self.blobs,
            self.settings.pending_dir,
            referenced,
            dry_run=dry_run,
            all_unreferenced=all_unreferenced,
            database=db.where(self.settings),
            temp_dirs=[self.settings.cache_dir],
        )

    def verify(self, ref: str | None = None) -> VerifyReport:
        """Re-hash blobs and recompute norms; report every mismatch (raises only for a bad ``ref``)."""
        from pvreg.registry.storage.verify import verify_versions

        metas = [self.resolve(ref)] if ref is not None else self.store.all_versions()
        return verify_versions(metas, self.blobs)

    def export(self, ref: str, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the blob with its ``VectorMeta`` embedded in ``__metadata__['pvreg']``.

        Raises:
            UnsafeOutputError: ``path`` is, contains or lies inside the registry.
            OutputExistsError: ``path`` exists (or appears meanwhile) and ``force`` is false.
        """
        from pvreg.registry.sources.exported import export

        return export(self.store, ref, Path(path), force=force)
