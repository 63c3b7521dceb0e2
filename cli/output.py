"""Rendering: JSON for machines, aligned plain-text tables and lines for people.

Every human-readable byte pvreg writes goes through :func:`say` or :func:`table` (and the
``error:`` line through :func:`say` too), which escape control characters, bidi overrides and
line separators (:func:`pvreg.registry.text.escape`).  Names, datasets, messages and
descriptions can come from a forged export or a Hub repo: printed raw, an escape sequence in
one could clear the screen or set the terminal title.  JSON output is exact (``json.dumps``
writes such characters as ``\\uNNNN`` escapes, so it is terminal-safe as it is).

Plain text is deliberate: importing a rich console costs more than ``pvreg list``
itself takes on a large registry.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pvreg.registry.text import escape


def emit_json(data: Any) -> None:
    """Print a pydantic model, a list of them, or plain JSON data, exactly (not escaped)."""
    from pydantic import BaseModel

    if isinstance(data, BaseModel):
        payload: Any = data.model_dump(mode="json")
    elif isinstance(data, (list, tuple)):
        payload = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    else:
        payload = data
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def say(text: object = "", *, err: bool = False) -> None:
    """Print one line for a person (stdout, or stderr with ``err``), every unsafe character escaped."""
    (sys.stderr if err else sys.stdout).write(escape(str(text)) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """An aligned table; each cell is escaped on its own, so no cell can break a row or the terminal."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    if not "".join(c for r in cells for c in r).isprintable():  # one C-speed pass decides for all cells
        cells = [[escape(c) for c in r] for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    sys.stdout.write("\n".join(out) + "\n")


def short(sha: str | None, n: int = 12) -> str:
    return sha[:n] if sha else "-"


def fmt_norm(x: float) -> str:
    return f"{x:.4g}"
