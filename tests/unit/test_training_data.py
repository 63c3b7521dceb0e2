"""Preference data for ``pvreg train``: every accepted format parses to the pairs written, and every
kind of bad data is one error line of the right class naming the file and the 1-based row.

Files are written here with the standard library / pyarrow / datasets directly, and the parsed
pairs and sha256 are compared with what was written (hashlib over the bytes), never with pvreg.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from pvreg.registry.errors import NotFoundError, PreferenceDataError, TrainOptionsError
from pvreg.registry.training import load_pairs, split_contrastive, split_pairs

ROWS = [
    {"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Capital of France?", "chosen": " Paris", "rejected": " Rome"},
    {"prompt": "Say hi", "chosen": " hi", "rejected": " bye", "extra": 7},
]
EXPECTED = [(1, "What is 2+2?", " 4", " 5"), (2, "Capital of France?", " Paris", " Rome"), (3, "Say hi", " hi", " bye")]

CHAT_ROWS = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def triples(data: Any) -> list[tuple[int, Any, Any, Any]]:
    return [(p.row, p.prompt, p.chosen, p.rejected) for p in data.pairs]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_datasets_dir(path: Path, rows: list[dict[str, Any]]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


# --- every accepted format ------------------------------------------------------------------


def test_jsonl_plain_strings(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    data = load_pairs(f, label="arith")
    assert triples(data) == EXPECTED
    assert (data.format, data.layout, data.conversational, data.rows) == ("jsonl", "prompt/chosen/rejected", False, 3)
    assert data.sha256 == sha256_file(f)
    info = data.info()
    assert (info.path, info.sha256, info.rows, info.label) == (str(f.resolve()), sha256_file(f), 3, "arith")


def test_jsonl_row_numbers_are_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n   \n")
    assert [p.row for p in load_pairs(f).pairs] == [1, 3]


def test_json_array(tmp_path: Path) -> None:
    f = tmp_path / "pairs.json"
    f.write_text(json.dumps(ROWS, indent=2))
    data = load_pairs(f)
    assert triples(data) == EXPECTED
    assert (data.format, data.sha256) == ("json", sha256_file(f))


def test_completion_gets_a_leading_space_only_when_it_would_merge_with_the_prompt(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q:", "chosen": "yes", "rejected": " no"},
        {"prompt": "Q: ", "chosen": "yes", "rejected": "no"},
        {"prompt": "Q:", "chosen": "\nyes", "rejected": "no"},
    ])
    assert [(p.chosen, p.rejected) for p in load_pairs(f).pairs] == [(" yes", " no"), ("yes", "no"), ("\nyes", " no")]


def test_chat_messages(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    data = load_pairs(f)
    assert data.conversational and data.layout == "prompt/chosen/rejected"
    assert triples(data) == [(i, r["prompt"], r["chosen"], r["rejected"]) for i, r in enumerate(CHAT_ROWS, start=1)]


def test_chat_messages_keep_only_role_and_content(tmp_path: Path) -> None:
    row = {k: [dict(m, name="x") for m in v] for k, v in CHAT_ROWS[1].items()}
    data = load_pairs(write_jsonl(tmp_path / "chat.jsonl", [row]))
    assert data.pairs[0].prompt == [{"role": "user", "content": "2+2?"}]


def test_conversations_without_prompt_split_at_the_shared_messages(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Hi?"}
    row = {"chosen": [user, {"role": "assistant", "content": "Hello."}],
           "rejected": [user, {"role": "assistant", "content": "No."}]}
    data = load_pairs(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert data.layout == "chosen/rejected" and data.conversational
    assert triples(data) == [(1, [user], [{"role": "assistant", "content": "Hello."}],
                              [{"role": "assistant", "content": "No."}])]


def test_datasets_directory(tmp_path: Path) -> None:
    d = write_datasets_dir(tmp_path / "ds", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS])
    data = load_pairs(d)
    assert triples(data) == EXPECTED
    assert data.format == "datasets"
    manifest = hashlib.sha256()
    for file in sorted(p for p in d.rglob("*") if p.is_file()):
        manifest.update(f"{file.relative_to(d).as_posix()}\0{sha256_file(file)}\n".encode())
    assert data.sha256 == manifest.hexdigest()


def test_datasets_dict_directory_uses_its_train_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS]
    DatasetDict({"train": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[2:])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert triples(load_pairs(tmp_path / "dd")) == EXPECTED[:2]


def test_datasets_directory_with_chat_messages(tmp_path: Path) -> None:
    data = load_pairs(write_datasets_dir(tmp_path / "ds", CHAT_ROWS))
    assert data.conversational
    assert triples(data)[0] == (1, CHAT_ROWS[0]["prompt"], CHAT_ROWS[0]["chosen"], CHAT_ROWS[0]["rejected"])


def test_parquet(tmp_path: Path) -> None:
    f = write_parquet(tmp_path / "pairs.parquet", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS])
    data = load_pairs(f)
    assert triples(data) == EXPECTED
    assert (data.format, data.sha256) == ("parquet", sha256_file(f))


def test_contrastive_positive_negative(tmp_path: Path) -> None:
    q = "Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:"
    f = write_jsonl(tmp_path / "ab.jsonl", [
        {"positive": q + " (A)", "negative": q + " (B)"},
        {"positive": "I like w1 w2", "negative": "I like w3"},
    ])
    data = load_pairs(f)
    assert data.layout == "positive/negative" and not data.conversational
    assert triples(data) == [(1, q, " (A)", " (B)"), (2, "I like", " w1 w2", " w3")]


def test_full_texts_under_chosen_rejected_split_like_contrastive(tmp_path: Path) -> None:
    hh = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    f = write_parquet(tmp_path / "hh.parquet", [{"chosen": hh + " Use flour.", "rejected": hh + " No idea."}])
    data = load_pairs(f)
    assert data.layout == "chosen/rejected"
    assert triples(data) == [(1, hh, " Use flour.", " No idea.")]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("Answer: (A)", "Answer: (B)", ("Answer:", " (A)", " (B)")),
        ("a b c", "a b cd", ("a b", " c", " cd")),  # differ mid-word: cut at the whitespace before it
        ("abc def", "abc def ghi", ("abc", " def", " def ghi")),  # one is a prefix: neither ending blank
        ("x y\nA", "x y B", ("x y", "\nA", " B")),  # differing whitespace characters at the cut
    ],
)
def test_split_contrastive(first: str, second: str, expected: tuple[str, str, str]) -> None:
    got = split_contrastive(first, second)
    assert got == expected
    assert got[0] + got[1] == first and got[0] + got[2] == second
    assert got[1][0].isspace() and got[2][0].isspace()


# --- the held-out split ---------------------------------------------------------------------


def test_split_pairs_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": " a", "rejected": " b"} for i in range(20)]
    data = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    train, held = split_pairs(data, 0.25, seed=3)
    assert len(held) == 5 and sorted(train + held) == list(range(20)) and not set(train) & set(held)
    assert train == sorted(train) and held == sorted(held)
    assert split_pairs(data, 0.25, seed=3) == (train, held)
    assert split_pairs(data, 0.25, seed=4) != (train, held)
    assert split_pairs(data, 0.0, seed=3) == (list(range(20)), [])
    assert len(split_pairs(data, 0.01, seed=3)[1]) == 1  # a positive fraction holds out at least one pair


def test_split_pairs_refuses_to_leave_nothing_to_train(tmp_path: Path) -> None:
    data = load_pairs(write_jsonl(tmp_path / "p.jsonl", ROWS[:1]))
    with pytest.raises(TrainOptionsError, match="leaves none to train on"):
        split_pairs(data, 0.5, seed=0)


# --- bad data: one line, the right class, the file and the row ------------------------------

Writer = Callable[[Path], Path]


def _jsonl(rows: list[Any], name: str = "bad.jsonl") -> Writer:
    return lambda d: write_jsonl(d / name, rows)


def _text(name: str, text: str) -> Writer:
    def write(d: Path) -> Path:
        (d / name).write_text(text)
        return d / name
    return write


def _bytes(name: str, data: bytes) -> Writer:
    def write(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return write


def _parquet(rows: list[dict[str, Any]]) -> Writer:
    return lambda d: write_parquet(d / "bad.parquet", rows)


def _dsdir(rows: list[dict[str, Any]]) -> Writer:
    return lambda d: write_datasets_dir(d / "bad-ds", rows)


GOOD = {"prompt": "p", "chosen": " a", "rejected": " b"}
MSG = {"role": "user", "content": "hi"}
ANS = {"role": "assistant", "content": "a"}
PARQUET_BYTES = b"PAR1" + b"\0" * 16 + b"PAR1"

BAD = [
    ("missing-rejected-row2", _jsonl([GOOD, {"prompt": "p", "chosen": " a"}]), "row 2: missing column 'rejected'"),
    ("missing-prompt-row3", _jsonl([GOOD, GOOD, {"chosen": " a", "rejected": " b"}]), "row 3: missing column 'prompt'"),
    ("no-known-columns", _jsonl([{"question": "q", "answer": "a"}]), "row 1: no prompt/chosen/rejected"),
    ("only-chosen", _jsonl([{"prompt": "q", "chosen": "a"}]), "row 1: missing column 'rejected'"),
    ("only-positive", _jsonl([{"positive": "a b"}]), "row 1: missing column 'negative'"),
    ("empty-chosen", _jsonl([GOOD, GOOD, {**GOOD, "chosen": ""}]), "row 3: 'chosen' is empty"),
    ("blank-prompt", _jsonl([{**GOOD, "prompt": "  \n"}]), "row 1: 'prompt' is empty"),
    ("null-rejected", _jsonl([GOOD, {**GOOD, "rejected": None}]), "row 2: 'rejected' is null"),
    ("number-chosen", _jsonl([{**GOOD, "chosen": 4}]), "row 1: 'chosen' must be a string or a list of chat messages"),
    ("identical", _jsonl([GOOD, {**GOOD, "rejected": " a"}]), "row 2: chosen and rejected are identical"),
    ("identical-but-spaces", _jsonl([{**GOOD, "chosen": "a ", "rejected": " a"}]), "row 1: chosen and rejected are identical"),
    ("row-not-object", _jsonl([GOOD, ["p", "a", "b"]]), "row 2: expected an object"),
    ("first-row-not-object", _jsonl([["p", "a", "b"]]), "row 1: expected an object"),
    ("empty-message-list", _jsonl([{"prompt": [MSG], "chosen": [], "rejected": [ANS]}]), "row 1: 'chosen' is an empty message list"),
    ("message-not-object", _jsonl([{"prompt": [MSG], "chosen": ["a"], "rejected": [ANS]}]), "row 1: 'chosen' message 1 must be an object"),
    ("message-no-role", _jsonl([{"prompt": [{"content": "x"}], "chosen": [ANS], "rejected": [ANS | {"content": "b"}]}]), "row 1: 'prompt' message 1 has no 'role'"),
    ("message-empty-content", _jsonl([{"prompt": [MSG, {"role": "user", "content": " "}], "chosen": [ANS], "rejected": [ANS]}]), "row 1: 'prompt' message 2 has empty 'content'"),
    ("message-content-not-string", _jsonl([{"prompt": [MSG], "chosen": [{"role": "assistant", "content": [1]}], "rejected": [ANS]}]), "row 1: 'chosen' message 1 'content' must be a string"),
    ("mixed-in-row", _jsonl([{"prompt": "p", "chosen": [ANS], "rejected": " b"}]), "row 1: mixes plain strings and chat-message lists"),
    ("mixed-across-rows", _jsonl([GOOD, {"prompt": [MSG], "chosen": [ANS], "rejected": [ANS | {"content": "b"}]}]), "row 2: has chat messages but row 1 has plain strings"),
    ("identical-messages", _jsonl([{"prompt": [MSG], "chosen": [ANS], "rejected": [dict(ANS)]}]), "row 1: chosen and rejected are identical"),
    ("contrastive-no-common-prefix", _jsonl([{"positive": "A is right", "negative": "B is right"}]), "row 1: positive and negative: the two texts have no common prefix"),
    ("contrastive-prefix-without-space", _jsonl([{"positive": "Answer:(A)", "negative": "Answer:(B)"}]), "row 1: positive and negative: the two texts have no common prefix"),
    ("contrastive-identical", _jsonl([{"positive": "x (A)", "negative": "x (B)"}, {"positive": "s t", "negative": "s t"}]), "row 2: positive and negative: the two texts are identical"),
    ("contrastive-empty", _jsonl([{"positive": "x (A)", "negative": ""}]), "row 1: 'negative' is empty"),
    ("conversation-no-common-prefix", _jsonl([{"chosen": [MSG, ANS], "rejected": [{"role": "user", "content": "yo"}, ANS]}]), "row 1: chosen and rejected have no common prefix"),
    ("conversation-nothing-after-prefix", _jsonl([{"chosen": [MSG], "rejected": [MSG, ANS]}]), "row 1: 'chosen' has no messages after"),
    ("jsonl-invalid-line", _text("bad.jsonl", json.dumps(GOOD) + "\n{not json}\n"), "row 2: not valid JSON"),
    ("jsonl-is-parquet", _bytes("bad.jsonl", PARQUET_BYTES), "row 1: not valid JSON"),
    ("jsonl-not-utf8", _bytes("bad.jsonl", b'{"prompt": "\xff"}\n'), "not UTF-8 text"),
    ("json-is-jsonl", _text("bad.json", json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n"), "should be named .jsonl"),
    ("json-object", _text("bad.json", json.dumps(GOOD)), "expected a JSON array of pair objects, got a JSON object"),
    ("json-garbage", _text("bad.json", "prompt,chosen,rejected\np,a,b\n"), "not a valid JSON document"),
    ("json-row-missing", _text("bad.json", json.dumps([GOOD, {"prompt": "p"}])), "row 2: missing column 'chosen'"),
    ("parquet-is-json", _text("bad.parquet", json.dumps([GOOD])), "not a parquet file"),
    ("parquet-corrupt", _bytes("bad.parquet", PARQUET_BYTES), "unreadable parquet file"),
    ("parquet-missing-column", _parquet([{"prompt": "p", "chosen": " a"}]), "missing column 'rejected'"),
    ("parquet-empty-row2", _parquet([GOOD, {**GOOD, "rejected": ""}]), "row 2: 'rejected' is empty"),
    ("parquet-null-row1", _parquet([{**GOOD, "chosen": None}, GOOD]), "row 1: 'chosen' is null"),
    ("datasets-identical-row2", _dsdir([GOOD, {**GOOD, "chosen": " b"}]), "row 2: chosen and rejected are identical"),
    ("datasets-no-columns", _dsdir([{"text": "x"}]), "no prompt/chosen/rejected or positive/negative columns (found: text)"),
    ("csv", _text("bad.csv", "prompt,chosen,rejected\n"), "unsupported preference data file type '.csv'"),
    ("empty-jsonl", _text("bad.jsonl", "\n\n"), "contains no preference pairs"),
    ("empty-json-array", _text("bad.json", "[]"), "contains no preference pairs"),
]


def _plain_dir(d: Path) -> Path:
    (d / "notds").mkdir()
    (d / "notds" / "data.txt").write_text("x")
    return d / "notds"


BAD.append(("plain-directory", _plain_dir, "not a datasets save_to_disk directory"))


def _dict_without_train(d: Path) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({"a": Dataset.from_list([GOOD]), "b": Dataset.from_list([GOOD])}).save_to_disk(str(d / "dd"))
    return d / "dd"


BAD.append(("datasetdict-no-train", _dict_without_train, "without a 'train' split; its splits are a, b"))


@pytest.mark.parametrize(("case", "write", "message"), BAD, ids=[c[0] for c in BAD])
def test_bad_data_is_one_line_naming_file_and_row(tmp_path: Path, case: str, write: Writer, message: str) -> None:
    path = write(tmp_path)
    with pytest.raises(PreferenceDataError) as info:
        load_pairs(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path.resolve()}: "), text
    assert message in text, text
    assert info.value.exit_code == 2


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such preference data file"):
        load_pairs(tmp_path / "nope.jsonl")


def test_loading_data_imports_no_model_library(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = write_jsonl(tmp_path / "p.jsonl", ROWS)
    code = (
        "import sys; from pvreg.registry.training import load_pairs; "
        f"d = load_pairs({str(f)!r}); "
        "print(d.rows, sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "3 []"


def test_parquet_and_datasets_dirs_without_the_extra_name_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = write_parquet(tmp_path / "p.parquet", ROWS[:1])
    d = write_datasets_dir(tmp_path / "ds", [{k: ROWS[0][k] for k in ("prompt", "chosen", "rejected")}])
    code = f"""
import sys, json
sys.modules["pyarrow"] = None; sys.modules["datasets"] = None  # as if neither were installed
from pvreg.registry.errors import MissingExtraError
from pvreg.registry.training import load_pairs
out = []
for path in ({str(f)!r}, {str(d)!r}):
    try:
        load_pairs(path)
    except MissingExtraError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    parquet, dsdir = json.loads(res.stdout)
    assert "reading parquet preference data needs the 'pyarrow' package" in parquet
    assert "reading a datasets directory needs the 'datasets' package" in dsdir
    assert all("pip install 'pvreg[train]'" in m for m in (parquet, dsdir))
