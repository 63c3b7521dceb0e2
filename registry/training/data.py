"""Preference pairs: parse and validate every row before any model is loaded.

Accepted files (see :func:`pvreg.registry.training.readers.read_records`): JSON
Lines, a JSON array, parquet, or a ``datasets`` ``save_to_disk`` directory, whose
rows have one of three layouts:

- ``prompt``/``chosen``/``rejected`` — plain strings, or chat-message lists
  (``[{"role": ..., "content": ...}, ...]``) as TRL's conversational format;
- ``chosen``/``rejected`` without a prompt — two full texts or conversations; the
  shared beginning is the prompt;
- ``positive``/``negative`` ("contrastive", as in model-written-evaluation A/B
  sets) — two full texts that differ only in their ending.

Full texts are split at the last whitespace at or before their first differing
character, so both completions start with that whitespace: TRL tokenizes
prompt+completion together and a word-level tokenizer would otherwise merge the
last prompt word with the first completion word. For the same reason an explicit
plain-string completion that neither starts with whitespace nor follows a prompt
ending in whitespace gets one leading space.

Every problem is one :class:`PreferenceDataError` naming the file and the 1-based
row (the line number for JSON Lines): a missing column, a null, empty or
wrongly-typed value, a malformed message, chosen equal to rejected, full texts
with no common prefix, plain text mixed with chat messages.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import PreferenceDataError, TrainOptionsError
from pvreg.registry.training.readers import read_records

if TYPE_CHECKING:
    from pvreg.schemas.training import DataFormat, DataLayout

__all__ = ["PreferenceData", "PreferencePair", "load_pairs", "split_contrastive", "split_pairs"]

Message = dict[str, str]
Side = str | list[Message]
_LAYOUTS: dict[DataLayout, tuple[str, ...]] = {
    "prompt/chosen/rejected": ("prompt", "chosen", "rejected"),
    "chosen/rejected": ("chosen", "rejected"),
    "positive/negative": ("positive", "negative"),
}


@dataclass(frozen=True)
class PreferencePair:
    """One pair, normalised: ``chosen`` and ``rejected`` are completions of ``prompt``.

    All three are strings, or all three are chat-message lists. ``row`` is the
    1-based row it came from (the line number for JSON Lines).
    """

    row: int
    prompt: Side
    chosen: Side
    rejected: Side

    def as_row(self, *, swap: bool = False) -> dict[str, Side]:
        """The TRL preference row; ``swap=True`` exchanges chosen and rejected (the θ− run)."""
        chosen, rejected = (self.rejected, self.chosen) if swap else (self.chosen, self.rejected)
        return {"prompt": self.prompt, "chosen": chosen, "rejected": rejected}


@dataclass(frozen=True)
class PreferenceData:
    """Validated pairs of one file with what identifies it (for provenance)."""

    path: Path
    sha256: str
    format: DataFormat
    layout: DataLayout
    conversational: bool
    pairs: tuple[PreferencePair, ...]
    label: str | None = None

    @property
    def rows(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    def info(self) -> Any:
        """The :class:`~pvreg.schemas.training.PreferenceDataInfo` recorded in provenance."""
        from pvreg.schemas.training import PreferenceDataInfo

        return PreferenceDataInfo(
            path=str(self.path),
            sha256=self.sha256,
            format=self.format,
            layout=self.layout,
            conversational=self.conversational,
            rows=self.rows,
            label=self.label,
        )


def load_pairs(path: str | os.PathLike[str], *, label: str | None = None) -> PreferenceData:
    """Read and validate every pair of ``path``; ``label`` is a free-form dataset name kept for provenance.

    Raises:
        NotFoundError: ``path`` does not exist.
        PreferenceDataError: the file or one of its rows is not valid preference data.
        MissingExtraError: parquet or a datasets directory without pyarrow/datasets installed.
    """
    p = Path(path).expanduser().resolve()
    records = read_records(p)
    if not records.rows:
        raise PreferenceDataError(f"{p}: contains no preference pairs")
    first_keys = records.columns if records.columns is not None else _keys(p, *records.rows[0])
    layout = _layout(p, first_keys, row=None if records.columns is not None else records.rows[0][0])
    parser = _RowParser(p, layout)
    pairs = tuple(parser.parse(number, record) for number, record in records.rows)
    return PreferenceData(
        path=p,
        sha256=records.sha256,
        format=records.format,
        layout=layout,
        conversational=bool(parser.conversational),
        pairs=pairs,
        label=label,
    )


def split_pairs(data: PreferenceData, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic held-out split: ``(train indices, eval indices)`` into ``data.pairs``, each ascending.

    ``round(rows * eval_fraction)`` pairs (at least one when the fraction is > 0) are
    held out, chosen by a permutation seeded from ``seed`` alone, so the same data,
    fraction and seed always give the same split.
    """
    n = data.rows
    if not 0 <= eval_fraction < 1:
        raise TrainOptionsError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = 0 if eval_fraction == 0 else max(1, round(n * eval_fraction))
    if n - n_eval < 1:
        raise TrainOptionsError(
            f"eval_fraction {eval_fraction} of {n} pair(s) from {data.path} leaves none to train on"
        )
    order = list(range(n))
    random.Random(f"pvreg-split:{seed}").shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items ``a`` and ``b`` share; the shorter one bounds it, hence ``zip`` is not strict."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def split_contrastive(first: str, second: str) -> tuple[str, str, str]:
    """``(prompt, first ending, second ending)`` of two full texts, split at the last whitespace
    at or before their first differing character; both endings start with that whitespace.
    (When one text is the other plus more, the cut moves back until neither ending is blank.)

    Raises:
        ValueError: the texts are identical, or share no prefix that ends before whitespace.
    """
    if first == second:
        raise ValueError("the two texts are identical")
    diff = _common_prefix(first, second)
    cut = next(
        (
            j
            for j in range(min(diff, len(first) - 1, len(second) - 1), 0, -1)
            if first[j].isspace() and second[j].isspace() and first[j:].strip() and second[j:].strip()
        ),
        0,
    )
    if not first[:cut].strip():
        raise ValueError(
            "the two texts have no common prefix that ends before whitespace "
            f"(they differ from character {diff + 1}), so there is no shared prompt"
        )
    return first[:cut], first[cut:], second[cut:]


def _keys(path: Path, number: int, record: Any) -> list[str]:
    if not isinstance(record, dict):
        raise PreferenceDataError(
            f"{path}: row {number}: expected an object with prompt/chosen/rejected or positive/negative, "
            f"got {_kind(record)}"
        )
    return list(record)


def _layout(path: Path, keys: list[str], *, row: int | None) -> DataLayout:
    have = set(keys)
    where = f"{path}: row {row}" if row is not None else str(path)
    if {"chosen", "rejected"} <= have:
        return "prompt/chosen/rejected" if "prompt" in have else "chosen/rejected"
    if {"positive", "negative"} <= have:
        return "positive/negative"
    if have & {"chosen", "rejected"}:
        missing = "rejected" if "chosen" in have else "chosen"
    elif have & {"positive", "negative"}:
        missing = "negative" if "positive" in have else "positive"
    else:
        found = ", ".join(sorted(keys)) or "none"
        raise PreferenceDataError(f"{where}: no prompt/chosen/rejected or positive/negative columns (found: {found})")
    raise PreferenceDataError(f"{where}: missing column {missing!r}")


_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _kind(value: Any) -> str:
    """How a message names a JSON value's type: "an object", "null", "a float"."""
    return "null" if value is None else _KINDS.get(type(value), f"a {type(value).__name__}")


class _RowParser:
    """Validates rows of one layout and remembers whether the file is conversational."""

    def __init__(self, path: Path, layout: DataLayout) -> None:
        self.path = path
        self.layout = layout
        self.fields = _LAYOUTS[layout]
        self.conversational: bool | None = None
        self._first_row = 0

    def fail(self, number: int, message: str) -> PreferenceDataError:
        return PreferenceDataError(f"{self.path}: row {number}: {message}")

    def parse(self, number: int, record: Any) -> PreferencePair:
        if not isinstance(record, dict):
            raise self.fail(number, f"expected an object with {'/'.join(self.fields)}, got {_kind(record)}")
        for name in self.fields:
            if name not in record:
                raise self.fail(number, f"missing column {name!r}")
        values = {name: self._side(number, name, record[name]) for name in self.fields}
        self._check_uniform(number, values)
        if self.layout == "prompt/chosen/rejected":
            prompt, chosen, rejected = values["prompt"], values["chosen"], values["rejected"]
            if isinstance(prompt, str):
                assert isinstance(chosen, str) and isinstance(rejected, str)  # one kind per row: _check_uniform
                chosen, rejected = _spaced(prompt, chosen), _spaced(prompt, rejected)
        else:
            a, b = (values[name] for name in self.fields)
            prompt, chosen, rejected = self._split(number, a, b)
        if _same(chosen, rejected):
            raise self.fail(number, f"{self.fields[-2]} and {self.fields[-1]} are identical")
        return PreferencePair(row=number, prompt=prompt, chosen=chosen, rejected=rejected)

    def _side(self, number: int, name: str, value: Any) -> Side:
        if value is None:
            raise self.fail(number, f"{name!r} is null")
        if isinstance(value, str):
            if not value.strip():
                raise self.fail(number, f"{name!r} is empty")
            return value
        if isinstance(value, list):
            if not value:
                raise self.fail(number, f"{name!r} is an empty message list")
            return [self._message(number, name, i, m) for i, m in enumerate(value, start=1)]
        raise self.fail(number, f"{name!r} must be a string or a list of chat messages, got {_kind(value)}")

    def _message(self, number: int, name: str, index: int, message: Any) -> Message:
        where = f"{name!r} message {index}"
        if not isinstance(message, dict):
            raise self.fail(number, f"{where} must be an object with 'role' and 'content', got {_kind(message)}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role.strip():
            raise self.fail(number, f"{where} has no 'role' string")
        if not isinstance(content, str):
            raise self.fail(number, f"{where} 'content' must be a string, got {_kind(content)}")
        if not content.strip():
            raise self.fail(number, f"{where} has empty 'content'")
        return {"role": role, "content": content}

    def _check_uniform(self, number: int, values: dict[str, Side]) -> None:
        kinds = {isinstance(v, list) for v in values.values()}
        if len(kinds) > 1:
            raise self.fail(number, "mixes plain strings and chat-message lists; use one or the other")
        conversational = kinds.pop()
        if self.conversational is None:
            self.conversational, self._first_row = conversational, number
        elif conversational != self.conversational:
            this, first = ("chat messages", "plain strings") if conversational else ("plain strings", "chat messages")
            raise self.fail(number, f"has {this} but row {self._first_row} has {first}; use one form throughout")

    def _split(self, number: int, a: Side, b: Side) -> tuple[Side, Side, Side]:
        first, second = self.fields
        if isinstance(a, str):
            assert isinstance(b, str)  # one kind per row: _check_uniform
            try:
                return split_contrastive(a, b)
            except ValueError as exc:
                raise self.fail(number, f"{first} and {second}: {exc}") from None
        assert isinstance(b, list)
        shared = _common_prefix(a, b)
        if shared == len(a) == len(b):
            raise self.fail(number, f"{first} and {second} are identical")
        if shared == 0:
            raise self.fail(number, f"{first} and {second} have no common prefix (their first messages differ)")
        if shared == len(a) or shared == len(b):
            short = first if shared == len(a) else second
            raise self.fail(number, f"{short!r} has no messages after the part it shares with the other side")
        return a[:shared], a[shared:], b[shared:]


def _spaced(prompt: str, completion: str) -> str:
    """The completion, with one leading space when it would otherwise run into the prompt's last word."""
    if prompt[-1:].isspace() or completion[:1].isspace():
        return completion
    return " " + completion


def _same(a: Side, b: Side) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b
