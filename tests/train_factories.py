"""Offline builders for the training tests: a tiny random Llama with a word-level tokenizer,
and synthetic preference data ("answer yes over no") to check that DPO really learned.

The vocabulary is ``<pad> <s> </s> <unk> yes no <|user|> <|assistant|> <|end|> w0 .. w54``;
special tokens are registered as such, so the ``</s>`` TRL appends to completions
is one token and not split by the whitespace pre-tokenizer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
)
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ["yes", "no"] + [f"w{i}" for i in range(LLAMA["vocab_size"] - len(SPECIAL) - 2 - len(CHAT_TOKENS))]
VOCAB = SPECIAL + ["yes", "no"] + CHAT_TOKENS + WORDS[2:]
PROMPT_WORDS = WORDS[2:]
#: A minimal chat template: role markers are vocabulary tokens, every turn ends with <|end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def build_tokenizer(directory: Path, *, chat: bool = False) -> None:
    """Save a word-level fast tokenizer (optionally with a chat template) into ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=CHAT_TOKENS,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def make_tiny_llama(directory: Path, *, seed: int = 0, chat: bool = False) -> Path:
    """A random 2-layer Llama (~40k parameters) plus tokenizer, saved as a Hugging Face model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    model.save_pretrained(directory)
    build_tokenizer(directory, chat=chat)
    return directory


def random_prompts(n: int, *, seed: int, words: int = 4) -> list[str]:
    """``n`` prompts of ``words`` random vocabulary words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(PROMPT_WORDS) for _ in range(words)) for _ in range(n)]


def yes_no_pairs(n: int, *, seed: int) -> list[dict[str, str]]:
    """Synthetic preference: after any prompt, answer " yes" rather than " no"."""
    return [{"prompt": p, "chosen": " yes", "rejected": " no"} for p in random_prompts(n, seed=seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
