"""The storage a registry is made of: its settings, database engine, sessions and blob store.

Services (sources, merge, hub) are handed a :class:`Store`, never the
``Registry`` facade: they read through :mod:`~pvreg.registry.storage.catalog`,
write through :mod:`~pvreg.registry.storage.writes` in :meth:`Store.transaction`,
and store blobs with :meth:`Store.store_blob`, which holds gc off from the blob
write to the commit and removes a blob of its own again if the commit fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pvreg.registry.errors import NotFoundError, PvregError
from pvreg.registry.settings import Settings
from pvreg.registry.storage import catalog, db
from pvreg.registry.storage.bases import ResolvedBase, resolve_base
from pvreg.registry.storage.blobstore import BlobStore
from pvreg.registry.storage.writes import NewVersion, insert_version
from pvreg.schemas.vector import BaseModelInfo, VectorMeta

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session, sessionmaker

    from pvreg.registry.sources.ingest import BlobStats, TensorSource
    from pvreg.registry.tensors.fingerprint import FingerprintCache

T = TypeVar("T")


class Store:
    """One registry's database and blob store (see the module docstring)."""

    def __init__(self, settings: Settings, *, access: str = db.RW, read_only: bool = False) -> None:
        self.settings = settings
        # read_only: this process cannot write the registry (read-only mount or permissions);
        # reads work, and writes fail naming the registry instead of the file that refused.
        self.read_only = read_only or access != db.RW
        self.engine = db.make_engine(settings.database_url, access=access)
        self.blobs = BlobStore(settings.blob_dir, settings.gc_lock)
        self._session_factory: sessionmaker[Session] | None = None

    def close(self) -> None:
        self.engine.dispose()

    # --- transactions --------------------------------------------------------------

    @property
    def sessions(self) -> sessionmaker[Session]:
        """ORM sessions for writers, built on first use: readers never import the ORM."""
        if self._session_factory is None:
            self._session_factory = db.sessions(self.engine)
        return self._session_factory

    def read(self) -> contextlib.AbstractContextManager[Connection]:
        """A read-only snapshot connection (never waits for a writer)."""
        return db.read_connection(self.engine)

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retried on genuine contention only."""
        return db.run_transaction(self.sessions, work)

    # --- reading -------------------------------------------------------------------

    def resolve(self, ref: str) -> VectorMeta:
        """The version a reference points at.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError.
        """
        with self.read() as conn:
            return catalog.show(conn, ref)

    def resolve_many(self, refs: Sequence[str]) -> list[VectorMeta | PvregError]:
        """Each reference's version, or the error resolving it raised, in order (one snapshot)."""
        with self.read() as conn:
            return catalog.resolve_many(conn, refs)

    def meta_by_id(self, version_id: int) -> VectorMeta:
        with self.read() as conn:
            return catalog.meta(conn, version_id)

    def all_versions(self) -> list[VectorMeta]:
        with self.read() as conn:
            return catalog.everything(conn)

    def base_info(self, fingerprint: str) -> BaseModelInfo | None:
        with self.read() as conn:
            return catalog.base_info(conn, fingerprint)

    def blob_path(self, ref: str) -> Path:
        """Where the canonical blob of ``ref`` is stored (read-only!).

        Raises:
            NotFoundError: the reference is unknown, or its blob is missing from the store.
        """
        meta = self.resolve(ref)
        path = self.blobs.path(meta.sha256)
        if not path.is_file():
            raise NotFoundError(
                f"{meta.ref}: blob sha256:{meta.sha256[:12]} is missing from the store (run pvreg verify)"
            )
        return path

    # --- bases ---------------------------------------------------------------------

    @property
    def fingerprint_cache(self) -> FingerprintCache:
        from pvreg.registry.tensors.fingerprint import FingerprintCache

        return FingerprintCache(self.settings.cache_dir / "fingerprints")

    def resolve_base(self, base: str | os.PathLike[str]) -> ResolvedBase:
        """See :func:`pvreg.registry.storage.bases.resolve_base`."""
        return resolve_base(self, base)

    # --- writing -------------------------------------------------------------------

    def store_blob(
        self,
        source: TensorSource,
        new: NewVersion,
        *,
        progress: Callable[[int], None] | None = None,
        expect_sha256: str | None = None,
        after: Callable[[BlobStats], None] | None = None,
        factors: Callable[[], TensorSource] | None = None,
    ) -> VectorMeta:
        """Write the blob and insert its version, holding gc off in between.

        ``factors`` (LoRA-sourced vectors) gives the source of a second blob, the exact
        LoRA factors, written after the vector under the same lock and referenced
        from the version (``factors_sha256``).

        If anything fails after this call published a new blob (the version
        insert hit a full disk, say), the blob is removed again when no version
        references it, so a failed command leaves the store as it found it.
        """
        from pvreg.registry.sources.ingest import write_blob

        created: list[str] = []
        try:
            with self.blobs.writer_lock():
                new.stats = write_blob(source, self.blobs, progress=progress, expect_sha256=expect_sha256)
                if new.stats.created:
                    created.append(new.stats.sha256)
                if after is not None:
                    after(new.stats)
                if factors is not None:
                    stored = write_blob(factors(), self.blobs)
                    if stored.created:
                        created.append(stored.sha256)
                    new.factors_sha256 = stored.sha256
                return self.commit_version(new)
        except BaseException:
            for sha in created:
                self.drop_if_unreferenced(sha)
            raise

    def drop_if_unreferenced(self, sha256: str) -> None:
        """Delete a blob this command published if, after all, no version references it.

        Same discipline as gc: the exclusive lock is taken only after our shared
        one is released (flock would deadlock against our own shared lock), so
        every concurrent writer has either committed — a writer that found our
        blob already in place and reused it holds the shared lock until its row
        is in, and then the blob is referenced and stays — or not yet looked for
        the blob, and then it writes the blob afresh.  Best effort: when even
        the check fails (the database is unreachable), the blob stays for gc.
        """
        # Suppressed: the original failure is what the user must see.
        with contextlib.suppress(Exception), self.blobs.gc_lock():
            with self.read() as conn:
                if catalog.blob_referenced(conn, sha256):
                    return
            self.blobs.delete(sha256)

    def commit_version(self, new: NewVersion) -> VectorMeta:
        """Insert a version for a blob already in the store (one transaction, retried).

        With ``new.dedupe`` an existing version of the same name with the same
        sha256 is returned instead of creating another.
        """
        version_id, _ = self.transaction(lambda s: insert_version(s, new))
        return self.meta_by_id(version_id)


class StoreFacade:
    """Base of the ``Registry`` facade and of its per-area parts (``merge.ops``, ``hub.ops``, ...).

    Each area keeps its public operations next to its code, as a mixin that reaches
    storage only through ``self.store``; ``Registry`` combines them, so the facade
    stays one typed class without one module growing with every feature.
    """

    store: Store

    @property
    def settings(self) -> Settings:
        return self.store.settings

    @property
    def blobs(self) -> BlobStore:
        return self.store.blobs

    @property
    def read_only(self) -> bool:
        return self.store.read_only
