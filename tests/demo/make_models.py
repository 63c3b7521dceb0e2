"""Build the demo inputs offline: a tiny Llama base (with a word-level tokenizer)
and three preference-vector delta files, all from fixed seeds.

Usage: python make_models.py OUTDIR  ->  OUTDIR/base/, OUTDIR/vectors/{helpful,harmless,concise}.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
)
# Which tensors each "preference" moves (a subset, as a real DPO delta might).
SUBSETS = {
    "helpful": ("mlp.", "lm_head"),
    "harmless": ("self_attn.", "norm"),
    "concise": ("layers.1.", "embed_tokens"),
}
SEEDS = {"helpful": 11, "harmless": 22, "concise": 33}


def build_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over 'w0'..'w60'; built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(CONFIG["vocab_size"] - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)


def main(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    base = out / "base"
    model.save_pretrained(base)
    build_tokenizer(base)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    vectors = out / "vectors"
    vectors.mkdir(parents=True, exist_ok=True)
    for name, keys in SUBSETS.items():
        g = torch.Generator().manual_seed(SEEDS[name])
        chosen = sorted(n for n in state if any(k in n for k in keys))
        delta = {n: torch.randn(state[n].shape, generator=g) * 0.01 for n in chosen}
        save_file(delta, str(vectors / f"{name}.safetensors"))
        print(f"{name}: {len(delta)} tensors")
    print(f"base written to {base}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_models.py OUTDIR")
    main(Path(sys.argv[1]))
