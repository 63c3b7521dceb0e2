"""``push``: every given version and the regenerated model card in one Hub commit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import (
    HubContentError,
    HubNotFoundError,
    IntegrityError,
    InvalidNameError,
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
    CARD_FILE,
    FACTORS_FILE,
    META_FILE,
    factors_path,
    git_blob_oid,
    json_bytes,
    parse_vector_file,
    published,
)
from pvreg.registry.hub.pull import work_dir
from pvreg.registry.refs import check_name
from pvreg.registry.storage import catalog, writes
from pvreg.schemas.hub import HubVectorFile, PushedVector, PushResult
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store


def push(
    store: Store,
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
    from pvreg.registry.hub.card import render_card
    from pvreg.registry.sources.exported import write_exported

    repo_id, rev = parse_repo(repo, revision)
    branch = rev or DEFAULT_REVISION
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        raise UserError("give at least one vector reference to push")
    metas: list[VectorMeta] = []
    for r in refs:
        m = store.resolve(r)
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
    ctx = Call("push to", repo_id, branch, ep, token)
    hf = hf_module()
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = hf.HfApi(endpoint=ep, token=token, library_name="pvreg")
    with work_dir(store, "push") as tmp:
        # Local files first: no network needed to find a bad ref or a missing blob.
        files: dict[str, Path] = {}
        to_publish: dict[str, HubVectorFile] = {}
        for m in metas:
            public, vfile = published(store, m)
            blob = tmp / m.name / BLOB_FILE
            blob.parent.mkdir(parents=True)
            write_exported(store.blob_path(m.ref), public, blob)
            (tmp / m.name / META_FILE).write_bytes(json_bytes(vfile))
            files[f"{m.name}/{BLOB_FILE}"] = blob
            files[f"{m.name}/{META_FILE}"] = tmp / m.name / META_FILE
            factors = factors_path(store, m)
            if factors is not None:  # LoRA-sourced: the exact factors travel with the vector, as stored
                files[f"{m.name}/{FACTORS_FILE}"] = factors
            to_publish[m.name] = vfile

        created_repo = False
        with mapped_errors(ctx), progress_bars():
            try:
                info = api.model_info(repo_id, revision=branch)
            except RevisionNotFoundError:
                if not create or branch == DEFAULT_REVISION:
                    raise HubNotFoundError(
                        f"push to {ctx.where}: branch {branch!r} not found in {repo_id}; "
                        f"use {opt('create', True)} to create it from main"
                    ) from None
                api.create_branch(repo_id, branch=branch, exist_ok=True)
                info = api.model_info(repo_id, revision=branch)
            except RepositoryNotFoundError:
                if not create:
                    raise HubNotFoundError(
                        f"push to {ctx.where}: repository {repo_id} not found on {public_url(ep)} "
                        f"(or not visible with these credentials); use {opt('create', True)} to create it"
                    ) from None
                api.create_repo(repo_id, private=private, exist_ok=True)
                created_repo = True
                if branch != DEFAULT_REVISION:
                    api.create_branch(repo_id, branch=branch, exist_ok=True)
                info = api.model_info(repo_id, revision=branch)
            head = info.sha
            tree = {
                f.path: f for f in api.list_repo_tree(repo_id, revision=head, recursive=True) if isinstance(f, RepoFile)
            }
            # Other vectors already in the repo stay in the card's table.
            others: list[HubVectorFile] = []
            for path in sorted(tree):
                parts = path.split("/")
                if len(parts) == 2 and parts[1] == META_FILE and parts[0] not in to_publish:
                    local = hf.hf_hub_download(repo_id, path, revision=head, endpoint=ep, token=token)
                    try:
                        other = parse_vector_file(Path(local).read_bytes(), f"{repo_id}:{path}")
                        check_name(other.name)
                    except (IntegrityError, InvalidNameError):
                        continue  # someone else's broken entry: leave it out of the table, do not fail the push
                    if other.name == parts[0]:
                        others.append(other)
            existing_card = None
            if CARD_FILE in tree:
                local = hf.hf_hub_download(repo_id, CARD_FILE, revision=head, endpoint=ep, token=token)
                existing_card = read_card(Path(local).read_bytes(), ctx)

        card = render_card(repo_id, [*others, *to_publish.values()], existing_card)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        files[CARD_FILE] = tmp / CARD_FILE

        changed: list[str] = []
        for path, local in files.items():
            entry = tree.get(path)
            if entry is None:
                changed.append(path)
            elif entry.lfs is not None:
                if entry.lfs.sha256 != store.blobs.hash_file(local):
                    changed.append(path)
            elif entry.blob_id != git_blob_oid(local.read_bytes()):
                changed.append(path)

        commit_sha, commit_url, committed = head, None, False
        if changed:
            ops = [hf.CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in changed]
            description = "\n".join(f"{m.ref} sha256:{m.sha256}" for m in metas)
            with mapped_errors(ctx), progress_bars():
                info = api.create_commit(
                    repo_id,
                    ops,
                    commit_message=message or f"pvreg push {', '.join(m.ref for m in metas)}",
                    commit_description=description,
                    revision=branch,
                    parent_commit=head,
                )
            commit_sha, commit_url = info.oid, info.commit_url
            committed = info.oid != head

    with store.read() as conn:
        found = {m.ref: catalog.version_id(conn, m.name, m.version) for m in metas}
    ids = {ref: vid for ref, vid in found.items() if vid is not None}
    safe_ep = public_url(ep)
    rows = [
        {
            "version_id": ids[m.ref],
            "direction": "push",
            "endpoint": safe_ep,
            "repo": repo_id,
            "revision": branch,
            "commit_sha": commit_sha,
            "path": f"{m.name}/{BLOB_FILE}",
        }
        for m in metas
        if m.ref in ids
    ]
    if rows:  # re-pushing changes nothing: records already there are not repeated
        store.transaction(lambda s: writes.add_hub_records(s, rows))
    return PushResult(
        repo=repo_id,
        revision=branch,
        endpoint=safe_ep,
        commit_sha=commit_sha,
        committed=committed,
        commit_url=commit_url,
        created_repo=created_repo,
        vectors=[
            PushedVector(
                ref=m.ref,
                sha256=m.sha256,
                path=f"{m.name}/{BLOB_FILE}",
                changed=any(f"{m.name}/{f}" in changed for f in (BLOB_FILE, META_FILE, FACTORS_FILE)),
            )
            for m in metas
        ],
    )


def read_card(data: bytes, ctx: Call) -> str:
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
