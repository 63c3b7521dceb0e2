"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

The real ``huggingface_hub`` client (``HfApi``, ``hf_hub_download``, ``snapshot_download``) can talk to it over
127.0.0.1. It implements the routes huggingface_hub 2.x actually calls for the workflows pvreg needs:

* ``POST /api/repos/create`` / ``DELETE /api/repos/delete`` / ``PUT /api/{type}s/{repo}/settings``
* ``GET /api/whoami-v2``
* ``GET /api/{type}s/{repo}`` and ``GET /api/{type}s/{repo}/revision/{rev}`` (``?blobs=true`` adds file metadata)
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``; single page, no pagination)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``
* ``GET /api/{type}s/{repo}/refs`` and ``GET /api/{type}s/{repo}/commits/{rev}`` (single page)
* ``POST /api/{type}s/{repo}/preupload/{rev}`` (``.safetensors`` or > 10 MB -> "lfs", else "regular")
* ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON: header, file, lfsFile, deletedFile, deletedFolder)
* ``POST|DELETE /api/{type}s/{repo}/branch/{branch}``, ``POST /api/{type}s/{repo}/tag/{rev}``,
  ``DELETE /api/{type}s/{repo}/tag/{tag}``
* ``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer only), the upload ``PUT`` it hands out (sha256 and
  size are verified), and ``POST /{repo}.git/info/lfs/objects/verify``
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size``
  (LFS files) and single ``Range`` support.

Not supported: Xet (``/xet-*-token``; set ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``), multipart LFS
uploads, pull requests (``create_pr``), cross-repo copies, gated repos, pagination, web (non-API) pages.

Storage: every repo keeps every commit (path -> ``FileEntry``) so old revisions stay resolvable. File contents live
under ``root/blobs/<sha256>`` (content addressed); ``tamper()`` points one entry of the head commit at a different file
under ``root/tampered/`` while keeping its advertised oid/sha256/size.

Auth: ``tokens`` maps token -> username. When ``tokens`` is None auth is disabled (everything is allowed, the acting
user is ``"user"``). Otherwise: a bearer token that is not in ``tokens`` gets 401 on *any* request (with
``X-Error-Message: Invalid credentials in Authorization header``, which the client maps to a plain
``HfHubHTTPError``); a user may write to repos in its own namespace or in an org it belongs to (``orgs``); private repos
are visible only to those users (anonymous -> 401 + ``X-Error-Code: RepoNotFound``, other users -> 404 RepoNotFound).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
import types
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "FileEntry", "Commit", "NotAHub", "isolate_hf_client"]

LFS_THRESHOLD = 10 * 1024 * 1024  # files strictly larger than this go through LFS
LFS_SUFFIXES: tuple[str, ...] = (".safetensors",)
REGEX_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_TYPE_PREFIX = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


# --------------------------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """git's blob sha1 (``git hash-object``), what the Hub uses as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    kind: str  # "regular" | "lfs"
    size: int  # advertised size of the content
    git_oid: str  # git blob sha1 (of the content for regular files, of the pointer file for LFS files)
    sha256: str  # sha256 of the content (the LFS oid for LFS files)
    blob: Path  # where the served bytes are stored

    @property
    def etag(self) -> str:
        return self.sha256 if self.kind == "lfs" else self.git_oid


@dataclass(frozen=True)
class Commit:
    oid: str
    parents: tuple[str, ...]
    files: Mapping[str, FileEntry]
    title: str
    message: str
    author: str
    date: float


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: float
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (sha256 hex)
    gated: bool | str = False

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


class HubError(Exception):
    """Raised inside handlers; turned into an HTTP error response the client understands."""

    def __init__(self, status: int, message: str, code: str | None = None, extra_headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra_headers = extra_headers or {}
        self.body = body


# --------------------------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer):
        self.hub = hub
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address):  # track keep-alive connections so stop() can close them
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass


class HubServer:
    """In-process Hub-compatible server. See module docstring for supported routes and semantics."""

    def __init__(
        self,
        root: Path,
        *,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        lfs_threshold: int = LFS_THRESHOLD,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
    ):
        self.root = Path(root)
        self.tokens = dict(tokens) if tokens is not None else None
        self.orgs = {k: set(v) for k, v in (orgs or {}).items()}
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = tuple(lfs_suffixes)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._counter = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # Inspection helpers for tests
        self.request_log: list[tuple[str, str]] = []  # (method, path-with-query) of every request received
        self.lfs_batch_oids: list[str] = []  # oids the client asked about in upload batch requests
        self.lfs_put_oids: list[str] = []  # oids whose content was actually PUT (and verified)
        for sub in ("blobs", "tampered", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        self._httpd = _Server(self)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="HubServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_all_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers -------------------------------------------------------------------------------------------------
    def commits(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        """Commit shas reachable from `revision` (first-parent history), newest first."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            return [c.oid for c in self._history(repo, self._resolve_rev(repo, revision))]

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "model") -> bytes:
        """Bytes the server would serve for `path` at `revision`."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            entry = self._resolve_rev(repo, revision).files.get(path)
            if entry is None:
                raise KeyError(path)
            return entry.blob.read_bytes()

    def tamper(self, repo_id: str, path: str, new_bytes: bytes, *, repo_type: str = "model") -> None:
        """Replace the stored content of `path` at the current head of `main` without a new commit and without
        changing the advertised oid/sha256/size/etag (simulates storage corruption). Older commits are unaffected."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            head = repo.commits[repo.branches["main"]]
            entry = head.files.get(path)
            if entry is None:
                raise KeyError(path)
            target = self.root / "tampered" / uuid.uuid4().hex
            target.write_bytes(new_bytes)
            files = dict(head.files)
            files[path] = dataclasses.replace(entry, blob=target)
            repo.commits[head.oid] = dataclasses.replace(head, files=types.MappingProxyType(files))

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    # -- internals: storage -------------------------------------------------------------------------------------------
    def _next_counter(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _store_bytes(self, data: bytes) -> tuple[Path, str]:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / sha
        if not path.exists():
            tmp = self.root / "tmp" / uuid.uuid4().hex
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path, sha

    def _get_repo_raw(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve_rev(self, repo: _Repo, revision: str | None) -> Commit:
        rev = revision or "main"
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/"):]
        elif rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/"):]
        oid = repo.branches.get(rev) or repo.tags.get(rev)
        if oid is None and REGEX_SHA1.match(rev) and rev in repo.commits:
            oid = rev
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _history(self, repo: _Repo, commit: Commit) -> list[Commit]:
        out = []
        cur: Commit | None = commit
        while cur is not None:
            out.append(cur)
            cur = repo.commits[cur.parents[0]] if cur.parents else None
        return out

    def _make_commit(self, repo: _Repo, parent: Commit | None, files: dict[str, FileEntry], title: str,
                     message: str, author: str) -> Commit:
        now = time.time()
        listing = "\n".join(f"{p} {e.git_oid}" for p, e in sorted(files.items()))
        raw = f"{repo.repo_type}/{repo.repo_id}\n{parent.oid if parent else ''}\n{listing}\n{title}\n{message}\n" \
              f"{time.time_ns()}\n{self._next_counter()}"
        oid = hashlib.sha1(raw.encode()).hexdigest()
        commit = Commit(oid=oid, parents=(parent.oid,) if parent else (), files=types.MappingProxyType(dict(files)),
                        title=title, message=message, author=author, date=now)
        repo.commits[oid] = commit
        return commit

    def _regular_entry(self, data: bytes) -> FileEntry:
        blob, sha = self._store_bytes(data)
        return FileEntry(kind="regular", size=len(data), git_oid=git_blob_oid(data), sha256=sha, blob=blob)

    def _lfs_entry(self, sha256: str, size: int) -> FileEntry:
        return FileEntry(kind="lfs", size=size, git_oid=git_blob_oid(lfs_pointer(sha256, size)), sha256=sha256,
                         blob=self.root / "blobs" / sha256)

    def _upload_mode(self, path: str, size: int) -> str:
        if size > self.lfs_threshold or path.endswith(self.lfs_suffixes):
            return "lfs"
        return "regular"

    # -- internals: auth ----------------------------------------------------------------------------------------------
    def _user_from_header(self, authorization: str | None) -> str | None:
        if self.tokens is None:
            return "user"
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _may_write_namespace(self, user: str | None, namespace: str) -> bool:
        if self.tokens is None:
            return True
        return user is not None and (user == namespace or user in self.orgs.get(namespace, set()))

    def _check_read(self, repo: _Repo, user: str | None) -> None:
        if repo.private and not self._may_write_namespace(user, repo.namespace):
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")

    def _check_write(self, repo: _Repo, user: str | None) -> None:
        self._check_read(repo, user)
        if not self._may_write_namespace(user, repo.namespace):
            if user is None:
                raise HubError(401, "You must be authenticated to access this resource")
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")

    # -- internals: JSON views ----------------------------------------------------------------------------------------
    def _file_json(self, path: str, e: FileEntry) -> dict:
        d: dict[str, Any] = {"type": "file", "oid": e.git_oid, "size": e.size, "path": path}
        if e.kind == "lfs":
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        return d

    def _tree_oid(self, commit: Commit, folder: str) -> str:
        prefix = folder + "/"
        listing = "\n".join(f"{p} {e.git_oid}" for p, e in sorted(commit.files.items()) if p.startswith(prefix))
        return hashlib.sha1(f"tree {folder}\n{listing}".encode()).hexdigest()

    def _last_commit(self, repo: _Repo, commit: Commit, path: str, is_dir: bool) -> dict:
        def state(c: Commit):
            if is_dir:
                return tuple(sorted((p, e.git_oid) for p, e in c.files.items() if p.startswith(path + "/")))
            e = c.files.get(path)
            return e.git_oid if e else None

        history = self._history(repo, commit)
        last = history[0]
        for older in history[1:]:
            if state(older) != state(last):
                break
            last = older
        return {"id": last.oid, "title": last.title, "date": _iso(last.date)}

    def _entries(self, repo: _Repo, commit: Commit, base: str, recursive: bool, expand: bool) -> list[dict]:
        base = base.strip("/")
        prefix = base + "/" if base else ""
        files: list[dict] = []
        dirs: set[str] = set()
        for path, entry in commit.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                d = self._file_json(path, entry)
                if expand:
                    d["lastCommit"] = self._last_commit(repo, commit, path, is_dir=False)
                files.append(d)
        out = []
        for d in sorted(dirs):
            item = {"type": "directory", "oid": self._tree_oid(commit, d), "size": 0, "path": d}
            if expand:
                item["lastCommit"] = self._last_commit(repo, commit, d, is_dir=True)
            out.append(item)
        out.extend(sorted(files, key=lambda x: x["path"]))
        return out

    def _repo_info_json(self, repo: _Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path, e in sorted(commit.files.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s["size"] = e.size
                s["blobId"] = e.git_oid
                if e.kind == "lfs":
                    s["lfs"] = {"size": e.size, "sha256": e.sha256, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
            siblings.append(s)
        info = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = "static"
        return info

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_URL_PREFIX.get(repo_type, '')}{repo_id}"


# --------------------------------------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms Nagle/delayed-ACK stalls
    server_version = "pvreg-hubserver/1.0"
    server: _Server

    # Silence default stderr logging
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._body_consumed = False
        self.hub.request_log.append((method, self.path))
        try:
            self._route(method)
        except HubError as err:
            self._drain_body()
            self._send_error(err, method)
        except Exception as exc:  # pragma: no cover - programming errors surface as 400 (5xx would be retried)
            self._drain_body()
            self._send_error(HubError(400, f"Internal test-server error: {exc!r}"), method)
            raise

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked)."""
        self._body_consumed = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def _read_body(self) -> bytes:
        return b"".join(self._iter_body())

    def _drain_body(self) -> None:
        if not getattr(self, "_body_consumed", False):
            for _ in self._iter_body():
                pass

    def _json_body(self) -> Any:
        raw = self._read_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "GET",
              content_type: str = "application/json; charset=utf-8") -> None:
        self._drain_body()
        self.send_response(status)
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body)),
                "X-Request-Id": self.headers.get("X-Amzn-Trace-Id") or uuid.uuid4().hex}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, method: str = "GET", headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers, method=method)

    def _send_error(self, err: HubError, method: str) -> None:
        headers = {"X-Error-Message": err.message.replace("\n", " ")}
        if err.code:
            headers["X-Error-Code"] = err.code
        headers.update(err.extra_headers)
        body = err.body if err.body is not None else {"error": err.message}
        self._send_json(body, status=err.status, method=method, headers=headers)

    # -- routing ------------------------------------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query, keep_blank_values=True)
        segs = [unquote(s) for s in parts.path.split("/")[1:]]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        user = self.hub._user_from_header(self.headers.get("Authorization"))

        if segs[:1] == ["__lfs_upload"] and method == "PUT" and len(segs) == 2:
            return self._lfs_put(segs[1])
        if segs[:1] == ["api"]:
            return self._route_api(method, segs[1:], user)

        # Git/LFS and resolve routes: /[datasets|spaces/]{ns}/{name}[.git]/...
        repo_type = "model"
        rest = segs
        if rest and rest[0] in _TYPE_PREFIX:
            repo_type = _TYPE_PREFIX[rest[0]]
            rest = rest[1:]
        if len(rest) >= 3:
            ns, name, tail = rest[0], rest[1], rest[2:]
            if name.endswith(".git") and tail[:3] == ["info", "lfs", "objects"] and method == "POST":
                repo_id = f"{ns}/{name[:-4]}"
                if tail[3:] == ["batch"]:
                    return self._lfs_batch(repo_type, repo_id, user)
                if tail[3:] == ["verify"]:
                    return self._lfs_verify(repo_type, repo_id, user)
            if tail[0] == "resolve" and len(tail) >= 3 and method in ("GET", "HEAD"):
                return self._resolve(method, repo_type, f"{ns}/{name}", tail[1], "/".join(tail[2:]), user)
        raise HubError(404, f"Not found: {parts.path}")

    def _route_api(self, method: str, segs: list[str], user: str | None) -> None:
        hub = self.hub
        if segs == ["whoami-v2"] and method == "GET":
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            orgs = [{"name": o, "type": "org"} for o, members in hub.orgs.items() if user in members]
            return self._send_json({"type": "user", "id": user, "name": user, "fullname": user, "orgs": orgs,
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if segs == ["validate-yaml"] and method == "POST":
            # The client validates a README's front matter before committing it; accept any YAML text.
            payload = self._json_body()
            if not isinstance(payload.get("content"), str):
                raise HubError(400, "validate-yaml needs a 'content' string")
            return self._send_json({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo(user)
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(user)
        if len(segs) < 3 or segs[0] not in _API_TYPES:
            raise HubError(404, f"Not found: /api/{'/'.join(segs)}")
        repo_type = _API_TYPES[segs[0]]
        repo_id = f"{segs[1]}/{segs[2]}"
        tail = segs[3:]
        with hub._lock:
            repo = hub._get_repo_raw(repo_type, repo_id)
            hub._check_read(repo, user)
        action = tail[0] if tail else None
        if action is None and method == "GET":
            return self._repo_info(repo, None)
        if action == "revision" and len(tail) == 2 and method == "GET":
            return self._repo_info(repo, tail[1])
        if action == "tree" and len(tail) >= 2 and method == "GET":
            return self._tree(repo, tail[1], "/".join(tail[2:]))
        if action == "paths-info" and len(tail) == 2 and method == "POST":
            return self._paths_info(repo, tail[1])
        if action == "refs" and len(tail) == 1 and method == "GET":
            return self._refs(repo)
        if action == "commits" and len(tail) == 2 and method == "GET":
            return self._list_commits(repo, tail[1])
        if action == "preupload" and len(tail) == 2 and method == "POST":
            hub._check_write(repo, user)
            return self._preupload(repo, tail[1])
        if action == "commit" and len(tail) == 2 and method == "POST":
            hub._check_write(repo, user)
            return self._commit(repo, tail[1], user)
        if action == "branch" and len(tail) == 2 and method in ("POST", "DELETE"):
            hub._check_write(repo, user)
            return self._branch(method, repo, tail[1])
        if action == "tag" and len(tail) == 2 and method in ("POST", "DELETE"):
            hub._check_write(repo, user)
            return self._tag(method, repo, tail[1])
        if action == "settings" and len(tail) == 1 and method == "PUT":
            hub._check_write(repo, user)
            return self._settings(repo)
        raise HubError(404, f"Not found: /api/{'/'.join(segs)}")

    # -- repos --------------------------------------------------------------------------------------------------------
    def _create_repo(self, user: str | None) -> None:
        hub = self.hub
        payload = self._json_body()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        name = payload.get("name")
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        namespace = payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{namespace}/{name}"
        if "visibility" in payload:
            private = payload["visibility"] == "private"
        else:
            private = bool(payload.get("private", False))
        url = hub._repo_url(repo_type, repo_id)
        with hub._lock:
            if not hub._may_write_namespace(user, namespace):
                raise HubError(403, f"You don't have the rights to create a repo under the namespace '{namespace}'")
            if (repo_type, repo_id) in hub._repos:
                raise HubError(409, f"You already created this {repo_type} repo", body={
                    "error": f"You already created this {repo_type} repo", "url": url})
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=time.time())
            initial = hub._make_commit(repo, None, {".gitattributes": hub._regular_entry(_GITATTRIBUTES)},
                                       "initial commit", "", user)
            repo.branches["main"] = initial.oid
            hub._repos[(repo_type, repo_id)] = repo
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, user: str | None) -> None:
        hub = self.hub
        payload = self._json_body()
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload.get('name')}"
        repo_type = payload.get("type") or "model"
        with hub._lock:
            repo = hub._get_repo_raw(repo_type, repo_id)
            hub._check_write(repo, user)
            del hub._repos[(repo_type, repo_id)]
        self._send(200, b"", content_type="text/plain")

    def _settings(self, repo: _Repo) -> None:
        payload = self._json_body()
        with self.hub._lock:
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "gated" in payload:
                repo.gated = payload["gated"]
        self._send_json({})

    def _repo_info(self, repo: _Repo, revision: str | None) -> None:
        with self.hub._lock:
            commit = self.hub._resolve_rev(repo, revision)
            blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
            data = self.hub._repo_info_json(repo, commit, blobs)
        self._send_json(data)

    def _tree(self, repo: _Repo, revision: str, path: str) -> None:
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            commit = self.hub._resolve_rev(repo, revision)
            path = path.strip("/")
            if path and path in commit.files:
                entries = [self.hub._file_json(path, commit.files[path])]
            else:
                if path and not any(p.startswith(path + "/") for p in commit.files):
                    raise HubError(404, f"Entry not found: {path}", "EntryNotFound",
                                   {"X-Repo-Commit": commit.oid})
                entries = self.hub._entries(repo, commit, path, recursive, expand)
        self._send_json(entries)

    def _paths_info(self, repo: _Repo, revision: str) -> None:
        raw = self._read_body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            payload = json.loads(raw or b"{}")
            paths = payload.get("paths", [])
            expand = bool(payload.get("expand"))
        else:
            form = parse_qs(raw.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        out = []
        with self.hub._lock:
            commit = self.hub._resolve_rev(repo, revision)
            for p in paths:
                p = p.strip("/")
                if p in commit.files:
                    d = self.hub._file_json(p, commit.files[p])
                    if expand:
                        d["lastCommit"] = self.hub._last_commit(repo, commit, p, is_dir=False)
                    out.append(d)
                elif p == "" or any(f.startswith(p + "/") for f in commit.files):
                    d = {"type": "directory", "oid": self.hub._tree_oid(commit, p), "size": 0, "path": p}
                    if expand:
                        d["lastCommit"] = self.hub._last_commit(repo, commit, p, is_dir=True)
                    out.append(d)
        self._send_json(out)

    def _refs(self, repo: _Repo) -> None:
        with self.hub._lock:
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in sorted(repo.branches.items())]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in sorted(repo.tags.items())]
        self._send_json({"branches": branches, "converts": [], "tags": tags, "pullRequests": []})

    def _list_commits(self, repo: _Repo, revision: str) -> None:
        with self.hub._lock:
            history = self.hub._history(repo, self.hub._resolve_rev(repo, revision))
            data = [{"id": c.oid, "title": c.title, "message": c.message, "date": _iso(c.date),
                     "authors": [{"user": c.author}], "parents": list(c.parents)} for c in history]
        self._send_json(data)

    def _branch(self, method: str, repo: _Repo, branch: str) -> None:
        hub = self.hub
        if method == "POST":
            payload = self._json_body()
            with hub._lock:
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = hub._resolve_rev(repo, payload.get("startingPoint") or "main")
                repo.branches[branch] = start.oid
            return self._send_json({})
        with hub._lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
        self._send_json({})

    def _tag(self, method: str, repo: _Repo, name: str) -> None:
        hub = self.hub
        if method == "POST":
            payload = self._json_body()
            tag = payload.get("tag")
            if not tag:
                raise HubError(400, "Missing tag name")
            with hub._lock:
                target = hub._resolve_rev(repo, name)
                if tag in repo.tags:
                    raise HubError(409, f"Tag already exists: {tag}")
                repo.tags[tag] = target.oid
            return self._send_json({})
        with hub._lock:
            if name not in repo.tags:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del repo.tags[name]
        self._send_json({})

    # -- uploads ------------------------------------------------------------------------------------------------------
    def _preupload(self, repo: _Repo, revision: str) -> None:
        hub = self.hub
        if self.query.get("create_pr"):
            raise HubError(400, "create_pr is not supported by the test Hub server")
        payload = self._json_body()
        with hub._lock:
            commit = hub._resolve_rev(repo, revision)
            out = []
            for f in payload.get("files", []):
                path, size = f["path"], int(f.get("size", 0))
                mode = hub._upload_mode(path, size)
                existing = commit.files.get(path)
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.kind == "lfs" else existing.git_oid
                out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json({"files": out, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, user: str | None) -> None:
        hub = self.hub
        payload = self._json_body()
        with hub._lock:
            repo = hub._get_repo_raw(repo_type, repo_id)
            operation = payload.get("operation", "upload")
            if operation == "upload":
                hub._check_write(repo, user)
            else:
                hub._check_read(repo, user)
            if payload.get("ref", {}).get("name"):
                hub._resolve_rev(repo, payload["ref"]["name"])
            transfers = payload.get("transfers") or ["basic"]
            if "basic" not in transfers:
                raise HubError(422, "Only the 'basic' LFS transfer is supported")
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                    objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                    "error": {"code": 422, "message": "Invalid oid or size"}})
                    continue
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if operation == "upload":
                    hub.lfs_batch_oids.append(oid)
                    if oid not in repo.lfs_oids:
                        ticket = secrets.token_urlsafe(16)
                        hub._upload_tickets[ticket] = ((repo_type, repo_id), oid, size)
                        prefix = hub._repo_url(repo_type, repo_id)
                        item["actions"] = {
                            "upload": {"href": f"{hub.url}/__lfs_upload/{ticket}", "expires_in": 3600},
                            "verify": {"href": f"{prefix}.git/info/lfs/objects/verify", "expires_in": 3600},
                        }
                else:
                    if oid not in repo.lfs_oids:
                        item["error"] = {"code": 404, "message": "Object does not exist"}
                    else:
                        item["actions"] = {"download": {"href": f"{hub.url}/__lfs_download/{oid}"}}
                objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, ticket: str) -> None:
        hub = self.hub
        with hub._lock:
            info = hub._upload_tickets.get(ticket)
        if info is None:
            raise HubError(403, "Invalid or expired upload URL")
        repo_key, oid, size = info
        tmp = hub.root / "tmp" / uuid.uuid4().hex
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as f:
            for chunk in self._iter_body():
                h.update(chunk)
                n += len(chunk)
                f.write(chunk)
        if n != size or h.hexdigest() != oid:
            tmp.unlink(missing_ok=True)
            raise HubError(400, f"Uploaded content does not match oid/size (got sha256={h.hexdigest()} size={n})")
        dest = hub.root / "blobs" / oid
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)
        with hub._lock:
            repo = hub._repos.get(repo_key)
            if repo is not None:
                repo.lfs_oids.add(oid)
            hub.lfs_put_oids.append(oid)
        self._send(200, b"", content_type="text/plain")

    def _lfs_verify(self, repo_type: str, repo_id: str, user: str | None) -> None:
        hub = self.hub
        payload = self._json_body()
        with hub._lock:
            repo = hub._get_repo_raw(repo_type, repo_id)
            hub._check_write(repo, user)
            oid, size = payload.get("oid"), payload.get("size")
            blob = hub.root / "blobs" / str(oid)
            if oid not in repo.lfs_oids or not blob.exists() or blob.stat().st_size != size:
                raise HubError(404, f"LFS object {oid} not found or size mismatch")
        self._send_json({"success": True})

    def _commit(self, repo: _Repo, revision: str, user: str | None) -> None:
        hub = self.hub
        if self.query.get("create_pr"):
            raise HubError(400, "create_pr is not supported by the test Hub server")
        raw = self._read_body()
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary is required")
        description = header.get("description") or ""
        # Store regular blobs outside the lock (content addressed, idempotent)
        prepared: list[tuple[str, dict, FileEntry | None]] = []
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, "Only base64 encoding is supported for 'file' operations")
                data = base64.b64decode(value.get("content", ""))
                prepared.append((key, value, hub._regular_entry(data)))
            elif key in ("lfsFile", "deletedFile", "deletedFolder"):
                prepared.append((key, value, None))
            else:
                raise HubError(400, f"Unsupported commit operation: {key!r}")
        with hub._lock:
            if revision.startswith("refs/heads/"):
                revision = revision[len("refs/heads/"):]
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for key, value, entry in prepared:
                path = str(value.get("path", "")).strip("/") if key == "deletedFolder" else value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {value.get('path')!r}")
                if key == "file":
                    files[path] = entry  # type: ignore[assignment]
                elif key == "lfsFile":
                    oid = value.get("oid")
                    blob = hub.root / "blobs" / str(oid)
                    if oid not in repo.lfs_oids or not blob.exists():
                        raise HubError(400, f"LFS object {oid} for '{path}' was never uploaded to this repo")
                    size = blob.stat().st_size
                    if value.get("size") is not None and int(value["size"]) != size:
                        raise HubError(400, f"LFS object size mismatch for '{path}'")
                    files[path] = hub._lfs_entry(oid, size)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
            commit = hub._make_commit(repo, head, files, title, description, user or "user")
            repo.branches[revision] = commit.oid
        self._send_json({
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{hub._repo_url(repo.repo_type, repo.repo_id)}/commit/{commit.oid}",
            "pullRequestUrl": None,
        })

    # -- downloads ----------------------------------------------------------------------------------------------------
    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str, user: str | None) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo_raw(repo_type, repo_id)
            hub._check_read(repo, user)
            commit = hub._resolve_rev(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        blob = entry.blob
        actual = blob.stat().st_size
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"',
        }
        if entry.kind == "lfs":
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, actual - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), actual - 1) if m.group(2) else actual - 1
                else:
                    start = max(actual - int(m.group(2)), 0)
                if start >= actual or start > end:
                    raise HubError(416, "Requested range not satisfiable",
                                   extra_headers={"Content-Range": f"bytes */{actual}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{actual}"
        length = max(end - start + 1, 0)
        self._drain_body()
        self.send_response(status)
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(length)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD" or length == 0:
            return
        with open(blob, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def isolate_hf_client(monkeypatch: Any, home: Path, *, token: str | None = None) -> Path:
    """Point the real ``huggingface_hub`` client at a private cache, with Xet off.

    The client copies its settings into ``huggingface_hub.constants`` at import
    time, so the environment variables alone do nothing: the constants are
    patched as well.  ``token`` becomes ``HF_TOKEN`` (read at call time).
    """
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    return home


class NotAHub:
    """A plain web server at 127.0.0.1: every request gets an HTML page (``status``) -- not a Hub."""

    def __init__(self, status: int) -> None:
        page = b"<!doctype html><html><body>Welcome to nginx!</body></html>"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(page)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
