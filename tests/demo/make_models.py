"""Build the demo inputs offline: a tiny Llama base (with a word-level tokenizer) and synthetic
preference data for three preferences, all from fixed seeds.

Each preference is a synthetic stand-in for one of the paper's (the model is far too small for real text):

- ``helpful``  — answer " yes" rather than " no" (a helpful model goes along with the request);
- ``harmless`` — answer " safe" rather than " risky";
- ``concise``  — answer with the short " ok" rather than the long " certainly".

(Each is one answer token against another, so the base starts near chance on all three; a preference
for shorter *sequences* would not show, as a random base already gives fewer tokens a higher log-prob.)

Usage: python make_models.py OUTDIR  ->  OUTDIR/base/, OUTDIR/data/{helpful,harmless,concise}.jsonl (training
pairs) and OUTDIR/data/{...}-heldout.jsonl (pairs on prompts the training never sees, for score.py)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ANSWERS = ["yes", "no", "safe", "risky", "ok", "certainly"]
WORDS = [f"w{i}" for i in range(64 - len(SPECIALS) - len(ANSWERS))]
CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
)
TRAIN_PAIRS, HELDOUT_PAIRS = 64, 32


def build_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over the answers and 'w0'..'w53'; built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIALS + ANSWERS + WORDS
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # keeps "</s>" whole when TRL appends it
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)


def pair(preference: str, rng: random.Random) -> dict[str, str]:
    """One pair; completions start with a space (TRL tokenizes prompt + completion as one text)."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(4))
    if preference == "helpful":
        return {"prompt": prompt, "chosen": " yes", "rejected": " no"}
    if preference == "harmless":
        return {"prompt": prompt, "chosen": " safe", "rejected": " risky"}
    return {"prompt": prompt, "chosen": " ok", "rejected": " certainly"}


def write_pairs(path: Path, preference: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(pair(preference, rng)) + "\n" for _ in range(n)))


def main(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    base = out / "base"
    model.save_pretrained(base)
    build_tokenizer(base)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i, preference in enumerate(("helpful", "harmless", "concise")):
        write_pairs(data / f"{preference}.jsonl", preference, TRAIN_PAIRS, seed=10 + i)
        write_pairs(data / f"{preference}-heldout.jsonl", preference, HELDOUT_PAIRS, seed=100 + i)
        print(f"{preference}: {TRAIN_PAIRS} training pairs, {HELDOUT_PAIRS} held-out pairs")
    print(f"base written to {base}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_models.py OUTDIR")
    main(Path(sys.argv[1]))
