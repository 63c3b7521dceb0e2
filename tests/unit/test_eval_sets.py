"""Eval files: what ``--text``, ``--pairs`` and ``--choices`` accept, and one precise error for everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pvreg.registry.errors import EvalSetError, NotFoundError, UserError
from pvreg.registry.evaluation.evalsets import (
    ChoiceItem,
    PreferencePair,
    read_choices,
    read_pairs,
    read_texts,
)


def jsonl(path: Path, rows: list, *, raw: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw, encoding="utf-8")
    return path


def test_read_texts_splits_on_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("\ufeffFirst para\ncontinues here.\n\n\n  \nSecond ünïcode para.\n\t\nThird", encoding="utf-8")
    assert read_texts(p) == ["First para\ncontinues here.", "Second ünïcode para.", "Third"]


def test_read_pairs(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "extra": 1},
        {"prompt": "Q2", "chosen": " yes", "rejected": " no"},
    ], raw="\n   \n")
    assert read_pairs(p) == [PreferencePair("Q1", "good", "bad"), PreferencePair("Q2", " yes", " no")]


def test_read_choices(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "c.jsonl", [
        {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "Sky?", "choices": ["green", "blue"], "answer": "blue"},
    ])
    assert read_choices(p) == [ChoiceItem("2+2?", ("3", "4", "5"), 1), ChoiceItem("Sky?", ("green", "blue"), 1)]


PAIR = {"prompt": "Q", "chosen": "a", "rejected": "b"}
CHOICE = {"question": "Q", "choices": ["a", "b"], "answer": 0}


@pytest.mark.parametrize("second, match", [
    ({"prompt": "Q", "chosen": "a"}, r":2: missing field 'rejected'"),
    ({**PAIR, "prompt": 3}, r":2: field 'prompt' must be a string, got int"),
    ({**PAIR, "chosen": None}, r":2: field 'chosen' must be a string, got NoneType"),
    ({**PAIR, "rejected": "  "}, r":2: field 'rejected' is empty"),
    ({**PAIR, "rejected": "a"}, r":2: 'chosen' and 'rejected' are identical"),
    (["not", "an", "object"], r":2: expected a JSON object, got list"),
])
def test_bad_pair_rows(tmp_path: Path, second, match: str) -> None:
    p = jsonl(tmp_path / "p.jsonl", [PAIR, second])
    with pytest.raises(EvalSetError, match=match) as info:
        read_pairs(p)
    assert str(info.value).startswith(f"{p}:2: ")


@pytest.mark.parametrize("second, match", [
    ({"choices": ["a", "b"], "answer": 0}, "missing field 'question'"),
    ({"question": "Q", "answer": 0}, "missing field 'choices'"),
    ({"question": "Q", "choices": ["a", "b"]}, "missing field 'answer'"),
    ({**CHOICE, "choices": "ab"}, "must be a list of at least 2 strings"),
    ({**CHOICE, "choices": ["a"]}, "must be a list of at least 2 strings"),
    ({**CHOICE, "choices": ["a", 2]}, r"choices\[1\] must be a non-empty string"),
    ({**CHOICE, "choices": ["a", ""]}, r"choices\[1\] must be a non-empty string"),
    ({**CHOICE, "choices": ["a", "a"]}, "duplicate entries"),
    ({**CHOICE, "answer": 2}, "index 2 is out of range for 2 choices"),
    ({**CHOICE, "answer": -1}, "index -1 is out of range"),
    ({**CHOICE, "answer": True}, "must be a choice index or the choice's text, got bool"),
    ({**CHOICE, "answer": 1.0}, "got float"),
    ({**CHOICE, "answer": "c"}, "'answer' 'c' is not one of the choices"),
])
def test_bad_choice_rows(tmp_path: Path, second, match: str) -> None:
    p = jsonl(tmp_path / "c.jsonl", [CHOICE, second])
    with pytest.raises(EvalSetError, match=match) as info:
        read_choices(p)
    assert str(info.value).startswith(f"{p}:2: ")


@pytest.mark.parametrize("reader, good", [(read_pairs, PAIR), (read_choices, CHOICE)])
def test_invalid_json_names_line_and_column(tmp_path: Path, reader, good) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(good) + "\n\n{\"prompt\": \"Q\",\n")
    with pytest.raises(EvalSetError, match=r"x\.jsonl:3: invalid JSON \(.* at column \d+\)"):
        reader(p)


@pytest.mark.parametrize("reader", [read_pairs, read_choices, read_texts])
def test_empty_missing_directory_and_binary_files(tmp_path: Path, reader) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    with pytest.raises(EvalSetError, match="holds no"):
        reader(empty)
    with pytest.raises(NotFoundError, match="does not exist"):
        reader(tmp_path / "nope")
    with pytest.raises(EvalSetError, match="is a directory"):
        reader(tmp_path)
    binary = tmp_path / "bin"
    binary.write_bytes(b"ok line\n\xff\xfe\x00garbage")
    with pytest.raises(EvalSetError, match=r"bin:2: not UTF-8 text \(invalid byte at offset 8\)") as info:
        reader(binary)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
