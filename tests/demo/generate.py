"""Load a model directory with transformers and greedily generate a few tokens.

Usage: python generate.py MODEL_DIR
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT_IDS = [1, 10, 11, 12, 13]


def main(path: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=0)
    new = out[0, len(PROMPT_IDS):].tolist()
    print("generated ids:", new)
    if tokenizer is not None:
        print("generated text:", tokenizer.decode(new))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py MODEL_DIR")
    main(sys.argv[1])
