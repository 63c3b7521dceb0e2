"""What of a version's metadata may leave this machine: the one owner of that rule.

Locally, provenance keeps full paths (``pvreg show`` names the checkpoint
directories a vector came from).  Whatever is *published* — pushed to the Hub
(``pvreg.json``, the metadata embedded in ``vector.safetensors``, the card built
from them) or written by ``pvreg export`` — must not leak the publisher's machine:
no absolute paths, so no home directories and no user names.  The identifying
facts stay: fingerprints, the data sha256, file names relative to their model
directory (``model.safetensors``, ``adapter_model.safetensors``).

The rule is structural, so it covers every kind of vector (``file``, ``pair``,
``finetuned``, ``lora``, ``compose``, trained, pulled, restored) and provenance
keys added later: every string in the record that is an absolute path (POSIX,
``~``-relative, Windows drive or UNC) becomes its last component, and absolute
paths inside longer strings (a label such as ``/a/pos - /a/neg``) are reduced the
same way.  URLs and Hub-relative paths (``helpful/vector.safetensors``) are left
alone.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pvreg.schemas.vector import VectorMeta

__all__ = ["public_meta", "public_path", "public_provenance"]

#: A whole string that is an absolute path: ``/x``, ``~``, ``~/x``, ``~user/x``, ``C:\x``, ``C:/x``, ``\\host\x``.
_ABSOLUTE = re.compile(r"^(?:/|~(?:[^/\\]*)(?:[/\\]|$)|[A-Za-z]:[\\/]|\\\\)")
#: Where a second path starts inside a string that begins with one (``/a/pos - /a/neg``).
_SECOND = re.compile(r"\s(?:/|~)")
#: An absolute path inside a longer string: starts at a ``/`` or ``~/`` not preceded by a word character,
#: ``.``, ``:`` or another slash (so ``https://host/x`` and ``repo/file`` stay), and runs to whitespace or a quote.
_EMBEDDED = re.compile(r"(?<![\w.:/\\~])(?:~[\w.-]*)?/[^\s'\"`,;)\]}]*")


def public_path(text: str) -> str:
    """The last component of an absolute path (``/home/alice/m/model.safetensors`` → ``model.safetensors``);
    any other string unchanged."""
    if not _ABSOLUTE.match(text):
        return text
    windows = "\\" in text or re.match(r"^[A-Za-z]:", text) is not None
    path = PureWindowsPath(text) if windows else PurePosixPath(text.rstrip("/"))
    name = path.name
    return "." if not name or (len(path.parts) == 1 and name.startswith("~")) else name


def _public_string(text: str) -> str:
    if _ABSOLUTE.match(text) and not _SECOND.search(text):  # one path, perhaps with spaces in it
        return public_path(text)
    return _EMBEDDED.sub(lambda m: public_path(m.group(0)) if m.group(0) != "/" else "/", text)


def public_provenance(record: Any) -> Any:
    """``record`` (any JSON value) with every absolute path reduced to its last component, recursively."""
    if isinstance(record, dict):
        return {key: public_provenance(value) for key, value in record.items()}
    if isinstance(record, list):
        return [public_provenance(value) for value in record]
    if isinstance(record, str):
        return _public_string(record)
    return record


def public_meta(meta: VectorMeta) -> VectorMeta:
    """The version as it may leave this machine (push, export): its provenance without local paths."""
    return meta.model_copy(update={"provenance": public_provenance(meta.provenance)})
