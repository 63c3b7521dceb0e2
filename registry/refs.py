"""Names and references: the grammar users type everywhere.

``NAME`` (latest active version), ``NAME@N``, ``NAME@ALIAS``, ``sha256:HEX``
(at least 8 hex digits).  Names and aliases are slugs so they are safe as
file and Hub path components: a name is a folder of a Hub repo, so it cannot
start with '.' (``.git``/``.cache`` are refused by the Hub, and hidden folders
would be skipped when a repo is read back).  The same rule applies to every
source of a name: the command line, exported files and Hub repos.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pvreg.registry.errors import (
    InvalidNameError,
    InvalidReferenceError,
    InvalidTextError,
)
from pvreg.registry.text import check_dataset, check_tags, check_text, printable

NAME_RE = re.compile(r"[a-z0-9_.-]{1,64}")
SHA_RE = re.compile(r"[0-9a-f]{8,64}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")


def check_name(name: str, *, what: str = "name") -> str:
    """Validate a vector name or alias (lowercase letters, digits, ``-_.``; 1-64 chars; no leading '.')."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("."):
        if isinstance(name, str) and len(name) > 64:
            why = f"is {len(name)} characters (at most 64)"
        elif not name:
            why = "is empty"
        elif isinstance(name, str) and NAME_RE.fullmatch(name):
            why = "cannot start with '.' (it must be usable as a Hub folder name)"
        else:
            why = "may only contain lowercase letters, digits, '-', '_' and '.'"
        raise InvalidNameError(f"invalid {what} {printable(str(name))}: {why}")
    return name


def check_alias(alias: str) -> str:
    """An alias: a name that is not all digits (``NAME@12`` must keep meaning version 12)."""
    check_name(alias, what="alias")
    if alias.isdigit():
        raise InvalidNameError(f"invalid alias {alias!r}: an alias cannot be a number (it would read as a version)")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference; exactly one of the selector fields is set (or none: latest)."""

    text: str
    name: str | None = None
    version: int | None = None
    alias: str | None = None
    sha_prefix: str | None = None


def parse_ref(text: str) -> Ref:
    if not isinstance(text, str) or not text:
        raise InvalidReferenceError("empty reference")
    if text.startswith("sha256:"):
        hexpart = text[len("sha256:") :].lower()
        if not SHA_RE.fullmatch(hexpart):
            raise InvalidReferenceError(f"invalid reference {printable(text)}: sha256: needs 8 to 64 hex digits")
        return Ref(text=text, sha_prefix=hexpart)
    name, sep, selector = text.partition("@")
    try:
        check_name(name)
    except InvalidNameError as exc:
        raise InvalidReferenceError(f"invalid reference {printable(text)}: {exc}") from None
    if not sep:
        return Ref(text=text, name=name)
    if selector.isdigit() and selector.isascii():
        version = int(selector)
        if version < 1:
            raise InvalidReferenceError(f"invalid reference {printable(text)}: versions start at 1")
        return Ref(text=text, name=name, version=version)
    try:
        check_name(selector, what="alias")
    except InvalidNameError as exc:
        raise InvalidReferenceError(f"invalid reference {printable(text)}: {exc}") from None
    return Ref(text=text, name=name, alias=selector)


def check_parent(ref: object, sha256: object, coefficient: object) -> None:
    """A lineage edge: ``name@version``, a full sha256, a finite coefficient or None."""
    try:
        parsed = parse_ref(ref) if isinstance(ref, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.version is None:
        raise InvalidTextError(f"invalid parent reference {printable(ref)}: expected NAME@VERSION")
    if not isinstance(sha256, str) or not HEX64_RE.fullmatch(sha256):
        raise InvalidTextError(f"invalid sha256 {printable(sha256)} of parent {ref}: expected 64 hex digits")
    if coefficient is not None and (not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient)):
        raise InvalidTextError(f"invalid coefficient {printable(coefficient)} of parent {ref}: must be finite")


def check_version_text(
    name: str,
    *,
    dataset: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    message: str | None = None,
    parents: Iterable[Any] = (),
    aliases: Iterable[str] = (),
) -> None:
    """Every text field of a version, by the rules above; the first bad one raises.

    ``parents`` are :class:`~pvreg.schemas.ParentRef` (or anything with ``ref``,
    ``sha256`` and ``coefficient``).
    """
    check_name(name)
    check_dataset(dataset)
    check_tags(tags or {})
    check_text(description, "description")
    check_text(message, "message")
    for p in parents:
        check_parent(p.ref, p.sha256, p.coefficient)
    for a in aliases:
        check_alias(a)
