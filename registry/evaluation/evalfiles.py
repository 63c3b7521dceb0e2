"""The eval sets of one ``pvreg eval`` / ``pvreg sweep``: ``[LABEL=]PATH`` arguments, read whole, identified by sha256.

Every file is read and validated before any model is loaded, so a malformed row
fails in a second, as one line naming the file and the row.  Preference pairs
go through the training data loader (:func:`pvreg.registry.training.data.load_pairs`):
``pvreg eval --pairs`` accepts exactly what ``pvreg train --data`` accepts.  Texts
and multiple-choice questions use :mod:`pvreg.registry.evaluation.evalsets`.

The sha256 identifies a set in stored evaluations: a sweep re-run skips a point
only when every set it measured has the same sha256 (a changed file is measured
again).  ``--limit N`` keeps the first N items of every set, so the same limit
always scores the same items.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import EvalError, NotFoundError, opt
from pvreg.registry.text import LABEL_MAX, printable

if TYPE_CHECKING:
    from pvreg.schemas.evaluation import EvalKind, EvalSetInfo

#: ``LABEL=`` before a path: a short word, so a path that merely contains ``=`` further on stays a path.
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_OPTION = {"pairs": "pairs", "text": "text", "choices": "choices"}


@dataclass(frozen=True)
class EvalSet:
    """One eval set, read and validated: ``items`` are pairs (training rows), texts or questions."""

    label: str
    kind: EvalKind
    path: Path
    sha256: str
    items: tuple[Any, ...]
    conversational: bool = False

    def info(self) -> EvalSetInfo:
        from pvreg.schemas.evaluation import EvalSetInfo

        return EvalSetInfo(
            label=self.label, kind=self.kind, sha256=self.sha256, n_items=len(self.items), path=str(self.path)
        )


def split_label(arg: str | os.PathLike[str]) -> tuple[str | None, Path]:
    """``LABEL=PATH`` -> (LABEL, PATH); a plain path (or one whose ``=`` prefix is no label) -> (None, PATH)."""
    if not isinstance(arg, str):
        return None, Path(arg)
    label, sep, rest = arg.partition("=")
    if sep and rest and _LABEL_RE.fullmatch(label) and not Path(arg).exists():
        return label, Path(rest)
    return None, Path(arg)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(kind: EvalKind, label: str, path: Path, limit: int | None) -> EvalSet:
    from pvreg.registry.evaluation.evalsets import read_choices, read_texts

    if not path.exists():
        raise NotFoundError(f"{opt(_OPTION[kind])} {path}: no such eval file")
    if kind == "pairs":
        from pvreg.registry.training.data import load_pairs

        data = load_pairs(path)
        items: Sequence[Any] = data.pairs
        sha, conversational = data.sha256, data.conversational
    else:
        if not path.is_file():
            raise EvalError(f"{opt(_OPTION[kind])} {path}: not a regular file")
        items = read_texts(path) if kind == "text" else read_choices(path)
        sha, conversational = _file_sha256(path), False
    if limit is not None:
        items = items[:limit]
    return EvalSet(label, kind, path, sha, tuple(items), conversational)


def load_eval_sets(
    *,
    pairs: Sequence[str | os.PathLike[str]] = (),
    text: Sequence[str | os.PathLike[str]] = (),
    choices: Sequence[str | os.PathLike[str]] = (),
    limit: int | None = None,
    required: bool = True,
) -> list[EvalSet]:
    """Every eval set, read and validated; labels default to the file name and must be unique.

    Raises:
        EvalError: no set given (with ``required``), a duplicate label, a bad ``limit``.
        NotFoundError, EvalSetError, PreferenceDataError: a missing or malformed file (file and row named).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise EvalError(f"{opt('limit')} must be a positive integer, got {limit!r}")
    given: list[tuple[EvalKind, str | os.PathLike[str]]] = [
        *(("pairs", a) for a in pairs),
        *(("text", a) for a in text),
        *(("choices", a) for a in choices),
    ]
    if required and not given:
        raise EvalError(f"no eval set given: pass {opt('pairs')}, {opt('text')} or {opt('choices')} [LABEL=]PATH")
    sets: list[EvalSet] = []
    seen: dict[str, str] = {}
    for kind, arg in given:
        label, path = split_label(arg)
        label = label or path.name or str(path)
        if len(label) > LABEL_MAX or not label.isprintable():
            raise EvalError(f"eval set label {printable(label)} must be printable and at most {LABEL_MAX} characters")
        if label in seen:
            raise EvalError(
                f"eval set label {printable(label)} is used twice ({seen[label]} and {path}); "
                "give each set its own LABEL=PATH"
            )
        seen[label] = str(path)
        sets.append(_read(kind, label, path, limit))
    return sets


def eval_files(sets: Sequence[EvalSet]) -> list[Path]:
    """The paths an output must never overwrite."""
    return [s.path for s in sets]
