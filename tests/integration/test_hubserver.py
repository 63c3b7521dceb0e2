"""Tests for tests/helpers/hubserver.py, driven only through the real huggingface_hub client (no mocks).

Client facts these tests pin down (huggingface_hub 2.4):
* HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HUB_OFFLINE, HF_HOME/HF_HUB_CACHE and HF_TOKEN_PATH are read ONCE, at import
  time, into `huggingface_hub.constants`. Setting env vars in a test is not enough: the fixture also patches the
  constants. `endpoint=` and `token=` are always passed explicitly.
* hf_xet is installed: unless `constants.HF_HUB_DISABLE_XET` is True the client uploads through Xet, which this
  server does not implement.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers.hubserver import HubServer, isolate_hf_client
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TOKEN = "hf_alice_token"
OTHER_TOKEN = "hf_bob_token"
REPO = "alice/prefs"


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    return isolate_hf_client(monkeypatch, tmp_path / "hf_home")


@pytest.fixture
def server(tmp_path, hf_env):
    with HubServer(tmp_path / "hubdata", tokens={TOKEN: "alice", OTHER_TOKEN: "bob"}) as srv:
        yield srv


@pytest.fixture
def api(server):
    return HfApi(endpoint=server.url, token=TOKEN)


def _download(server, filename, cache_dir, revision=None, token=TOKEN, **kw):
    return hf_hub_download(
        REPO, filename, revision=revision, endpoint=server.url, token=token, cache_dir=str(cache_dir), **kw
    )


@pytest.fixture
def populated(server, api, tmp_path):
    """Repo with one commit holding an LFS file (~1 KB .safetensors) and a regular json file, built from a folder."""
    folder = tmp_path / "upload"
    folder.mkdir()
    weights = os.urandom(1000) + b"SAFETENSORS"
    config = json.dumps({"rank": 8, "alpha": 16}).encode()
    (folder / "adapter.safetensors").write_bytes(weights)
    (folder / "config.json").write_bytes(config)
    api.create_repo(REPO)
    info = api.create_commit(
        REPO,
        [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())],
        commit_message="add adapter",
    )
    return {"weights": weights, "config": config, "commit": info}


# ---------------------------------------------------------------------------------------------------------------------


def test_create_repo_conflict_and_exist_ok(server, api):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.startswith(server.url)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.repo_exists(REPO)
    # Like the real Hub, a fresh repo has one initial commit holding `.gitattributes`.
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert len(server.commits(REPO)) == 1
    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)


def test_commit_lfs_and_regular_then_download(server, api, populated, tmp_path):
    weights, config, info = populated["weights"], populated["config"], populated["commit"]
    sha256 = hashlib.sha256(weights).hexdigest()
    # The .safetensors went through the LFS batch + PUT path; the json was inlined (base64) in the commit.
    assert server.lfs_batch_oids == [sha256]
    assert server.lfs_put_oids == [sha256]
    assert any(m == "PUT" and p.startswith("/__lfs_upload/") for m, p in server.request_log)

    assert info.oid == server.commits(REPO)[0]
    assert info.commit_url == f"{server.url}/{REPO}/commit/{info.oid}"
    assert api.model_info(REPO).sha == info.oid
    assert api.list_repo_files(REPO) == [".gitattributes", "adapter.safetensors", "config.json"]
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert tree["adapter.safetensors"].lfs is not None
    assert tree["adapter.safetensors"].lfs.sha256 == sha256
    assert tree["adapter.safetensors"].size == len(weights)
    assert tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == hashlib.sha1(b"blob %d\x00" % len(config) + config).hexdigest()

    cache = tmp_path / "cache"
    assert Path(_download(server, "adapter.safetensors", cache)).read_bytes() == weights
    assert Path(_download(server, "config.json", cache)).read_bytes() == config
    assert server.file_bytes(REPO, "adapter.safetensors") == weights

    # How to learn the commit a download resolved to: HEAD metadata (X-Repo-Commit), or the cache path
    # (<cache>/models--alice--prefs/snapshots/<commit>/<file>), or refs/<branch> in the cache folder.
    meta = get_hf_file_metadata(hf_hub_url(REPO, "adapter.safetensors", endpoint=server.url), token=TOKEN)
    assert meta.commit_hash == info.oid and meta.etag == sha256 and meta.size == len(weights)
    assert Path(_download(server, "config.json", cache)).parent.name == info.oid
    assert (cache / "models--alice--prefs" / "refs" / "main").read_text() == info.oid

    snap = Path(snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=str(tmp_path / "snap")))
    assert snap.name == info.oid
    assert (snap / "adapter.safetensors").read_bytes() == weights


def test_old_revisions_stay_resolvable(server, api, populated, tmp_path):
    first = populated["commit"].oid
    new_config = b'{"rank": 16}'
    second = api.create_commit(
        REPO,
        [CommitOperationAdd("config.json", new_config), CommitOperationDelete("adapter.safetensors")],
        commit_message="change config",
        parent_commit=first,
    )
    assert server.commits(REPO)[:2] == [second.oid, first]
    assert api.list_repo_files(REPO) == [".gitattributes", "config.json"]
    assert api.list_repo_files(REPO, revision=first) == [".gitattributes", "adapter.safetensors", "config.json"]
    assert api.model_info(REPO, revision=first).sha == first

    cache = tmp_path / "cache"
    assert Path(_download(server, "config.json", cache)).read_bytes() == new_config
    assert Path(_download(server, "config.json", cache, revision=first)).read_bytes() == populated["config"]
    assert Path(_download(server, "adapter.safetensors", cache, revision=first)).read_bytes() == populated["weights"]
    with pytest.raises(EntryNotFoundError):
        _download(server, "adapter.safetensors", cache)  # deleted at head

    # parent_commit is checked: committing on top of a stale parent fails (HTTP 412).
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="stale", parent_commit=first)
    assert exc.value.response.status_code == 412

    # Branches: created from main, committed to independently.
    api.create_branch(REPO, branch="dev")
    dev = api.create_commit(REPO, [CommitOperationAdd("dev.txt", b"d")], commit_message="dev", revision="dev")
    assert server.commits(REPO, "dev")[0] == dev.oid
    assert "dev.txt" not in api.list_repo_files(REPO)
    assert Path(_download(server, "dev.txt", cache, revision="dev")).read_bytes() == b"d"


def test_cache_reuse_and_offline(server, api, populated, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = _download(server, "adapter.safetensors", cache)
    n_requests = len(server.request_log)

    # local_files_only=True: served from the cache, no HTTP request at all.
    assert _download(server, "adapter.safetensors", cache, local_files_only=True) == path
    assert len(server.request_log) == n_requests
    with pytest.raises(LocalEntryNotFoundError):
        _download(server, "config.json", cache, local_files_only=True)  # never downloaded

    # A commit sha revision whose file is cached short-circuits before any request too.
    assert _download(server, "adapter.safetensors", cache, revision=populated["commit"].oid) == path
    assert len(server.request_log) == n_requests

    # HF_HUB_OFFLINE (the constant, read at import) makes every request raise OfflineModeIsEnabled inside the client;
    # hf_hub_download falls back to cache via refs/main, snapshot_download too (if its tree cache is complete).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _download(server, "adapter.safetensors", cache) == path
    with pytest.raises(LocalEntryNotFoundError):
        _download(server, "config.json", cache)
    assert len(server.request_log) == n_requests

    # A plain online re-download of a cached file makes exactly one HEAD request (etag check) and no GET.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert _download(server, "adapter.safetensors", cache) == path
    assert [m for m, _ in server.request_log[n_requests:]] == ["HEAD"]


def test_identical_reupload_is_skipped_client_side(server, api, populated):
    head = populated["commit"].oid
    puts = list(server.lfs_put_oids)
    again = api.create_commit(
        REPO,
        [CommitOperationAdd("adapter.safetensors", populated["weights"]),
         CommitOperationAdd("config.json", populated["config"])],
        commit_message="same again",
    )
    # preupload returns each existing file's oid (git sha1 for regular, sha256 for LFS); the client compares and
    # drops unchanged files. Nothing left => NO commit is created, the returned CommitInfo carries the current head.
    assert again.oid == head
    assert server.commits(REPO)[0] == head
    # The LFS batch call still happens, but the server says the object exists (no actions) => no second PUT.
    assert server.lfs_put_oids == puts

    # Mixed: unchanged files are silently dropped from a commit that changes something else.
    mixed = api.create_commit(
        REPO,
        [CommitOperationAdd("config.json", populated["config"]), CommitOperationAdd("new.txt", b"n")],
        commit_message="mixed",
    )
    assert mixed.oid != head and server.commits(REPO)[0] == mixed.oid


def test_error_classes(server, api, populated, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/missing", "x", endpoint=server.url, token=TOKEN, cache_dir=str(cache))
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        _download(server, "config.json", cache, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        _download(server, "config.json", cache, revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError) as exc:  # subclass of EntryNotFoundError and HfHubHTTPError
        _download(server, "missing.json", cache)
    assert isinstance(exc.value, EntryNotFoundError) and exc.value.response.status_code == 404
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no/such/dir"))

    # Invalid token => 401 on any request, raised as a plain HfHubHTTPError (not RepositoryNotFoundError).
    bad = HfApi(endpoint=server.url, token="hf_wrong")
    for call in (
        lambda: bad.model_info(REPO),
        lambda: bad.create_repo("alice/other"),
        lambda: _download(server, "config.json", tmp_path / "fresh", token="hf_wrong"),
    ):
        with pytest.raises(HfHubHTTPError) as exc:
            call()
        assert type(exc.value) is HfHubHTTPError and exc.value.response.status_code == 401

    # Writes without a token => 401; writes with a valid token into someone else's namespace => 403.
    anon = HfApi(endpoint=server.url, token=False)
    with pytest.raises(HfHubHTTPError) as exc:
        anon.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="anon")
    assert exc.value.response.status_code == 401
    bob = HfApi(endpoint=server.url, token=OTHER_TOKEN)
    with pytest.raises(HfHubHTTPError) as exc:
        bob.create_commit(REPO, [CommitOperationAdd("b.txt", b"b")], commit_message="bob")
    assert exc.value.response.status_code == 403
    assert api.model_info(REPO).sha == populated["commit"].oid  # nothing changed
    # Public repos are readable anonymously.
    assert anon.model_info(REPO).sha == populated["commit"].oid


def test_private_repo_invisible_without_token(server, api, tmp_path):
    repo = "alice/secret"
    api.create_repo(repo, private=True)
    api.create_commit(repo, [CommitOperationAdd("config.json", b"{}")], commit_message="c")
    assert api.model_info(repo).private is True
    assert api.list_repo_files(repo) == [".gitattributes", "config.json"]

    anon = HfApi(endpoint=server.url, token=False)
    bob = HfApi(endpoint=server.url, token=OTHER_TOKEN)
    for client in (anon, bob):  # anonymous gets 401, other users 404; both carry X-Error-Code: RepoNotFound
        with pytest.raises(RepositoryNotFoundError):
            client.model_info(repo)
        assert not client.repo_exists(repo)
    for token in (False, OTHER_TOKEN):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(repo, "config.json", endpoint=server.url, token=token, cache_dir=str(tmp_path / "c"))
    path = hf_hub_download(repo, "config.json", endpoint=server.url, token=TOKEN, cache_dir=str(tmp_path / "c"))
    assert Path(path).read_bytes() == b"{}"


def test_tamper_changes_fresh_downloads(server, api, populated, tmp_path):
    head = server.commits(REPO)[0]
    cache = tmp_path / "cache"
    assert Path(_download(server, "config.json", cache)).read_bytes() == populated["config"]

    # Regular file: tampered bytes of a different length are served; the client does not verify the git sha1,
    # so a fresh download silently returns the corrupted bytes under the unchanged etag/commit.
    server.tamper(REPO, "config.json", b'{"rank": 999, "evil": true}')
    assert server.commits(REPO)[0] == head  # no new commit
    assert Path(_download(server, "config.json", tmp_path / "fresh1")).read_bytes() == b'{"rank": 999, "evil": true}'
    # The already-populated cache is keyed by etag (unchanged) => it keeps returning the old, good bytes.
    assert Path(_download(server, "config.json", cache)).read_bytes() == populated["config"]
    # force_download=True re-fetches and overwrites the cached blob with the corrupted bytes.
    forced = _download(server, "config.json", cache, force_download=True)
    assert Path(forced).read_bytes() == b'{"rank": 999, "evil": true}'

    # LFS file, same size: the client checks only the size (X-Linked-Size vs received bytes), never the sha256
    # => corrupted bytes are returned silently. pvreg must hash downloads itself.
    weights = populated["weights"]
    same_size = bytes(b ^ 0xFF for b in weights)
    server.tamper(REPO, "adapter.safetensors", same_size)
    assert Path(_download(server, "adapter.safetensors", tmp_path / "fresh2")).read_bytes() == same_size

    # LFS file, different size: the client raises OSError("Consistency check failed: file should be of size ...").
    server.tamper(REPO, "adapter.safetensors", weights + b"extra")
    with pytest.raises(OSError, match="Consistency check failed"):
        _download(server, "adapter.safetensors", tmp_path / "fresh3")

    # Older commits are untouched by tamper().
    first_parent = server.commits(REPO)[1]
    assert server.file_bytes(REPO, ".gitattributes", revision=first_parent).startswith(b"*.7z")


def test_large_regular_extension_goes_lfs_and_snapshot_offline(server, api, tmp_path, monkeypatch):
    api.create_repo(REPO)
    big = os.urandom(10 * 1024 * 1024 + 1)  # > 10 MB => "lfs" even though it is not .safetensors
    small = b"x" * 100
    api.create_commit(
        REPO, [CommitOperationAdd("big.bin.json", big), CommitOperationAdd("small.bin", small)], commit_message="b"
    )
    tree = {f.path: f for f in api.list_repo_tree(REPO)}
    assert tree["big.bin.json"].lfs is not None and tree["small.bin"].lfs is None
    cache = tmp_path / "cache"
    snap = Path(snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=str(cache)))
    assert (snap / "big.bin.json").read_bytes() == big
    # Offline: snapshot_download answers from the cache (refs/main + cached tree listing), no request made.
    n = len(server.request_log)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert Path(snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=str(cache))) == snap
    assert len(server.request_log) == n


def test_bad_token_falls_back_to_cache_when_cached(server, api, populated, tmp_path):
    # Documented client behaviour: hf_hub_download treats a 401 on its HEAD call like "Hub unreachable" and returns
    # the cached copy (via refs/main) if there is one; it raises the 401 only when nothing is cached.
    cache = tmp_path / "cache"
    good = _download(server, "config.json", cache)
    assert _download(server, "config.json", cache, token="hf_wrong") == good
    with pytest.raises(HfHubHTTPError) as exc:
        _download(server, "adapter.safetensors", cache, token="hf_wrong")
    assert exc.value.response.status_code == 401


def test_auth_disabled_mode(tmp_path, hf_env):
    with HubServer(tmp_path / "open") as srv:  # tokens=None: no auth at all, acting user is "user"
        anon = HfApi(endpoint=srv.url, token=False)
        assert anon.create_repo("prefs").repo_id == "user/prefs"  # no namespace => the acting user's
        anon.create_commit("user/prefs", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
        assert anon.list_repo_files("user/prefs") == [".gitattributes", "a.txt"]
        assert srv.file_bytes("user/prefs", "a.txt") == b"a"
