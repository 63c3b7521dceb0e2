"""Reading eval files: ``--text`` (plain text), ``--choices`` and ``--pairs`` (JSON Lines).

Every problem is one :class:`EvalSetError` naming the file and, for JSONL, the
line and field, so a bad row in a 10,000-line file is found at once.  Files
are read whole before anything is scored: an evaluation never stops half-way
over a malformed line.

``read_pairs`` is deliberately minimal (``prompt``/``chosen``/``rejected``
strings); pvreg's preference-data loader in ``registry/training`` is meant to
take its place behind the same name, returning objects with the same three
attributes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvreg.registry.errors import EvalSetError, NotFoundError


@dataclass(frozen=True)
class PreferencePair:
    """One preference comparison: the completion ``chosen`` is preferred to ``rejected`` after ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    source: str | None = field(default=None, compare=False)  # "file:line", for error messages


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question; ``answer`` is the index of the correct entry of ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    source: str | None = field(default=None, compare=False)  # "file:line", for error messages


def _read_text_file(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The file's text, decoded as UTF-8 (a BOM is dropped), or one error naming the file."""
    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"eval file {p} does not exist")
    if p.is_dir():
        raise EvalSetError(f"eval file {p} is a directory, expected a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise EvalSetError(f"cannot read eval file {p}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EvalSetError(f"{p}:{line}: not UTF-8 text (invalid byte at offset {e.start})") from e
    return p, text


def read_texts(path: str | os.PathLike[str]) -> list[str]:
    """The documents of a plain text file: blocks separated by blank lines, stripped.

    A document is the unit perplexity and KL are bootstrapped over, so a file
    of paragraphs gives a confidence interval over paragraphs.
    """
    p, text = _read_text_file(path)
    docs: list[str] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            block.append(line)
        elif block:
            docs.append("\n".join(block).strip())
            block = []
    if not docs:
        raise EvalSetError(f"eval file {p} holds no text")
    return docs


def _jsonl_rows(path: str | os.PathLike[str]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, 1-based line number, object) for every non-blank line; a line that is not an object fails."""
    p, text = _read_text_file(path)
    seen = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalSetError(f"{p}:{number}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise EvalSetError(f"{p}:{number}: expected a JSON object, got {type(row).__name__}")
        seen = True
        yield p, number, row
    if not seen:
        raise EvalSetError(f"eval file {p} holds no rows")


def _text_field(p: Path, number: int, row: dict[str, Any], key: str) -> str:
    """A required string field that is not blank."""
    if key not in row:
        raise EvalSetError(f"{p}:{number}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise EvalSetError(f"{p}:{number}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise EvalSetError(f"{p}:{number}: field {key!r} is empty")
    return value


def read_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Preference pairs from JSONL rows ``{"prompt": ..., "chosen": ..., "rejected": ...}``.

    Other keys are ignored.  A row whose chosen and rejected completions are
    identical is refused: it carries no preference and would count as a miss.
    """
    pairs: list[PreferencePair] = []
    for p, number, row in _jsonl_rows(path):
        prompt, chosen, rejected = (_text_field(p, number, row, k) for k in ("prompt", "chosen", "rejected"))
        if chosen == rejected:
            raise EvalSetError(f"{p}:{number}: 'chosen' and 'rejected' are identical")
        pairs.append(PreferencePair(prompt, chosen, rejected, source=f"{p}:{number}"))
    return pairs


def read_choices(path: str | os.PathLike[str]) -> list[ChoiceItem]:
    """Multiple-choice questions from JSONL rows ``{"question": ..., "choices": [...], "answer": ...}``.

    ``answer`` is the 0-based index of the correct choice, or the correct
    choice's text.  At least two distinct, non-blank choices are required.
    """
    items: list[ChoiceItem] = []
    for p, number, row in _jsonl_rows(path):
        question = _text_field(p, number, row, "question")
        if "choices" not in row:
            raise EvalSetError(f"{p}:{number}: missing field 'choices'")
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise EvalSetError(f"{p}:{number}: field 'choices' must be a list of at least 2 strings")
        for k, c in enumerate(choices):
            if not isinstance(c, str) or not c.strip():
                raise EvalSetError(f"{p}:{number}: choices[{k}] must be a non-empty string")
        if len(set(choices)) != len(choices):
            raise EvalSetError(f"{p}:{number}: field 'choices' has duplicate entries")
        if "answer" not in row:
            raise EvalSetError(f"{p}:{number}: missing field 'answer'")
        answer = row["answer"]
        if isinstance(answer, str):
            if answer not in choices:
                raise EvalSetError(f"{p}:{number}: 'answer' {answer!r} is not one of the choices")
            index = choices.index(answer)
        elif isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise EvalSetError(f"{p}:{number}: 'answer' index {answer} is out of range for {len(choices)} choices")
            index = answer
        else:
            raise EvalSetError(
                f"{p}:{number}: 'answer' must be a choice index or the choice's text, got {type(answer).__name__}"
            )
        items.append(ChoiceItem(question, tuple(choices), index, source=f"{p}:{number}"))
    return items
