"""Text that reaches pvreg from anywhere: the rules it must follow, and how it is shown safely.

Dataset labels, tags, messages, descriptions, lineage refs and base facts arrive from the
command line, the Python API, exported files and Hub repos alike; each kind of field has ONE
check here, used by every source (vector names and aliases are in :mod:`pvreg.registry.refs`).
The checks run before anything is written, so a field that would break a column limit or
carry terminal control sequences never gets as far as the database.

:func:`escape` is what every human-readable output goes through (``cli/output.py`` and the
``error:`` line): control characters (C0, DEL, C1), bidirectional overrides and line
separators are shown as ``\\xNN`` / ``\\uNNNN`` instead of being sent to the terminal, where
they could clear the screen, set the title or reorder what is displayed.  JSON output is not
escaped (``json.dumps`` already writes every such character as ``\\uNNNN``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pvreg.registry.errors import InvalidTextError

# Characters a terminal acts on, or that reorder/split what it shows: C0 controls, DEL, C1
# controls, the Arabic letter mark, LRM/RLM, line/paragraph separators, bidi embeddings,
# overrides and isolates.  Lone surrogates cannot be encoded at all.
_OTHER = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
UNSAFE_RE = re.compile(rf"[\x00-\x1f{_OTHER}]")
# Multi-line fields (messages, descriptions) may keep tabs (\x09) and newlines (\x0a).
_UNSAFE_MULTILINE_RE = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHER}]")

DATASET_MAX = 256  # versions.dataset is Text: the limit is ours, sized for "org/name:subset" labels
TAG_KEY_MAX = 128  # version_tags.key is String(128)
TAG_VALUE_MAX = 4096
LABEL_MAX = 256  # base facts: label, architecture, hub id
TEXT_MAX = 65536  # messages and descriptions


def escape(text: str) -> str:
    """``text`` with every unsafe character written as a visible escape (``\\x1b``, ``\\u202e``).

    Printable text (the common case) is returned unchanged without a regex pass.
    """
    if text.isprintable():
        return text
    return UNSAFE_RE.sub(_escape_char, text)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    char = m.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object, limit: int = 80) -> str:
    """A quoted, escaped form of ``value`` for error messages (long values shortened)."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _fail(what: str, value: str, why: str) -> InvalidTextError:
    return InvalidTextError(f"invalid {what} {printable(value)}: {why}")


def check_line(value: object, what: str, *, max_len: int, allow_empty: bool = False, label: bool = True) -> str:
    """A single line of at most ``max_len`` characters without control characters; a ``label``
    (an identifier-like field) also has no surrounding whitespace, which would make two labels
    look the same."""
    if not isinstance(value, str):
        raise InvalidTextError(f"invalid {what}: expected text, got {type(value).__name__}")
    if not value:
        if allow_empty:
            return value
        raise _fail(what, value, "is empty")
    if len(value) > max_len:
        raise _fail(what, value, f"is {len(value)} characters (at most {max_len})")
    bad = UNSAFE_RE.search(value)
    if bad is not None:
        raise _fail(what, value, f"contains the control character {escape(bad.group())}")
    if label and value != value.strip():
        raise _fail(what, value, "has leading or trailing whitespace")
    return value


def check_dataset(value: str | None) -> str | None:
    """A dataset label such as ``PKU-SafeRLHF:helpful`` (None, or "" as older pvreg stored it: none)."""
    return None if value is None else check_line(value, "dataset", max_len=DATASET_MAX, allow_empty=True)


def check_tag(key: object, value: object) -> tuple[str, str]:
    """One ``KEY=VALUE`` tag: the key is a label without ``=`` (it must survive ``--tag KEY=VALUE``)."""
    k = check_line(key, "tag key", max_len=TAG_KEY_MAX)
    if "=" in k:
        raise _fail("tag key", k, "contains '='")
    v = check_line(value, f"value of tag {printable(k)}", max_len=TAG_VALUE_MAX, allow_empty=True, label=False)
    return k, v


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return dict(check_tag(k, v) for k, v in tags.items())


def check_text(value: str | None, what: str, *, max_len: int = TEXT_MAX) -> str | None:
    """Free text (a message, a description): tabs and newlines allowed, other controls not."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTextError(f"invalid {what}: expected text, got {type(value).__name__}")
    if len(value) > max_len:
        raise _fail(what, value, f"is {len(value)} characters (at most {max_len})")
    bad = _UNSAFE_MULTILINE_RE.search(value)
    if bad is not None:
        raise _fail(what, value, f"contains the control character {escape(bad.group())}")
    return value


def check_label(value: str | None, what: str) -> str | None:
    """A public fact about a base model (label, architecture): None or a single-line label."""
    return None if value is None else check_line(value, what, max_len=LABEL_MAX)
