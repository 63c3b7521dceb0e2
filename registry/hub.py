"""Publishing vectors to, and pulling them from, a Hugging Face Hub model repo.

Repo layout (one folder per vector name)::

    README.md                    model card; pvreg owns its marked section
    <name>/vector.safetensors    the exported blob (VectorMeta embedded)
    <name>/pvreg.json            HubVectorFile: the VectorMeta plus public base facts

Rules this module keeps:

* It is the only pvreg module that imports ``huggingface_hub`` (lazily).
* Endpoint: explicit ``endpoint`` > ``HF_ENDPOINT`` read from ``os.environ``
  at call time (the client only reads it at import) > https://huggingface.co.
  Token: explicit ``token`` or None, letting the client find ``HF_TOKEN`` or
  the stored login.  A token is never stored, logged or put in a message.
* Every Hub failure is turned into a one-line ``HubError`` /
  ``HubNotFoundError`` / ``HubAuthError`` / ``IntegrityError`` in exactly one
  place, :func:`_map_error`.
* The client does not verify downloads, so ``pull`` re-canonicalises every
  blob and checks its sha256 against both ``pvreg.json`` and the embedded
  metadata.  All requested vectors are validated (into a private staging
  store) before any is registered: a bad file registers nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select

from pvreg.registry import catalog, db
from pvreg.registry.errors import (
    BaseMismatchError,
    HubAuthError,
    HubContentError,
    HubEndpointError,
    HubError,
    HubNotFoundError,
    IntegrityError,
    InvalidNameError,
    InvalidTextError,
    PvregError,
    UserError,
)
from pvreg.registry.refs import check_name
from pvreg.registry.text import printable
from pvreg.schemas import (
    HubBaseInfo,
    HubVectorFile,
    PulledVector,
    PullResult,
    PushedVector,
    PushResult,
    RemoteListing,
    RemoteVector,
    VectorMeta,
)

if TYPE_CHECKING:
    from pvreg.registry.api import Registry, ResolvedBase
    from pvreg.registry.blobstore import BlobStore
    from pvreg.registry.ingest import BlobStats

DEFAULT_ENDPOINT = "https://huggingface.co"
BLOB_FILE = "vector.safetensors"
META_FILE = "pvreg.json"
CARD_FILE = "README.md"
DEFAULT_REVISION = "main"

# One part (owner or name) of a repo id, as huggingface_hub's ``validate_repo_id`` accepts it
# (its REPO_ID_REGEX with re.ASCII): 1-96 of [A-Za-z0-9_.-], starting and ending with [A-Za-z0-9_].
REPO_PART_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
REPO_PART_MAX = 96
# Fields of pvreg.json that must agree with the metadata embedded in the blob.
_MUST_AGREE = ("name", "version", "sha256", "size_bytes", "base_fingerprint", "dataset", "sign", "dtype", "kind")


# --- endpoint, repo and error handling -------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL: ``endpoint`` > ``$HF_ENDPOINT`` (read now) > huggingface.co."""
    ep = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    ep = ep.strip().rstrip("/")
    if not ep.startswith(("http://", "https://")):
        raise UserError(f"invalid Hub endpoint {_public_url(ep)!r}: expected an http(s):// URL")
    return ep


def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (safe to store and print)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_repo(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """``OWNER/NAME[@REVISION]`` to (repo id, revision); an explicit ``revision`` wins.

    The repo id is held to the Hub client's own rules (``validate_repo_id``) here, so an id
    the client would refuse later is a one-line usage error before any network traffic.
    """
    repo_id, sep, rev = str(repo).partition("@")
    if sep:
        if not rev:
            raise UserError(f"invalid Hub repo {printable(repo)}: empty revision after '@'")
        if revision is not None and revision != rev:
            raise UserError(f"{printable(repo)}: revision given twice ({printable(rev)} and {printable(revision)})")
        revision = rev
    check_repo_id(repo_id)
    return repo_id, revision


def check_repo_id(repo_id: str) -> str:
    """Refuse a repo id that is not ``OWNER/NAME`` by huggingface_hub's ``validate_repo_id`` rules."""
    parts = repo_id.split("/")
    why = None
    if len(parts) != 2:
        why = "expected OWNER/NAME"
    elif any(len(p) > REPO_PART_MAX for p in parts):
        which, part = ("OWNER", parts[0]) if len(parts[0]) > REPO_PART_MAX else ("NAME", parts[1])
        why = f"{which} is {len(part)} characters (at most {REPO_PART_MAX})"
    elif not all(REPO_PART_RE.fullmatch(p) for p in parts):
        why = ("expected OWNER/NAME of letters, digits, '-', '_' and '.', each starting and ending with "
               "a letter, digit or '_'")
    elif "--" in repo_id or ".." in repo_id:
        why = "the Hub does not allow '--' or '..' in a repo id"
    elif repo_id.endswith(".git"):
        why = "the Hub does not allow a repo id ending in '.git'"
    if why is not None:
        raise UserError(f"invalid Hub repo {printable(repo_id)}: {why}")
    return repo_id


@dataclass
class _Ctx:
    """What an error message may name: never the token (kept only to scrub it)."""

    action: str
    repo: str
    revision: str | None
    endpoint: str
    token: str | None = None

    @property
    def where(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo

    def scrub(self, text: str) -> str:
        secrets = {self.token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", text)


def _map_error(exc: BaseException, ctx: _Ctx) -> PvregError | None:
    """THE mapping from huggingface_hub / HTTP failures to pvreg errors (one line each).

    Returns None for exceptions that are not Hub failures (bugs propagate).
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        import httpx2 as _http  # the transport of huggingface_hub 2.x
    except ImportError:  # pragma: no cover - older clients use httpx
        import httpx as _http  # type: ignore[no-redef]

    from huggingface_hub.errors import HFValidationError

    head = f"{ctx.action} {ctx.where}"
    ep = _public_url(ctx.endpoint)
    not_a_hub = "it does not look like a Hugging Face Hub (check --endpoint or HF_ENDPOINT)"
    if isinstance(exc, HFValidationError):  # the client refused an argument parse_repo let through
        return UserError(f"{head}: the Hub client refused it: {' '.join(str(exc).split())}")
    if isinstance(exc, json.JSONDecodeError):
        return HubEndpointError(f"{head}: {ep} answered with something that is not JSON (a web page?): {not_a_hub}")
    if isinstance(exc, KeyError) and _raised_in_client(exc):
        return HubEndpointError(f"{head}: {ep} answered JSON without the field {exc}: {not_a_hub}")
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OfflineModeIsEnabled) or (cause is None and constants.HF_HUB_OFFLINE):
            return HubError(f"{head}: not in the local Hugging Face cache, and offline mode (HF_HUB_OFFLINE) is on")
        if cause is not None and not isinstance(cause, LocalEntryNotFoundError):
            mapped = _map_error(cause, ctx)
            if mapped is not None:
                return mapped
        return HubError(f"{head}: the files are not in the local Hugging Face cache and {ep} could not be reached")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{head}: offline mode (HF_HUB_OFFLINE) is on")
    if isinstance(exc, RevisionNotFoundError):
        return HubNotFoundError(f"{head}: revision {ctx.revision or DEFAULT_REVISION!r} not found in {ctx.repo} on {ep}")
    if isinstance(exc, RepositoryNotFoundError):
        return HubNotFoundError(
            f"{head}: repository {ctx.repo} not found on {ep} (or it is private and these credentials cannot see it)"
        )
    if isinstance(exc, EntryNotFoundError):
        return HubNotFoundError(f"{head}: a file is missing from the repository on {ep}")
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if status == 401:
            return HubAuthError(
                f"{head}: {ep} rejected the credentials (HTTP 401); check HF_TOKEN or log in with `hf auth login`"
            )
        if status == 403:
            return HubAuthError(f"{head}: not allowed (HTTP 403); the token cannot access {ctx.repo} this way")
        if status == 404:
            headers = getattr(response, "headers", None) or {}
            ctype = str(headers.get("content-type", "")).split(";")[0].strip()
            if not headers.get("x-error-code") and "json" not in ctype:
                # The Hub answers a missing repo/revision/file with an X-Error-Code and JSON;
                # a web server that is not a Hub answers every API route with a plain 404 page.
                return HubEndpointError(f"{head}: {ep} answered HTTP 404 ({ctype or 'no content type'}) "
                                        f"to an API request: {not_a_hub}")
            return HubNotFoundError(f"{head}: not found on {ep} (HTTP 404)")
        if status == 412:
            return HubError(f"{head}: the branch moved while pushing (HTTP 412); push again")
        if status == 429:
            return HubError(f"{head}: rate limited by {ep} (HTTP 429); try again later")
        detail = ctx.scrub(" ".join(str(getattr(exc, "server_message", None) or "").split()))[:200]
        what = f"HTTP {status}" if status else "HTTP error"
        return HubError(f"{head}: {ep} answered {what}" + (f": {detail}" if detail else ""))
    if isinstance(exc, (_http.TransportError, ConnectionError, TimeoutError)):
        return HubError(f"{head}: cannot reach the Hub at {ep} ({exc.__class__.__name__})")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return IntegrityError(f"{head}: a downloaded file does not have the size the Hub advertises; refused")
    return None


def _raised_in_client(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside huggingface_hub's own code (reading an answer),
    not in pvreg or in the client's argument validators (a bug in how pvreg calls it)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return False
    parts = Path(last).parts
    return "huggingface_hub" in parts and not last.endswith("_validators.py")


@contextlib.contextmanager
def _hub_errors(ctx: _Ctx) -> Iterator[None]:
    try:
        yield
    except PvregError:
        raise
    except Exception as exc:
        mapped = _map_error(exc, ctx)
        if mapped is None:
            raise
        raise mapped from None


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a declared dependency
        raise HubError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    return huggingface_hub


@contextlib.contextmanager
def _progress_bars() -> Iterator[None]:
    """The client's progress bars only on an interactive terminal (stderr stays clean in scripts).

    The client's log warnings (e.g. "No files matched allow_patterns") are silenced too: they would
    add lines to pvreg's one-line errors; every failure reaches the user through :func:`_map_error`.
    """
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    quiet = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    was_disabled = are_progress_bars_disabled()
    if quiet and not was_disabled:
        disable_progress_bars()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if quiet and not was_disabled:
            enable_progress_bars()


# --- files ---------------------------------------------------------------------------------


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _json_bytes(model: HubVectorFile) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _published(registry: "Registry", meta: VectorMeta) -> tuple[VectorMeta, HubVectorFile]:
    """The metadata as published: local aliases dropped; base facts without local paths."""
    public = meta.model_copy(update={"aliases": []})
    info = registry.base_info(meta.base_fingerprint)
    base = HubBaseInfo(
        fingerprint=meta.base_fingerprint,
        hub_id=info.hub_id if info else None,
        label=info.label if info else None,
        architecture=info.architecture if info else None,
    )
    return public, HubVectorFile(**public.model_dump(), base=base)


def _parse_vector_file(data: bytes, label: str) -> HubVectorFile:
    from pydantic import ValidationError

    try:
        return HubVectorFile.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
        raise IntegrityError(f"{label}: not valid pvreg metadata at {where}: {first.get('msg')}") from None


def _vector_dirs(root: Path) -> dict[str, Path]:
    """name -> pvreg.json path for every ``<name>/pvreg.json`` in a snapshot folder."""
    out: dict[str, Path] = {}
    if root.is_dir():
        for p in sorted(root.glob(f"*/{META_FILE}")):
            out[p.parent.name] = p
    return out


# --- database records ----------------------------------------------------------------------


def _version_ids(registry: "Registry", metas: Sequence[VectorMeta]) -> dict[str, int]:
    with db.read_connection(registry.engine) as conn:
        found = {m.ref: catalog.version_id(conn, m.name, m.version) for m in metas}
    return {ref: vid for ref, vid in found.items() if vid is not None}


def _record(registry: "Registry", rows: Sequence[dict[str, Any]]) -> None:
    """Insert hub records, skipping ones already present (re-push/re-pull change nothing)."""
    if rows:
        db.run_transaction(registry._sessions, lambda s: _add_records(s, rows))


def _add_records(s: Any, rows: Sequence[dict[str, Any]]) -> None:
    """:func:`_record` inside the caller's transaction."""
    from pvreg.registry.models import HubRecord

    for r in rows:
        exists = s.scalar(select(HubRecord.id).where(*(getattr(HubRecord, k) == v for k, v in r.items())).limit(1))
        if exists is None:
            s.add(HubRecord(**r))


def hub_records(registry: "Registry", ref: str) -> list[dict[str, Any]]:
    """Every push/pull recorded for the version ``ref`` points at, oldest first."""
    with db.read_connection(registry.engine) as conn:
        return catalog.hub_records(conn, catalog.resolve_id(conn, ref))


# --- push ----------------------------------------------------------------------------------


def push(
    registry: "Registry",
    refs: Sequence[str],
    repo: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create: bool = False,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> PushResult:
    """Publish versions and the regenerated card to ``repo`` in one commit.

    Versions whose identical files are already there make no commit
    (``PushResult.committed`` is false).  Each pushed version gets a hub record
    (repo, branch, commit sha, path).

    Raises:
        UserError: bad refs/repo, or two versions of one name.
        HubNotFoundError: repo (without ``create``) or branch missing.
        HubAuthError, HubError: the Hub refused or could not be reached.
    """
    from pvreg.registry.export import write_exported
    from pvreg.registry.hubcard import render_card

    repo_id, rev = parse_repo(repo, revision)
    branch = rev or DEFAULT_REVISION
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        raise UserError("give at least one vector reference to push")
    metas: list[VectorMeta] = []
    for r in refs:
        m = registry.resolve(r)
        try:  # a name stored before the rules were enforced must not become a path in the work dir
            check_name(m.name)
        except InvalidNameError as exc:
            raise InvalidNameError(f"cannot push {m.ref}: the stored name is not a valid vector name ({exc})") from None
        same = [x for x in metas if x.name == m.name]
        if same and same[0].version != m.version:
            raise UserError(f"cannot push {same[0].ref} and {m.ref} together: a repo holds one version per name")
        if not same:
            metas.append(m)
    ep = resolve_endpoint(endpoint)
    ctx = _Ctx("push to", repo_id, branch, ep, token)
    hf = _hf()
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = hf.HfApi(endpoint=ep, token=token, library_name="pvreg")
    with _work_dir(registry, "push") as tmp:
        # Local files first: no network needed to find a bad ref or a missing blob.
        files: dict[str, Path] = {}
        published: dict[str, HubVectorFile] = {}
        for m in metas:
            public, vfile = _published(registry, m)
            blob = tmp / m.name / BLOB_FILE
            blob.parent.mkdir(parents=True)
            write_exported(registry.blob_path(m.ref), public, blob)
            (tmp / m.name / META_FILE).write_bytes(_json_bytes(vfile))
            files[f"{m.name}/{BLOB_FILE}"] = blob
            files[f"{m.name}/{META_FILE}"] = tmp / m.name / META_FILE
            published[m.name] = vfile

        created_repo = False
        with _hub_errors(ctx), _progress_bars():
            try:
                info = api.model_info(repo_id, revision=branch)
            except RevisionNotFoundError:
                if not create or branch == DEFAULT_REVISION:
                    raise HubNotFoundError(
                        f"push to {ctx.where}: branch {branch!r} not found in {repo_id}; "
                        "use --create to create it from main"
                    ) from None
                api.create_branch(repo_id, branch=branch, exist_ok=True)
                info = api.model_info(repo_id, revision=branch)
            except RepositoryNotFoundError:
                if not create:
                    raise HubNotFoundError(
                        f"push to {ctx.where}: repository {repo_id} not found on {_public_url(ep)} "
                        "(or not visible with these credentials); use --create to create it"
                    ) from None
                api.create_repo(repo_id, private=private, exist_ok=True)
                created_repo = True
                if branch != DEFAULT_REVISION:
                    api.create_branch(repo_id, branch=branch, exist_ok=True)
                info = api.model_info(repo_id, revision=branch)
            head = info.sha
            tree = {
                f.path: f
                for f in api.list_repo_tree(repo_id, revision=head, recursive=True)
                if isinstance(f, RepoFile)
            }
            # Other vectors already in the repo stay in the card's table.
            others: list[HubVectorFile] = []
            for path in sorted(tree):
                parts = path.split("/")
                if len(parts) == 2 and parts[1] == META_FILE and parts[0] not in published:
                    local = hf.hf_hub_download(repo_id, path, revision=head, endpoint=ep, token=token)
                    try:
                        other = _parse_vector_file(Path(local).read_bytes(), f"{repo_id}:{path}")
                        check_name(other.name)
                    except (IntegrityError, InvalidNameError):
                        continue  # someone else's broken entry: leave it out of the table, do not fail the push
                    if other.name == parts[0]:
                        others.append(other)
            existing_card = None
            if CARD_FILE in tree:
                local = hf.hf_hub_download(repo_id, CARD_FILE, revision=head, endpoint=ep, token=token)
                existing_card = _read_card(Path(local).read_bytes(), ctx)

        card = render_card(repo_id, [*others, *published.values()], existing_card)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        files[CARD_FILE] = tmp / CARD_FILE

        changed: list[str] = []
        for path, local in files.items():
            entry = tree.get(path)
            if entry is None:
                changed.append(path)
            elif entry.lfs is not None:
                if entry.lfs.sha256 != registry.blobs.hash_file(local):
                    changed.append(path)
            elif entry.blob_id != _git_blob_oid(local.read_bytes()):
                changed.append(path)

        commit_sha, commit_url, committed = head, None, False
        if changed:
            ops = [hf.CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in changed]
            description = "\n".join(f"{m.ref} sha256:{m.sha256}" for m in metas)
            with _hub_errors(ctx), _progress_bars():
                info = api.create_commit(
                    repo_id, ops, commit_message=message or f"pvreg push {', '.join(m.ref for m in metas)}",
                    commit_description=description, revision=branch, parent_commit=head,
                )
            commit_sha, commit_url = info.oid, info.commit_url
            committed = info.oid != head

    ids = _version_ids(registry, metas)
    safe_ep = _public_url(ep)
    _record(registry, [
        {"version_id": ids[m.ref], "direction": "push", "endpoint": safe_ep, "repo": repo_id,
         "revision": branch, "commit_sha": commit_sha, "path": f"{m.name}/{BLOB_FILE}"}
        for m in metas if m.ref in ids
    ])
    return PushResult(
        repo=repo_id, revision=branch, endpoint=safe_ep, commit_sha=commit_sha, committed=committed,
        commit_url=commit_url, created_repo=created_repo,
        vectors=[
            PushedVector(ref=m.ref, sha256=m.sha256, path=f"{m.name}/{BLOB_FILE}",
                         changed=f"{m.name}/{BLOB_FILE}" in changed or f"{m.name}/{META_FILE}" in changed)
            for m in metas
        ],
    )


def _read_card(data: bytes, ctx: _Ctx) -> str:
    """The repo's model card as text; a card that is not UTF-8 is refused, never rewritten
    (pvreg keeps the owner's text byte for byte, which it cannot do for text it cannot decode)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HubContentError(
            f"{ctx.action} {ctx.where}: {CARD_FILE} in the repo is not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "pvreg will not rewrite it: convert it to UTF-8 or delete it, then push again"
        ) from None


# --- pull ----------------------------------------------------------------------------------


@dataclass
class _Checked:
    remote_name: str
    declared: HubVectorFile
    embedded: VectorMeta
    base: "ResolvedBase"
    stats: "BlobStats"
    path: str


@contextlib.contextmanager
def _work_dir(registry: "Registry", kind: str) -> Iterator[Path]:
    """A temporary directory inside the blob store (same filesystem, sized for vectors).

    It is named and locked like every pvreg temporary, so ``gc`` removes it if
    this process dies and never while it lives.
    """
    from pvreg.registry.fsutil import TEMP_PREFIX, remove_path

    registry.blobs.ensure()
    root = registry.blobs.root / f"{TEMP_PREFIX}{kind}-{uuid.uuid4().hex}"
    root.mkdir()
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield root
    finally:
        os.close(fd)
        remove_path(root)


@contextlib.contextmanager
def _staging_store(registry: "Registry") -> Iterator["BlobStore"]:
    """A private blob store for verifying pulled blobs before any is published."""
    from pvreg.registry.blobstore import BlobStore

    with _work_dir(registry, "pull") as root:
        yield BlobStore(root)


def _check_one(
    registry: "Registry", name: str, meta_path: Path, blob_path: Path, stage: "BlobStore", label: str
) -> _Checked:
    from pvreg.registry.api import _embedded_meta
    from pvreg.registry.ingest import CheckpointSource, check_plan, write_blob
    from pvreg.registry.tensorio import open_checkpoint

    try:
        check_name(name)  # the folder name is the vector's name
    except InvalidNameError as exc:
        raise InvalidNameError(f"{label}: the folder's name is not a valid vector name: {exc}") from None
    declared = _parse_vector_file(meta_path.read_bytes(), f"{label}/{META_FILE}")
    if declared.name != name:
        raise IntegrityError(f"{label}/{META_FILE}: describes vector {declared.name!r}, not {name!r}")
    if not blob_path.is_file():
        raise IntegrityError(f"{label}: {META_FILE} is there but {BLOB_FILE} is missing")
    blob_label = f"{label}/{BLOB_FILE}"
    try:
        with open_checkpoint(blob_path) as ckpt:
            embedded = _embedded_meta(blob_label, ckpt.metadata)
            if embedded is None:
                raise IntegrityError(f"{blob_label}: carries no pvreg metadata; refused")
            for key in _MUST_AGREE:
                if getattr(embedded, key) != getattr(declared, key):
                    raise IntegrityError(
                        f"{blob_label}: {META_FILE} says {key}={_short(getattr(declared, key))} but the blob's "
                        f"embedded metadata says {_short(getattr(embedded, key))}; refused"
                    )
            resolved = registry.resolve_base(declared.base_fingerprint)
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
    if stats.size_bytes != declared.size_bytes or not math.isclose(stats.norm, declared.norm, rel_tol=1e-9, abs_tol=1e-12):
        raise IntegrityError(f"{blob_label}: size or norm disagrees with {META_FILE}; refused")
    return _Checked(name, declared, embedded, resolved, stats, f"{name}/{BLOB_FILE}")


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
    registry: "Registry",
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
    from pvreg.registry.api import NewVersion, insert_version

    repo_id, rev = parse_repo(repo, revision)
    wanted = list(dict.fromkeys(check_name(n) for n in (names or [])))
    if as_name is not None:
        check_name(as_name)
    ep = resolve_endpoint(endpoint)
    ctx = _Ctx("pull from", repo_id, rev, ep, token)
    hf = _hf()
    patterns = (
        [p for n in wanted for p in (f"{n}/{META_FILE}", f"{n}/{BLOB_FILE}")]
        if wanted else [f"*/{META_FILE}", f"*/{BLOB_FILE}"]
    )
    with _hub_errors(ctx), _progress_bars():
        folder = Path(hf.snapshot_download(
            repo_id, revision=rev, allow_patterns=patterns, endpoint=ep, token=token, library_name="pvreg",
        ))
    commit = folder.name
    found = _vector_dirs(folder)
    if wanted:
        missing = [n for n in wanted if n not in found]
        if missing:
            raise HubNotFoundError(f"pull from {ctx.where}: no vector named {', '.join(missing)} in {repo_id}")
        found = {n: found[n] for n in wanted}
    if not found:
        raise HubNotFoundError(f"pull from {ctx.where}: {repo_id} holds no pvreg vectors")
    if as_name is not None and len(found) != 1:
        raise UserError(f"--as needs exactly one vector, but {repo_id} has {len(found)}; pick one with --name")

    safe_ep = _public_url(ep)
    where = f"{repo_id}@{commit[:12]}"
    moved: set[str] = set()  # blobs this pull put in the store: removed again if it fails
    try:
        with registry.blobs.writer_lock(), _staging_store(registry) as stage:
            # 1. Verify everything and build every version (its text checked); nothing touches the registry yet.
            checked = [_check_one(registry, n, p, p.parent / BLOB_FILE, stage, f"{where}:{n}") for n, p in found.items()]
            news = []
            for c in checked:
                e = c.embedded
                hub = {"endpoint": safe_ep, "repo": repo_id, "revision": rev or DEFAULT_REVISION,
                       "commit": commit, "path": c.path, "remote_ref": e.ref}
                news.append(NewVersion(
                    name=as_name or c.remote_name, stats=c.stats, base=c.base, kind=e.kind, dataset=e.dataset,
                    sign=e.sign, description=e.description, message=e.message, tags=dict(e.tags),
                    provenance={**e.provenance, "hub": hub}, parents=list(e.parents), dedupe=True,
                ))

            # 2. One transaction for every row: the versions and their hub records are inserted and
            #    flushed (so every constraint has been checked), then the verified blobs are moved
            #    into the store, then it commits.  A failure before the commit registers nothing.
            def work(s: Any) -> list[tuple[int, bool]]:
                inserted = [insert_version(s, new) for new in news]
                _add_records(s, [
                    {"version_id": vid, "direction": "pull", "endpoint": safe_ep, "repo": repo_id,
                     "revision": rev or DEFAULT_REVISION, "commit_sha": commit, "path": c.path}
                    for (vid, _), c in zip(inserted, checked)
                ])
                s.flush()
                for c in checked:
                    if _publish_blob(registry, stage, c.stats.sha256):
                        moved.add(c.stats.sha256)
                return inserted

            inserted = db.run_transaction(registry._sessions, work)
    except BaseException:
        for sha in moved:  # after the writer lock is released, as gc's discipline needs
            registry._drop_if_unreferenced(sha)
        raise
    results = [
        PulledVector(remote_name=c.remote_name, remote_version=c.embedded.version, path=c.path,
                     meta=registry._meta_by_id(vid), registered=created)
        for (vid, created), c in zip(inserted, checked)
    ]
    return PullResult(repo=repo_id, revision=rev or DEFAULT_REVISION, endpoint=safe_ep, commit_sha=commit,
                      vectors=results)


def _publish_blob(registry: "Registry", stage: "BlobStore", sha256: str) -> bool:
    """Move a verified blob from the staging store into the registry's; True when this moved it
    (idempotent: a retried transaction, or a blob another writer already stored, finds it in place)."""
    from pvreg.registry.fsutil import fsync_dir

    target = registry.blobs.path(sha256)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stage.path(sha256), target)
    fsync_dir(target.parent)
    return True


# --- remote ls -----------------------------------------------------------------------------


def remote_ls(
    registry: "Registry",
    repo: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> RemoteListing:
    """The vectors in ``repo`` at ``revision``, read from their pvreg.json files only (no blobs)."""
    repo_id, rev = parse_repo(repo, revision)
    ep = resolve_endpoint(endpoint)
    ctx = _Ctx("list", repo_id, rev, ep, token)
    hf = _hf()
    with _hub_errors(ctx), _progress_bars():
        folder = Path(hf.snapshot_download(
            repo_id, revision=rev, allow_patterns=[f"*/{META_FILE}"], endpoint=ep, token=token,
            library_name="pvreg",
        ))
    entries = []
    for name, path in _vector_dirs(folder).items():
        v = _parse_vector_file(path.read_bytes(), f"{repo_id}@{folder.name[:12]}:{name}/{META_FILE}")
        entries.append(v)
    with db.read_connection(registry.engine) as conn:
        local = catalog.refs_by_blob(conn, [v.sha256 for v in entries])
    return RemoteListing(
        repo=repo_id, revision=rev or DEFAULT_REVISION, commit_sha=folder.name,
        vectors=[
            RemoteVector(
                name=v.name, version=v.version, sha256=v.sha256, size_bytes=v.size_bytes,
                base_fingerprint=v.base_fingerprint, base_model=v.base.hub_id if v.base else None,
                dataset=v.dataset, sign=v.sign, norm=v.norm, dtype=v.dtype, kind=v.kind,
                path=f"{v.name}/{BLOB_FILE}", local_refs=local.get(v.sha256, []),
            )
            for v in sorted(entries, key=lambda v: v.name)
        ],
    )
