"""push / pull / remote ls against helpers.hubserver.HubServer, through the real huggingface_hub client.

Layout of every test: vectors are added to a *source* registry (``--registry src``) and pushed; pulls go into the
default registry (``PVREG_HOME``), which the ``snapshot`` fixture watches.  The client reads its settings into
``huggingface_hub.constants`` at import, so the fixture patches those as well as the environment.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import postgres
from helpers.cards import BEGIN, CARDS, END, owner_text
from helpers.cli import assert_terminal_safe, one_error_line
from helpers.factories import make_base, make_vector
from helpers.hubserver import HubError as ServerHubError
from helpers.hubserver import HubServer, NotAHub, _Handler, isolate_hf_client
from huggingface_hub import CommitOperationAdd, HfApi, constants
from pvreg.migrations import HEAD

TOKEN = "hf_dummy_token_123"
REPO = "alice/prefs"
HUB_ID = "acme/tiny-llama"


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    return isolate_hf_client(monkeypatch, tmp_path / "hf_home", token=TOKEN)


@pytest.fixture
def server(tmp_path, hf_env):
    with HubServer(tmp_path / "hubdata", tokens={TOKEN: "alice"}) as srv:
        yield srv


@pytest.fixture
def hub_base(tmp_path):
    d = tmp_path / "hub-base"
    tensors = make_base(d, seed=0, cfg={"_name_or_path": HUB_ID})
    return d, tensors


@pytest.fixture
def src(tmp_path, cli, hub_base):
    """A source registry with a, b, c (one version each); returns a helper to add more."""
    base_dir, tensors = hub_base
    root = tmp_path / "src"
    counter = iter(range(100, 1000))

    def add(name, *, seed=None, dataset=None, sign=None):
        f = tmp_path / "files" / f"{name}-{next(counter)}.safetensors"
        make_vector(f, tensors, seed=seed if seed is not None else next(counter))
        args = ["--registry", root, "add", name, "--vector", f, "--base", base_dir, "--json"]
        if dataset:
            args += ["--dataset", dataset]
        if sign is not None:
            args += ["--sign", str(sign)]
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    add.root = root  # type: ignore[attr-defined]
    add.base_dir = base_dir  # type: ignore[attr-defined]
    add.metas = {  # type: ignore[attr-defined]
        "a": add("a", seed=1, dataset="PKU-Alignment/PKU-SafeRLHF:helpful"),
        "b": add("b", seed=2, dataset="PKU-Alignment/PKU-SafeRLHF:harmless", sign=-1),
        "c": add("c", seed=3),
    }
    return add


def push(cli, server, src, *refs, extra=()):
    return cli("--registry", src.root, "push", *refs, "--repo", REPO, "--endpoint", server.url, *extra)


def pull(cli, server, spec=REPO, *extra, registry=None):
    pre = ["--registry", registry] if registry is not None else []
    return cli(*pre, "pull", spec, "--endpoint", server.url, *extra)


def local_shas(registry=None):
    from pvreg.registry.api import Registry

    with Registry.open(registry) as reg:
        return {m.ref: m.sha256 for m in reg.store.all_versions()}


# --- round trip ------------------------------------------------------------------------------------------------------


def test_push_three_then_pull_into_fresh_registry(server, src, cli):
    r = push(cli, server, src, "a", "b", "c", extra=["--create", "-m", "first vectors"])
    assert r.exit_code == 0, r.stderr
    commits = server.commits(REPO)
    assert len(commits) == 2  # the repo's initial commit + ONE commit with everything
    head = commits[0]
    assert head in r.stdout

    files = HfApi(endpoint=server.url, token=TOKEN).list_repo_files(REPO)
    assert sorted(files) == sorted([".gitattributes", "README.md"] + [f"{n}/{f}" for n in "abc"
                                                                     for f in ("vector.safetensors", "pvreg.json")])
    declared = json.loads(server.file_bytes(REPO, "b/pvreg.json"))
    assert declared["sha256"] == src.metas["b"]["sha256"] and declared["sign"] == -1
    assert declared["base"]["hub_id"] == HUB_ID and "local_path" not in declared["base"]

    pulled = pull(cli, server, REPO, "--json")
    assert pulled.exit_code == 0, pulled.stderr
    result = json.loads(pulled.stdout)
    assert result["commit_sha"] == head
    assert {v["meta"]["name"]: v["meta"]["sha256"] for v in result["vectors"]} == {
        n: m["sha256"] for n, m in src.metas.items()
    }
    assert local_shas() == {f"{n}@1": m["sha256"] for n, m in src.metas.items()}
    prov = result["vectors"][0]["meta"]["provenance"]["hub"]
    assert prov == {"endpoint": server.url, "repo": REPO, "revision": "main", "commit": head,
                    "path": "a/vector.safetensors", "remote_ref": "a@1"}

    from pvreg.registry.api import Registry

    with Registry.open(src.root) as reg:
        recs = reg.hub_records("a@1")
        assert [(x["direction"], x["repo"], x["revision"], x["commit_sha"], x["path"]) for x in recs] == [
            ("push", REPO, "main", head, "a/vector.safetensors")]
        assert reg.db_current() == HEAD
        assert reg.base_info(src.metas["a"]["base_fingerprint"]).hub_id == HUB_ID
    with Registry.open() as reg:
        assert [x["direction"] for x in reg.hub_records("b")] == ["pull"]
        # the pulled base keeps its public facts, not the publisher's local path
        base = reg.base_info(src.metas["a"]["base_fingerprint"])
        assert base.hub_id == HUB_ID and base.local_path is None

    card = server.file_bytes(REPO, "README.md").decode()
    front = card.split("---\n")[1]
    assert "library_name: pvreg" in front and "- pvreg\n" in front and "- preference-vector\n" in front
    assert f"base_model: {HUB_ID}" in front and "- PKU-Alignment/PKU-SafeRLHF\n" in front
    assert "<!-- pvreg:begin -->" in card and "<!-- pvreg:end -->" in card
    for n, m in src.metas.items():
        assert f"| {n} | 1 | {m['sign']:+d} |" in card and m["sha256"][:12] in card


def test_compose_identical_in_both_registries(server, src, cli, tmp_path):
    pytest.importorskip("pvreg.registry.merge.compose")
    assert push(cli, server, src, "a", "b", "c", extra=["--create"]).exit_code == 0
    assert pull(cli, server).exit_code == 0
    outs = []
    for i, reg_args in enumerate((["--registry", src.root], [])):
        out = tmp_path / f"merged{i}"
        r = cli(*reg_args, "compose", "a:1", "b:0.7", "c:0.3", "--base", src.base_dir, "--out", out, "-q")
        assert r.exit_code == 0, r.stderr
        outs.append(out)
    shards = sorted(p.name for p in outs[0].glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in outs[1].glob("*.safetensors"))
    for name in shards:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_python_api_and_hf_endpoint_env(server, src, monkeypatch):
    from pvreg.registry.api import Registry

    monkeypatch.setenv("HF_ENDPOINT", server.url)  # read by pvreg at call time, not at import
    with Registry.open(src.root) as reg:
        res = reg.push(["a"], REPO, create=True, token=TOKEN)
        assert res.committed and res.endpoint == server.url and res.created_repo
        secret = reg.push(["b"], "alice/secret", create=True, private=True)  # token from HF_TOKEN
        assert secret.created_repo and [v.ref for v in secret.vectors] == ["b@1"]
    api = HfApi(endpoint=server.url, token=TOKEN)
    assert api.model_info("alice/secret").private is True and api.model_info(REPO).private is False
    with Registry.open() as reg:
        listing = reg.remote_ls(REPO)
        assert [v.name for v in listing.vectors] == ["a"] and listing.vectors[0].local_refs == []
        got = reg.pull(REPO, as_name="helpful")
        assert got.vectors[0].meta.ref == "helpful@1" and got.vectors[0].registered
        assert reg.remote_ls(REPO).vectors[0].local_refs == ["helpful@1"]


# --- revisions, re-pull, offline -------------------------------------------------------------------------------------


def test_pull_older_revision(server, src, cli):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    first = server.commits(REPO)[0]
    v2 = src("a", seed=42)
    assert v2["version"] == 2
    assert push(cli, server, src, "a@2").exit_code == 0
    assert server.commits(REPO)[0] != first

    r = pull(cli, server, f"{REPO}@{first}", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["commit_sha"] == first
    assert local_shas() == {"a@1": src.metas["a"]["sha256"]}
    assert pull(cli, server).exit_code == 0
    assert local_shas() == {"a@1": src.metas["a"]["sha256"], "a@2": v2["sha256"]}

    # branch revisions: push to a new branch, pull from it
    v3 = src("a", seed=43)
    assert push(cli, server, src, "a@3", extra=["--revision", "dev", "--create"]).exit_code == 0
    assert pull(cli, server, f"{REPO}@dev", "--name", "a").exit_code == 0
    assert local_shas()["a@3"] == v3["sha256"]


def test_repull_is_noop_and_offline_repull_uses_cache(server, src, cli, snapshot, tmp_path, monkeypatch):
    assert push(cli, server, src, "a", "b", extra=["--create"]).exit_code == 0
    assert pull(cli, server).exit_code == 0
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 0 and r.stdout.count("already registered") == 2, r.stdout
    assert snapshot() == before

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(server.request_log)
    r = pull(cli, server)
    assert r.exit_code == 0, r.stderr
    assert snapshot() == before
    # a third, empty registry is served entirely from the cache
    fresh = tmp_path / "fresh"
    r = pull(cli, server, REPO, registry=fresh)
    assert r.exit_code == 0, r.stderr
    assert local_shas(fresh) == {"a@1": src.metas["a"]["sha256"], "b@1": src.metas["b"]["sha256"]}
    assert len(server.request_log) == n  # not one request while offline
    # offline and not cached: one clear line
    r = pull(cli, server, "alice/never-downloaded")
    assert r.exit_code == 1 and "offline" in one_error_line(r)


# --- integrity -------------------------------------------------------------------------------------------------------


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_tampered_blob_refused_and_nothing_registered(server, src, cli, snapshot):
    assert push(cli, server, src, "a", "b", extra=["--create"]).exit_code == 0
    server.tamper(REPO, "b/vector.safetensors", _flip_last_byte(server.file_bytes(REPO, "b/vector.safetensors")))
    assert cli("list").exit_code == 0  # create the (empty) target registry
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 1
    line = one_error_line(r)
    assert "b/vector.safetensors" in line and "sha256" in line
    assert snapshot() == before  # "a" was fine but is not registered either


def test_blob_of_other_size_refused(server, src, cli, snapshot):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    server.tamper(REPO, "a/vector.safetensors", server.file_bytes(REPO, "a/vector.safetensors") + b"\0" * 8)
    assert cli("list").exit_code == 0  # create the (empty) target registry
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 1 and "size" in one_error_line(r)
    assert snapshot() == before


@pytest.mark.parametrize("field,value", [("sha256", "0" * 64), ("dataset", "other/dataset"), ("sign", -1),
                                         ("base_fingerprint", "f" * 64)])
def test_pvreg_json_disagreeing_with_blob_refused(server, src, cli, snapshot, field, value):
    assert push(cli, server, src, "a", "c", extra=["--create"]).exit_code == 0
    declared = json.loads(server.file_bytes(REPO, "c/pvreg.json"))
    declared[field] = value
    server.tamper(REPO, "c/pvreg.json", json.dumps(declared).encode())
    assert cli("list").exit_code == 0  # create the (empty) target registry
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 1
    assert field in one_error_line(r) and "refused" in one_error_line(r)
    assert snapshot() == before


def test_blob_re_signed_with_matching_pvreg_json_still_refused(server, src, cli, snapshot, tmp_path):
    """A consistent lie (a's metadata, pvreg.json and embedded, over b's tensors) fails the canonical sha256."""
    from pvreg.registry.api import Registry
    from pvreg.registry.hub.layout import published
    from pvreg.registry.sources.exported import write_exported

    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    out = tmp_path / "fake.safetensors"
    with Registry.open(src.root) as reg:
        public, _ = published(reg, reg.resolve("a"))
        write_exported(reg.blob_path("b"), public, out)
    assert out.stat().st_size == len(server.file_bytes(REPO, "a/vector.safetensors"))  # same size: LFS check passes
    server.tamper(REPO, "a/vector.safetensors", out.read_bytes())
    assert cli("list").exit_code == 0
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 1 and "sha256" in one_error_line(r)
    assert snapshot() == before


# --- errors ----------------------------------------------------------------------------------------------------------


def test_missing_repo_revision_and_name(server, src, cli):
    r = pull(cli, server, "alice/missing")
    assert r.exit_code == 2 and "not found" in one_error_line(r)
    r = cli("remote", "ls", "alice/missing", "--endpoint", server.url)
    assert r.exit_code == 2 and "not found" in one_error_line(r)
    r = push(cli, server, src, "a")  # no --create
    assert r.exit_code == 2 and "--create" in one_error_line(r)
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    r = pull(cli, server, f"{REPO}@no-such-branch")
    assert r.exit_code == 2 and "revision" in one_error_line(r)
    r = pull(cli, server, REPO, "--name", "zzz")
    assert r.exit_code == 2 and "zzz" in one_error_line(r)
    r = pull(cli, server, "not-a-repo")
    assert r.exit_code == 2 and "OWNER/NAME" in one_error_line(r)


def test_bad_token_and_forbidden(server, src, cli, monkeypatch):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    bad = "hf_wrong_secret_value_987"
    monkeypatch.setenv("HF_TOKEN", bad)
    r = pull(cli, server)  # nothing cached yet: the 401 surfaces
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "401" in line and bad not in r.stderr + r.stdout
    r = push(cli, server, src, "b")
    assert r.exit_code == 2 and "401" in one_error_line(r) and bad not in r.stderr
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    r = cli("--registry", src.root, "push", "a", "--repo", "bob/prefs", "--create", "--endpoint", server.url)
    assert r.exit_code == 2 and "403" in one_error_line(r)


def test_unreachable_and_rate_limited(server, src, cli, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = cli("pull", REPO, "--endpoint", f"http://127.0.0.1:{port}")
    line = one_error_line(r)
    assert r.exit_code == 1 and ("cannot reach" in line or "could not be reached" in line), line
    r = cli("--registry", src.root, "push", "a", "--repo", REPO, "--endpoint", f"http://127.0.0.1:{port}")
    assert r.exit_code == 1 and "cannot reach" in one_error_line(r)

    original = _Handler._route

    def limited(self, method):
        raise ServerHubError(429, "Too many requests")

    monkeypatch.setattr(_Handler, "_route", limited)
    r = pull(cli, server)
    assert r.exit_code == 1 and "429" in one_error_line(r)
    r = push(cli, server, src, "a", extra=["--create"])
    assert r.exit_code == 1 and "429" in one_error_line(r)
    monkeypatch.setattr(_Handler, "_route", original)


# --- re-push, card, token hygiene, remote ls ------------------------------------------------------------------------


def test_repush_identical_creates_no_commit(server, src, cli):
    assert push(cli, server, src, "a", "b", extra=["--create"]).exit_code == 0
    n = len(server.commits(REPO))
    puts = list(server.lfs_put_oids)
    r = push(cli, server, src, "a", "b")
    assert r.exit_code == 0 and "no changes" in r.stdout and "no commit" in r.stdout
    r = push(cli, server, src, "b")  # a subset: the card still lists a and b, so nothing changes
    assert r.exit_code == 0 and "no changes" in r.stdout
    assert len(server.commits(REPO)) == n and server.lfs_put_oids == puts
    r = push(cli, server, src, "c")
    assert r.exit_code == 0 and "pushed c@1" in r.stdout
    assert len(server.commits(REPO)) == n + 1
    card = server.file_bytes(REPO, "README.md").decode()
    assert all(f"| {x} | 1 |" in card for x in "abc")
    r = push(cli, server, src, "a", "a@1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["committed"] is False
    src("a", seed=77)
    r = push(cli, server, src, "a@1", "a@2")
    assert r.exit_code == 2 and "one version per name" in one_error_line(r)


def test_card_keeps_owner_text(server, src, cli):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    card = server.file_bytes(REPO, "README.md").decode()
    front, body = card.split("---\n", 2)[1:]
    owned = ("---\n" + front.rstrip("\n") + "\nlicense: mit\n---\n"
             + "Intro written by the owner.\n\n" + body + "\n## Owner notes\n\nKeep *this* | exactly.\n")
    HfApi(endpoint=server.url, token=TOKEN).create_commit(
        REPO, [CommitOperationAdd("README.md", owned.encode())], commit_message="owner edits card")
    assert push(cli, server, src, "b").exit_code == 0
    new = server.file_bytes(REPO, "README.md").decode()
    assert new.startswith("---\n") and "license: mit" in new.split("---\n")[1]
    assert "Intro written by the owner.\n\n<!-- pvreg:begin -->" in new
    assert new.endswith("<!-- pvreg:end -->\n\n## Owner notes\n\nKeep *this* | exactly.\n")
    assert "| a | 1 |" in new and "| b | 1 |" in new
    # A card without markers: the section is appended, the owner's text stays first.
    HfApi(endpoint=server.url, token=TOKEN).create_commit(
        REPO, [CommitOperationAdd("README.md", b"# Mine\n\nHand-written.\n")], commit_message="replace card")
    assert push(cli, server, src, "c").exit_code == 0
    new = server.file_bytes(REPO, "README.md").decode()
    assert "\n# Mine\n\nHand-written.\n\n<!-- pvreg:begin -->" in new and "| c | 1 |" in new


def test_token_never_written_anywhere(server, src, cli):
    r1 = push(cli, server, src, "a", "b", extra=["--create"])
    r2 = pull(cli, server, REPO, "--json")
    r3 = cli("remote", "ls", REPO, "--endpoint", server.url, "--json")
    r4 = push(cli, server, src, "c", extra=["--revision", "missing-branch"])  # an error path
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0 and r4.exit_code == 2
    needle = TOKEN.encode()
    for res in (r1, r2, r3, r4):
        assert TOKEN not in res.stdout + res.stderr
    assert needle not in server.file_bytes(REPO, "README.md")
    for name in ("a", "b"):
        assert needle not in server.file_bytes(REPO, f"{name}/pvreg.json")
        assert needle not in server.file_bytes(REPO, f"{name}/vector.safetensors")
    for root in (src.root, Path(__import__("os").environ["PVREG_HOME"])):
        for f in root.rglob("*"):
            if f.is_file():
                assert needle not in f.read_bytes(), f
        con = sqlite3.connect(root / "registry.db")
        try:
            dump = "\n".join(con.iterdump())
        finally:
            con.close()
        assert TOKEN not in dump


def test_remote_ls_reads_only_metadata(server, src, cli):
    assert push(cli, server, src, "a", "b", "c", extra=["--create"]).exit_code == 0
    server.request_log.clear()
    r = cli("remote", "ls", REPO, "--endpoint", server.url)
    assert r.exit_code == 0, r.stderr
    rows = [ln.split()[0] for ln in r.stdout.splitlines()[1:]]
    assert rows == ["a", "b", "c"]
    assert src.metas["a"]["sha256"][:12] in r.stdout and HUB_ID in r.stdout
    assert not any("vector.safetensors" in path for method, path in server.request_log if method == "GET")
    assert any("pvreg.json" in path for method, path in server.request_log if method == "GET")
    # remote ls at an older revision
    first = server.commits(REPO)[0]
    src("a", seed=5)
    assert push(cli, server, src, "a@2").exit_code == 0
    r = cli("remote", "ls", f"{REPO}@{first}", "--endpoint", server.url, "--json")
    assert [v["version"] for v in json.loads(r.stdout)["vectors"] if v["name"] == "a"] == [1]


def test_migration_matches_models(tmp_path):
    """Alembic autogenerate sees no difference between the models and the migrated schema (hub_records too)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from pvreg.registry.api import Registry
    from pvreg.registry.storage.models import Base

    with Registry.open(tmp_path / "r") as reg:
        assert reg.db_current() == HEAD
        with reg.store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


# --- repo ids, endpoints that are not a Hub, cards that are not UTF-8 ---------------------------------------------------


REPO_IDS = ["alice/prefs", "a/b", "Alice_1/x.y-z", "_a/_b", "alice/a--b", "alice/x.git", "alice/..", "alice/a..b",
            "-alice/x", "alice/x-", "alice/.x", "alice/x.", "alice/" + "n" * 96, "alice/" + "n" * 97, "o" * 97 + "/x",
            "alice", "a/b/c", "alice/", "/x", "alice/héllo", "alice/x y", "alice/x\x1b", "alice/git", "alice/.git"]


def test_repo_ids_follow_the_hub_clients_own_rules():
    """pvreg accepts exactly the OWNER/NAME ids huggingface_hub's validate_repo_id accepts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pvreg.registry.errors import UserError
    from pvreg.registry.hub.client import parse_repo

    def agree(repo_id: str) -> None:
        try:
            validate_repo_id(repo_id)
            client_ok = repo_id.count("/") == 1
        except HFValidationError:
            client_ok = False
        try:
            parse_repo(repo_id)
            ours = True
        except UserError as exc:
            ours = False
            assert "invalid Hub repo" in str(exc) or "revision" in str(exc)
        assert ours == client_ok, repo_id

    for repo_id in REPO_IDS:
        agree(repo_id)
    settings(max_examples=400, deadline=None)(given(st.text(alphabet="ab_-./Z9", max_size=12))(agree))()
    settings(max_examples=100, deadline=None)(
        given(st.integers(90, 100), st.integers(1, 3))(lambda n, k: agree("o" * k + "/" + "n" * n)))()


@pytest.mark.parametrize("repo_id,needle", [
    ("alice/a--b", "'--' or '..'"), ("alice/x.git", "ending in '.git'"), ("alice/..", "each starting and ending"),
    ("alice/" + "n" * 97, "NAME is 97 characters (at most 96)"), ("-alice/x", "each starting and ending"),
])
def test_bad_repo_ids_are_usage_errors_for_every_command(server, src, cli, repo_id, needle):
    n = len(server.request_log)
    ep = ["--endpoint", server.url]
    for argv in (["--registry", src.root, "push", "a", f"--repo={repo_id}", "--create", *ep],
                 ["pull", *ep, "--", repo_id], ["remote", "ls", *ep, "--", repo_id]):
        r = cli(*argv)
        assert r.exit_code == 2, r.stderr
        line = one_error_line(r)
        assert "invalid Hub repo" in line and needle in line, line
    assert len(server.request_log) == n  # refused before any request


@pytest.fixture(params=[200, 404], ids=["html-page", "404-everything"])
def not_a_hub(request, hf_env):
    srv = NotAHub(request.param)
    yield srv
    srv.stop()


def test_endpoint_that_is_not_a_hub(not_a_hub, src, cli, snapshot):
    assert cli("list").exit_code == 0
    before = snapshot()
    for argv in (["pull", REPO], ["remote", "ls", REPO], ["--registry", src.root, "push", "a", "--repo", REPO],
                 ["--registry", src.root, "push", "a", "--repo", REPO, "--create"]):
        r = cli(*argv, "--endpoint", not_a_hub.url)
        assert r.exit_code == 2, (argv, r.stdout, r.stderr)
        line = one_error_line(r)
        assert "does not look like a Hugging Face Hub" in line and not_a_hub.url in line and "internal" not in line
    assert snapshot() == before


def _raw_commit(server, files: dict[str, bytes]) -> None:
    """A commit posted to the Hub's commit API directly (NDJSON), bypassing the client's own checks."""
    import base64

    import httpx2

    lines = [{"key": "header", "value": {"summary": "raw commit"}}] + [
        {"key": "file", "value": {"path": p, "content": base64.b64encode(d).decode(), "encoding": "base64"}}
        for p, d in files.items()]
    r = httpx2.post(f"{server.url}/api/models/{REPO}/commit/main", headers={"Authorization": f"Bearer {TOKEN}"},
                    content="\n".join(json.dumps(x) for x in lines).encode())
    assert r.status_code == 200, r.text


def test_non_utf8_card_refuses_push_and_is_left_alone(server, src, cli):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    latin1 = "# Modèle\n\nÉcrit à la main.\n".encode("latin-1")
    _raw_commit(server, {"README.md": latin1})  # the client itself refuses to upload a non-UTF-8 README
    n = len(server.commits(REPO))
    from pvreg.registry.api import Registry

    with Registry.open(src.root) as reg:
        records = len(reg.hub_records("b"))
    r = push(cli, server, src, "b")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "README.md" in line and "not UTF-8" in line and "0xe8" in line, line
    assert len(server.commits(REPO)) == n and server.file_bytes(REPO, "README.md") == latin1
    with Registry.open(src.root) as reg:
        assert len(reg.hub_records("b")) == records


# --- names and text from a Hub repo ------------------------------------------------------------------------------------


def _copy_as(server, src_name: str, folder: str, **changes) -> None:
    """Commit a copy of ``src_name``'s pvreg.json under ``folder/`` (blob too), with fields of pvreg.json changed."""
    doc = json.loads(server.file_bytes(REPO, f"{src_name}/pvreg.json"))
    doc.update(changes)
    HfApi(endpoint=server.url, token=TOKEN).create_commit(REPO, [
        CommitOperationAdd(f"{folder}/pvreg.json", json.dumps(doc).encode()),
        CommitOperationAdd(f"{folder}/vector.safetensors", server.file_bytes(REPO, f"{src_name}/vector.safetensors")),
    ], commit_message=f"add {folder!r}")


def test_hostile_remote_entries_are_listed_escaped_and_never_pulled(server, src, cli, snapshot):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    evil = "Evil\x1b]0;pwned\x07 Name\u202e"
    _copy_as(server, "a", evil, name=evil, dataset="ds\x1b[2J")
    r = cli("remote", "ls", REPO, "--endpoint", server.url)
    assert r.exit_code == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert "\\x1b]0;pwned\\x07" in r.stdout and "ds\\x1b[2J" in r.stdout
    listed = json.loads(cli("remote", "ls", REPO, "--endpoint", server.url, "--json").stdout)["vectors"]
    assert {v["name"] for v in listed} == {"a", evil}  # JSON keeps the exact text

    assert cli("list").exit_code == 0
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "the folder's name is not a valid vector name" in line and "may only contain" in line
    assert_terminal_safe(r.stderr)
    assert snapshot() == before  # 'a' was fine, but nothing of the pull is registered
    r = pull(cli, server, REPO, "--name", "a")  # the valid one on its own
    assert r.exit_code == 0 and local_shas() == {"a@1": src.metas["a"]["sha256"]}


def test_vector_with_a_stored_name_that_is_not_valid_is_not_pushed(server, src, cli, tmp_path):
    """A name an older pvreg let in (from a forged export) cannot become a path outside the work dir."""
    from pvreg.registry.storage import tables
    from sqlalchemy import create_engine, update

    engine = create_engine(f"sqlite:///{src.root / 'registry.db'}")
    with engine.begin() as conn:
        conn.execute(update(tables.vectors).where(tables.vectors.c.name == "c").values(name="../../evil"))
    engine.dispose()
    r = cli("--registry", src.root, "push", f"sha256:{src.metas['c']['sha256'][:16]}", "--repo", REPO,
            "--create", "--endpoint", server.url)
    assert r.exit_code == 2
    assert "stored name is not a valid vector name" in one_error_line(r)
    assert not [p for p in tmp_path.rglob("evil*")]
    assert not server.repo_exists(REPO)


# --- pull is all or nothing, on every backend ----------------------------------------------------------------------


def _fail_inserts_of(name: str) -> None:
    """A real database failure: a trigger that makes inserting vector ``name`` fail (SQLite or PostgreSQL)."""
    from pvreg.registry.settings import Settings
    from sqlalchemy import create_engine, text

    url = Settings.resolve().database_url
    engine = create_engine(url)
    with engine.begin() as conn:
        if url.startswith("sqlite"):
            conn.execute(text(f"CREATE TRIGGER boom BEFORE INSERT ON vectors WHEN NEW.name = '{name}' "
                              "BEGIN SELECT abs(-9223372036854775808); END"))
        else:
            conn.execute(text(f"CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.name = '{name}' THEN "
                              "RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER boom BEFORE INSERT ON vectors FOR EACH ROW EXECUTE FUNCTION boom()"))
    engine.dispose()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_pull_registers_nothing_when_a_later_row_fails(server, src, cli, snapshot, monkeypatch, request, db):
    """a, b and c are pulled in one transaction: b's insert failing leaves no trace of a (rows or blob)."""
    assert push(cli, server, src, "a", "b", "c", extra=["--create"]).exit_code == 0
    if db == "postgres":  # only the pulling registry moves to PostgreSQL; src stays on its own SQLite file
        if not postgres.POSTGRES_URL:
            pytest.skip("PostgreSQL not configured (set PVREG_TEST_POSTGRES_URL)")
        name, url = postgres.create_database()
        request.addfinalizer(lambda: postgres.drop_database(name))
        monkeypatch.setenv("PVREG_DATABASE_URL", url)
    assert cli("list").exit_code == 0
    _fail_inserts_of("b")
    before = snapshot()
    r = pull(cli, server)
    assert r.exit_code == 1
    one_error_line(r)
    assert snapshot() == before
    assert pull(cli, server, REPO, "--name", "a", "--name", "c").exit_code == 0  # the same path works otherwise
    assert local_shas() == {"a@1": src.metas["a"]["sha256"], "c@1": src.metas["c"]["sha256"]}


# --- the model card: idempotent re-push after the owner broke the markers (rendering: unit/test_cards.py) -----


@pytest.mark.parametrize("kind", ["end-before-begin", "duplicated-sections", "only-begin", "only-end"])
def test_repush_after_owner_broke_the_markers_is_idempotent(server, src, cli, kind):
    assert push(cli, server, src, "a", extra=["--create"]).exit_code == 0
    HfApi(endpoint=server.url, token=TOKEN).create_commit(
        REPO, [CommitOperationAdd("README.md", CARDS[kind].encode())], commit_message="owner edits card")
    r = push(cli, server, src, "a", "b")
    assert r.exit_code == 0 and "pushed b@1" in r.stdout, r.stdout
    n = len(server.commits(REPO))
    card = server.file_bytes(REPO, "README.md").decode()
    assert card.count(BEGIN) == 1 and card.count(END) == 1 and owner_text(card) == owner_text(CARDS[kind])
    for _ in range(2):
        r = push(cli, server, src, "a", "b")
        assert r.exit_code == 0 and "no changes" in r.stdout, r.stdout
    assert len(server.commits(REPO)) == n and server.file_bytes(REPO, "README.md").decode() == card
