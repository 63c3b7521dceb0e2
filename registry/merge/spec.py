"""Parsing compose specs: ``REF:COEF`` tokens and ``--spec`` files.

Kept free of torch and of the database so the CLI can reject a bad spec
instantly.  The grammar is strict on purpose: a coefficient that Python's
``float`` would accept but a reader might misread (``1_0``, ``nan``, `` 1``,
``1e400`` overflowing to inf) is refused with a message naming the token.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvreg.registry.errors import InvalidReferenceError, NotFoundError, SpecError
from pvreg.registry.refs import parse_ref
from pvreg.registry.tensors.inputfile import read_capped
from pvreg.schemas.compose import ComposeSpec, ComposeTerm

#: Decimal or exponent form, optional sign; no underscores, words, spaces or non-ASCII digits.
COEF_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
SHA_PREFIX = "sha256:"
#: Specs are a few lines; the cap keeps a wrong --spec argument from being read forever.
MAX_SPEC_BYTES = 16 * 2**20


def parse_coefficient(text: str, token: str) -> float:
    """A finite float from ``text``; ``token`` is only used for the message."""
    if not COEF_RE.fullmatch(text):
        raise SpecError(f"invalid spec token {token!r}: coefficient {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise SpecError(f"invalid spec token {token!r}: coefficient {text!r} is not finite")
    mantissa = re.split("[eE]", text)[0]
    if value == 0 and any(c in "123456789" for c in mantissa):
        raise SpecError(f"invalid spec token {token!r}: coefficient {text!r} underflows to 0")
    return value


def parse_token(token: str) -> ComposeTerm:
    """``REF`` or ``REF:COEF``; a ``sha256:HEX`` ref keeps its own colon."""
    if not isinstance(token, str) or not token.strip():
        raise SpecError(f"invalid spec token {token!r}: empty")
    if token.startswith(SHA_PREFIX):
        hexpart, sep, coef = token[len(SHA_PREFIX) :].partition(":")
        ref = SHA_PREFIX + hexpart
    else:
        ref, sep, coef = token.partition(":")
    if not ref or ref == SHA_PREFIX:
        raise SpecError(f"invalid spec token {token!r}: missing reference before ':'")
    if sep and ":" in coef:
        raise SpecError(f"invalid spec token {token!r}: expected REF:COEF with a single coefficient")
    if sep and not coef:
        raise SpecError(f"invalid spec token {token!r}: missing coefficient after ':'")
    try:
        parse_ref(ref)
    except InvalidReferenceError as exc:
        raise SpecError(f"invalid spec token {token!r}: {exc}") from None
    coefficient = parse_coefficient(coef, token) if sep else 1.0
    return ComposeTerm(ref=ref, coefficient=coefficient)


def parse_tokens(tokens: str | Sequence[str]) -> list[ComposeTerm]:
    """A list of tokens, or one string of space-separated tokens."""
    items = tokens.split() if isinstance(tokens, str) else list(tokens)
    if not items:
        raise SpecError("empty compose spec: give at least one REF[:COEF] term")
    return [parse_token(t) for t in items]


def _validation_message(exc: Any) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
    return f"{where}: {first.get('msg')}"


def load_spec_file(path: str | os.PathLike[str]) -> ComposeSpec:
    """A ``ComposeSpec`` from a YAML or JSON file (YAML is a superset of JSON)."""
    import yaml
    from pydantic import ValidationError

    p = Path(path)
    try:
        # A regular file of bounded size only: `--spec /dev/zero` or a FIFO would never end.
        raw = read_capped(p, MAX_SPEC_BYTES, SpecError, "spec file")
    except NotFoundError:
        raise NotFoundError(f"{p}: no such spec file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: spec file is not UTF-8 text (invalid byte at offset {exc.start})") from None
    kind = "JSON" if p.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise SpecError(f"{p}: not valid {kind} (nested too deeply)") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{p}: not valid {kind} ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{p}: a spec file must be a mapping with a 'terms' list")
    try:
        return ComposeSpec.model_validate(_string_terms(data))
    except ValidationError as exc:
        raise SpecError(f"{p}: invalid spec at {_validation_message(exc)}") from None
    except SpecError as exc:  # a bad "REF:COEF" string term
        raise SpecError(f"{p}: {exc}") from None


def _string_terms(data: dict[str, Any]) -> dict[str, Any]:
    """Let a spec file list terms as ``"helpful:0.5"`` strings as well as mappings."""
    terms = data.get("terms")
    if not isinstance(terms, list):
        return data
    return {**data, "terms": [parse_token(t).model_dump() if isinstance(t, str) else t for t in terms]}


def build_spec(spec: ComposeSpec | str | Sequence[str], **overrides: Any) -> ComposeSpec:
    """Normalise any accepted spec form and apply the options given (non-None)."""
    from pydantic import ValidationError

    if isinstance(spec, ComposeSpec):
        base = spec
    elif isinstance(spec, (str, list, tuple)):
        base = ComposeSpec(terms=parse_tokens(spec))
    else:
        raise SpecError(f"a compose spec must be a ComposeSpec, a token list or a string, not {type(spec).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ComposeSpec.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        raise SpecError(f"invalid compose option {_validation_message(exc)}") from None
