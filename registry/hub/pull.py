"""``pull`` and ``remote ls``: download through the huggingface_hub cache, verify, register all or nothing.

The Hub client does not verify what it downloads, so pvreg does: each blob is
re-canonicalised in a private staging store and must match ``pvreg.json`` and
the metadata embedded in the file; every version row is inserted in one
transaction, and the verified blobs are moved into the store only then.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import (
    BaseMismatchError,
    HubNotFoundError,
    IntegrityError,
    InvalidNameError,
    InvalidTextError,
    PvregError,
    UserError,
    opt,
)
from pvreg.registry.hub.client import (
    DEFAULT_REVISION,
    Call,
    hf_module,
    mapped_errors,
    parse_repo,
    progress_bars,
    public_url,
    resolve_endpoint,
)
from pvreg.registry.hub.layout import (
    BLOB_FILE,
    FACTORS_FILE,
    META_FILE,
    MUST_AGREE,
    parse_vector_file,
    vector_dirs,
)
from pvreg.registry.refs import check_name
from pvreg.registry.sources.ingest import BlobStats
from pvreg.registry.storage import catalog, writes
from pvreg.registry.storage.bases import ResolvedBase
from pvreg.registry.storage.blobstore import BlobStore
from pvreg.schemas.hub import (
    HubBaseInfo,
    HubVectorFile,
    PulledVector,
    PullResult,
    RemoteListing,
    RemoteVector,
)
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store


@dataclass
class _Checked:
    remote_name: str
    declared: HubVectorFile
    embedded: VectorMeta
    base: ResolvedBase
    stats: BlobStats
    path: str
    factors: BlobStats | None = None


@contextlib.contextmanager
def work_dir(store: Store, kind: str) -> Iterator[Path]:
    """A temporary directory inside the blob store (same filesystem, sized for vectors).

    It is named and locked like every pvreg temporary, so ``gc`` removes it if
    this process dies and never while it lives.
    """
    from pvreg.registry.files import TEMP_PREFIX, remove_path

    store.blobs.ensure()
    root = store.blobs.root / f"{TEMP_PREFIX}{kind}-{uuid.uuid4().hex}"
    root.mkdir()
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield root
    finally:
        os.close(fd)
        remove_path(root)


@contextlib.contextmanager
def _staging_store(store: Store) -> Iterator[BlobStore]:
    """A private blob store for verifying pulled blobs before any is published."""
    from pvreg.registry.storage.blobstore import BlobStore

    with work_dir(store, "pull") as root:
        yield BlobStore(root)


def _check_one(store: Store, name: str, meta_path: Path, blob_path: Path, stage: BlobStore, label: str) -> _Checked:
    from pvreg.registry.sources.exported import embedded_meta
    from pvreg.registry.sources.ingest import CheckpointSource, check_plan, write_blob
    from pvreg.registry.tensors.checkpoint import open_checkpoint

    try:
        check_name(name)  # the folder name is the vector's name
    except InvalidNameError as exc:
        raise InvalidNameError(f"{label}: the folder's name is not a valid vector name: {exc}") from None
    declared = parse_vector_file(meta_path.read_bytes(), f"{label}/{META_FILE}")
    if declared.name != name:
        raise IntegrityError(f"{label}/{META_FILE}: describes vector {declared.name!r}, not {name!r}")
    if not blob_path.is_file():
        raise IntegrityError(f"{label}: {META_FILE} is there but {BLOB_FILE} is missing")
    blob_label = f"{label}/{BLOB_FILE}"
    try:
        with open_checkpoint(blob_path) as ckpt:
            embedded = embedded_meta(blob_label, ckpt.metadata)
            if embedded is None:
                raise IntegrityError(f"{blob_label}: carries no pvreg metadata; refused")
            for key in MUST_AGREE:
                if getattr(embedded, key) != getattr(declared, key):
                    raise IntegrityError(
                        f"{blob_label}: {META_FILE} says {key}={_short(getattr(declared, key))} but the blob's "
                        f"embedded metadata says {_short(getattr(embedded, key))}; refused"
                    )
            resolved = store.resolve_base(declared.base_fingerprint)
            if declared.base is not None and declared.base.fingerprint == declared.base_fingerprint:
                public = _public_base_facts(declared.base, f"{label}/{META_FILE}")
                resolved.facts = {**{k: v for k, v in public.items() if v}, **resolved.facts}
            source = CheckpointSource(ckpt, blob_label)
            check_plan(source.plan(), blob_label, resolved.infos)
            stats = write_blob(source, stage, expect_sha256=declared.sha256)
    except (IntegrityError, BaseMismatchError, InvalidNameError, InvalidTextError):
        raise  # already one line naming the file
    except PvregError as exc:  # unreadable file, bad embedded metadata, sha256 mismatch, unknown base...
        text = str(exc)
        raise IntegrityError(f"{text if blob_label in text else f'{blob_label}: {text}'}; refused") from None
    if stats.size_bytes != declared.size_bytes or not math.isclose(
        stats.norm, declared.norm, rel_tol=1e-9, abs_tol=1e-12
    ):
        raise IntegrityError(f"{blob_label}: size or norm disagrees with {META_FILE}; refused")
    factors = _check_factors(declared, blob_path.parent / FACTORS_FILE, stage, stats, f"{label}/{FACTORS_FILE}")
    return _Checked(name, declared, embedded, resolved, stats, f"{name}/{BLOB_FILE}", factors)


def _check_factors(
    declared: HubVectorFile, path: Path, stage: BlobStore, dense: BlobStats, label: str
) -> BlobStats | None:
    """A LoRA-sourced vector's factors file: canonical, at its declared sha256, and reproducing the vector.

    Repos pushed before factors were kept have neither the file nor ``factors_sha256``; they pull as before.
    """
    from pvreg.registry.serving.factors import StoredFactors, check_matches
    from pvreg.registry.sources.ingest import CheckpointSource, write_blob
    from pvreg.registry.tensors.checkpoint import open_checkpoint
    from pvreg.registry.tensors.safetensors import SafetensorsFile

    if declared.factors_sha256 is None:
        return None
    if not path.is_file():
        raise IntegrityError(f"{label}: {META_FILE} declares LoRA factors but the file is missing; refused")
    try:
        with open_checkpoint(path) as ckpt:
            stats = write_blob(CheckpointSource(ckpt, label), stage, expect_sha256=declared.factors_sha256)
        factors = StoredFactors(stage.path(stats.sha256), label)
        try:
            vector = SafetensorsFile(stage.path(dense.sha256))
            try:
                check_matches(factors, vector)
            finally:
                vector.close()
        finally:
            factors.close()
    except IntegrityError:
        raise
    except PvregError as exc:
        text = str(exc)
        raise IntegrityError(f"{text if label in text else f'{label}: {text}'}; refused") from None
    return stats


def _public_base_facts(base: HubBaseInfo, label: str) -> dict[str, str | None]:
    """The base facts a pvreg.json declares, held to the text rules (they are stored and shown).

    The Hub id is a label too, not a strict repo id: the publisher's pvreg took it from the
    base's ``config.json`` (``_name_or_path``), and an odd value there must not make a
    genuine vector unpullable; control characters and overlong values are refused.
    """
    from pvreg.registry.text import check_label

    try:
        check_label(base.hub_id, "base Hub id")
        check_label(base.label, "base label")
        check_label(base.architecture, "base architecture")
    except PvregError as exc:
        raise InvalidTextError(f"{label}: base: {exc}") from None
    return {"hub_id": base.hub_id, "label": base.label, "architecture": base.architecture}


def _short(value: object) -> str:
    text = str(value)
    return text[:16] if re.fullmatch(r"[0-9a-f]{17,}", text) else repr(value)


def pull(
    store: Store,
    repo: str,
    *,
    revision: str | None = None,
    names: Sequence[str] | None = None,
    as_name: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> PullResult:
    """Download vectors through the huggingface_hub cache, verify them, register them.

    ``repo`` may carry ``@REVISION`` (branch, tag or commit sha).  Offline
    (``HF_HUB_OFFLINE=1``) it is served from the cache.  Every requested
    vector is verified before any is registered; a sha256 already registered
    under the name is not registered again.

    Raises:
        IntegrityError: a blob or its pvreg.json is tampered or inconsistent
            (nothing is registered).
        HubNotFoundError, HubAuthError, HubError, UserError.
    """
    from pvreg.registry.storage.writes import NewVersion, insert_version

    repo_id, rev = parse_repo(repo, revision)
    wanted = list(dict.fromkeys(check_name(n) for n in (names or [])))
    if as_name is not None:
        check_name(as_name)
    ep = resolve_endpoint(endpoint)
    ctx = Call("pull from", repo_id, rev, ep, token)
    hf = hf_module()
    patterns = (
        [p for n in wanted for p in (f"{n}/{META_FILE}", f"{n}/{BLOB_FILE}", f"{n}/{FACTORS_FILE}")]
        if wanted
        else [f"*/{META_FILE}", f"*/{BLOB_FILE}", f"*/{FACTORS_FILE}"]
    )
    with mapped_errors(ctx), progress_bars():
        folder = Path(
            hf.snapshot_download(
                repo_id,
                revision=rev,
                allow_patterns=patterns,
                endpoint=ep,
                token=token,
                library_name="pvreg",
            )
        )
    commit = folder.name
    found = vector_dirs(folder)
    if wanted:
        missing = [n for n in wanted if n not in found]
        if missing:
            raise HubNotFoundError(f"pull from {ctx.where}: no vector named {', '.join(missing)} in {repo_id}")
        found = {n: found[n] for n in wanted}
    if not found:
        raise HubNotFoundError(f"pull from {ctx.where}: {repo_id} holds no pvreg vectors")
    if as_name is not None and len(found) != 1:
        raise UserError(
            f"{opt('as_name')} needs exactly one vector, but {repo_id} has {len(found)}; pick one with {opt('names')}"
        )

    safe_ep = public_url(ep)
    where = f"{repo_id}@{commit[:12]}"
    moved: set[str] = set()  # blobs this pull put in the store: removed again if it fails
    try:
        with store.blobs.writer_lock(), _staging_store(store) as stage:
            # 1. Verify everything and build every version (its text checked); nothing touches the registry yet.
            checked = [_check_one(store, n, p, p.parent / BLOB_FILE, stage, f"{where}:{n}") for n, p in found.items()]
            news = []
            for c in checked:
                e = c.embedded
                hub = {
                    "endpoint": safe_ep,
                    "repo": repo_id,
                    "revision": rev or DEFAULT_REVISION,
                    "commit": commit,
                    "path": c.path,
                    "remote_ref": e.ref,
                }
                news.append(
                    NewVersion(
                        name=as_name or c.remote_name,
                        stats=c.stats,
                        base=c.base,
                        kind=e.kind,
                        dataset=e.dataset,
                        sign=e.sign,
                        description=e.description,
                        message=e.message,
                        tags=dict(e.tags),
                        provenance={**e.provenance, "hub": hub},
                        parents=list(e.parents),
                        dedupe=True,
                        factors_sha256=c.factors.sha256 if c.factors is not None else None,
                    )
                )

            # 2. One transaction for every row: the versions and their hub records are inserted and
            #    flushed (so every constraint has been checked), then the verified blobs are moved
            #    into the store, then it commits.  A failure before the commit registers nothing.
            def work(s: Any) -> list[tuple[int, bool]]:
                inserted = [insert_version(s, new) for new in news]
                writes.add_hub_records(
                    s,
                    [
                        {
                            "version_id": vid,
                            "direction": "pull",
                            "endpoint": safe_ep,
                            "repo": repo_id,
                            "revision": rev or DEFAULT_REVISION,
                            "commit_sha": commit,
                            "path": c.path,
                        }
                        for (vid, _), c in zip(inserted, checked, strict=True)
                    ],
                )
                s.flush()
                for c in checked:
                    for sha in (c.stats.sha256, *([c.factors.sha256] if c.factors is not None else [])):
                        if _publish_blob(store, stage, sha):
                            moved.add(sha)
                return inserted

            inserted = store.transaction(work)
    except BaseException:
        for sha in moved:  # after the writer lock is released, as gc's discipline needs
            store.drop_if_unreferenced(sha)
        raise
    results = [
        PulledVector(
            remote_name=c.remote_name,
            remote_version=c.embedded.version,
            path=c.path,
            meta=store.meta_by_id(vid),
            registered=created,
        )
        for (vid, created), c in zip(inserted, checked, strict=True)
    ]
    return PullResult(
        repo=repo_id, revision=rev or DEFAULT_REVISION, endpoint=safe_ep, commit_sha=commit, vectors=results
    )


def _publish_blob(store: Store, stage: BlobStore, sha256: str) -> bool:
    """Move a verified blob from the staging store into the registry's; True when this moved it
    (idempotent: a retried transaction, or a blob another writer already stored, finds it in place)."""
    from pvreg.registry.files import fsync_dir

    target = store.blobs.path(sha256)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stage.path(sha256), target)
    fsync_dir(target.parent)
    return True


def remote_ls(
    store: Store,
    repo: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> RemoteListing:
    """The vectors in ``repo`` at ``revision``, read from their pvreg.json files only (no blobs)."""
    repo_id, rev = parse_repo(repo, revision)
    ep = resolve_endpoint(endpoint)
    ctx = Call("list", repo_id, rev, ep, token)
    hf = hf_module()
    with mapped_errors(ctx), progress_bars():
        folder = Path(
            hf.snapshot_download(
                repo_id,
                revision=rev,
                allow_patterns=[f"*/{META_FILE}"],
                endpoint=ep,
                token=token,
                library_name="pvreg",
            )
        )
    entries = []
    for name, path in vector_dirs(folder).items():
        v = parse_vector_file(path.read_bytes(), f"{repo_id}@{folder.name[:12]}:{name}/{META_FILE}")
        entries.append(v)
    with store.read() as conn:
        local = catalog.refs_by_blob(conn, [v.sha256 for v in entries])
    return RemoteListing(
        repo=repo_id,
        revision=rev or DEFAULT_REVISION,
        commit_sha=folder.name,
        vectors=[
            RemoteVector(
                name=v.name,
                version=v.version,
                sha256=v.sha256,
                size_bytes=v.size_bytes,
                base_fingerprint=v.base_fingerprint,
                base_model=v.base.hub_id if v.base else None,
                dataset=v.dataset,
                sign=v.sign,
                norm=v.norm,
                dtype=v.dtype,
                kind=v.kind,
                path=f"{v.name}/{BLOB_FILE}",
                local_refs=local.get(v.sha256, []),
            )
            for v in sorted(entries, key=lambda v: v.name)
        ],
    )
