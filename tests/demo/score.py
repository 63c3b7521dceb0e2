"""Held-out preference accuracy of models, scored with plain transformers (nothing from pvreg).

For every held-out pair, log p(chosen | prompt) and log p(rejected | prompt) are summed over the
completion's tokens plus the end-of-sequence token (as DPO trained them); a pair counts as preferred
when the chosen side scores higher.  Prints one row per preference: the accuracy and the mean margin
for each model given.

Usage: python score.py DATA_DIR LABEL=MODEL_DIR...   (DATA_DIR holds <preference>-heldout.jsonl)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def completion_logp(model, tok, prompt: str, completion: str) -> float:
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1 :].sum())


def score(model, tok, rows: list[dict]) -> tuple[float, float]:
    margins = [completion_logp(model, tok, r["prompt"], r["chosen"]) - completion_logp(model, tok, r["prompt"], r["rejected"])
               for r in rows]
    return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)


def main(data: Path, models: list[tuple[str, str]]) -> None:
    loaded = [(label, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
              for label, path in models]
    header = "preference".ljust(12) + "".join(f"{label + ' acc':>14}{label + ' margin':>16}" for label, _, _ in loaded)
    print("held-out preference score: accuracy of log p(chosen) > log p(rejected), and the mean margin")
    print(header)
    for f in sorted(data.glob("*-heldout.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        cells = []
        for _, model, tok in loaded:
            acc, margin = score(model, tok, rows)
            cells.append(f"{acc:>14.2f}{margin:>+16.2f}")
        print(f.name.removesuffix("-heldout.jsonl").ljust(12) + "".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 3 or not all("=" in a for a in sys.argv[2:]):
        sys.exit("usage: score.py DATA_DIR LABEL=MODEL_DIR...")
    main(Path(sys.argv[1]), [tuple(a.split("=", 1)) for a in sys.argv[2:]])  # type: ignore[misc]
