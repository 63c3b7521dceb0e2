"""Eval sets and a vector whose effect is known, for the ``pvreg eval`` / ``pvreg sweep`` tests.

The vector (:func:`margin_vector`) touches two rows of ``lm_head``: +u on the row of the
chosen token and −u on the row of the rejected one, with u the mean final hidden state
over the pairs' prompts.  For single-token completions the margin log p(chosen) −
log p(rejected) is then exactly ``margin₀ + 2η·h·u`` (the softmax normaliser cancels),
so the mean margin grows linearly in η, and every pair kept has h·u > 0, so accuracy
cannot fall as η grows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from helpers.models import WORDS, save_tiny_lm, write_jsonl

CHOSEN, REJECTED = " w5", " w6"


def prompts(n: int, *, seed: int) -> list[str]:
    """Prompts of uneven length (1 to 7 words) from the evaluation vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7))) for _ in range(n)]


def final_hidden(model: Any, tok: Any, prompt: str) -> Any:
    """The (normed) hidden state lm_head sees at the last prompt position, by a plain transformers pass."""
    import torch

    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        return model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()


def margin_vector(base: Path, out: Path, *, n: int = 24, seed: int = 0, scale: float = 1.0) -> tuple[Path, list[dict]]:
    """(vector file, the pairs it is known to help): see the module docstring."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    tok = AutoTokenizer.from_pretrained(base)
    candidates = prompts(n, seed=seed)
    hs = [final_hidden(model, tok, p) for p in candidates]
    u = torch.stack(hs).mean(0)
    kept = [p for p, h in zip(candidates, hs, strict=True) if float(h @ u) > 0]
    assert len(kept) >= n // 2, "the construction needs most prompts on the mean's side"
    w = model.lm_head.weight
    delta = torch.zeros_like(w)
    c, r = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (CHOSEN, REJECTED))
    delta[c] = u.float() * scale
    delta[r] = -u.float() * scale
    save_file({"lm_head.weight": delta.contiguous()}, str(out))
    return out, [{"prompt": p, "chosen": CHOSEN, "rejected": REJECTED} for p in kept]


def eval_files(tmp: Path, *, seed: int = 0) -> dict[str, Path]:
    """A base model plus pairs (multi-token completions of uneven length), texts and choices."""
    rng = random.Random(seed)
    base = save_tiny_lm(tmp / "base")

    def w(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    pairs = [{"prompt": w(1, 6), "chosen": " " + w(1, 4), "rejected": " " + w(1, 5)} for _ in range(9)]
    pairs = [p for p in pairs if p["chosen"] != p["rejected"]]
    texts = "\n\n".join(w(3, 18) for _ in range(5)) + "\n"
    choices = [{"question": w(1, 4), "choices": [w(1, 2), w(1, 3), w(2, 3)], "answer": rng.randint(0, 2)} for _ in range(6)]
    for c in choices:
        c["choices"] = list(dict.fromkeys(c["choices"]))
        c["answer"] = min(c["answer"], len(c["choices"]) - 1)
        if len(c["choices"]) < 2:
            c["choices"].append("w0 w0 w0")
    (tmp / "text.txt").write_text(texts)
    (tmp / "choices.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    return {
        "base": base,
        "pairs": write_jsonl(tmp / "pairs.jsonl", pairs),
        "text": tmp / "text.txt",
        "choices": tmp / "choices.jsonl",
    }
