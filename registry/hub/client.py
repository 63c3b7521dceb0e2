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
  place, :func:`map_error`.
* The client does not verify downloads, so ``pull`` re-canonicalises every
  blob and checks its sha256 against both ``pvreg.json`` and the embedded
  metadata.  All requested vectors are validated (into a private staging
  store) before any is registered: a bad file registers nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pvreg.registry.errors import (
    HubAuthError,
    HubEndpointError,
    HubError,
    HubNotFoundError,
    IntegrityError,
    PvregError,
    UserError,
    opt,
)
from pvreg.registry.text import printable

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"

# One part (owner or name) of a repo id, as huggingface_hub's ``validate_repo_id`` accepts it
# (its REPO_ID_REGEX with re.ASCII): 1-96 of [A-Za-z0-9_.-], starting and ending with [A-Za-z0-9_].
REPO_PART_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
REPO_PART_MAX = 96


# --- endpoint, repo and error handling -------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL: ``endpoint`` > ``$HF_ENDPOINT`` (read now) > huggingface.co."""
    ep = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    ep = ep.strip().rstrip("/")
    if not ep.startswith(("http://", "https://")):
        raise UserError(f"invalid Hub endpoint {public_url(ep)!r}: expected an http(s):// URL")
    return ep


def public_url(url: str) -> str:
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
        why = (
            "expected OWNER/NAME of letters, digits, '-', '_' and '.', each starting and ending with "
            "a letter, digit or '_'"
        )
    elif "--" in repo_id or ".." in repo_id:
        why = "the Hub does not allow '--' or '..' in a repo id"
    elif repo_id.endswith(".git"):
        why = "the Hub does not allow a repo id ending in '.git'"
    if why is not None:
        raise UserError(f"invalid Hub repo {printable(repo_id)}: {why}")
    return repo_id


@dataclass
class Call:
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


def map_error(exc: BaseException, ctx: Call) -> PvregError | None:
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
        import httpx as _http  # type: ignore[no-redef]  # one name for whichever transport is installed

    from huggingface_hub.errors import HFValidationError

    head = f"{ctx.action} {ctx.where}"
    ep = public_url(ctx.endpoint)
    not_a_hub = f"it does not look like a Hugging Face Hub (check {opt('endpoint')} or HF_ENDPOINT)"
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
            mapped = map_error(cause, ctx)
            if mapped is not None:
                return mapped
        return HubError(f"{head}: the files are not in the local Hugging Face cache and {ep} could not be reached")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{head}: offline mode (HF_HUB_OFFLINE) is on")
    if isinstance(exc, RevisionNotFoundError):
        return HubNotFoundError(
            f"{head}: revision {ctx.revision or DEFAULT_REVISION!r} not found in {ctx.repo} on {ep}"
        )
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
                return HubEndpointError(
                    f"{head}: {ep} answered HTTP 404 ({ctype or 'no content type'}) to an API request: {not_a_hub}"
                )
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
def mapped_errors(ctx: Call) -> Iterator[None]:
    try:
        yield
    except PvregError:
        raise
    except Exception as exc:
        mapped = map_error(exc, ctx)
        if mapped is None:
            raise
        raise mapped from None


def hf_module() -> Any:
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a declared dependency
        raise HubError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    return huggingface_hub


@contextlib.contextmanager
def progress_bars(*, never: bool = False) -> Iterator[None]:
    """The client's progress bars only on an interactive terminal (stderr stays clean in scripts).

    ``never``: none at all, whatever the terminal (``train`` draws its own bar while transformers'
    ``save_pretrained`` would draw the client's "Writing model shards" one).

    The client's log warnings (e.g. "No files matched allow_patterns") are silenced too: they would
    add lines to pvreg's one-line errors; every failure reaches the user through :func:`map_error`.
    """
    import sys

    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from huggingface_hub.utils import logging as hf_logging

    quiet = never or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
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


# --- database records ----------------------------------------------------------------------


# --- push ----------------------------------------------------------------------------------


# --- pull ----------------------------------------------------------------------------------


# --- remote ls -----------------------------------------------------------------------------
