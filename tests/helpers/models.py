"""Tiny causal LMs and tokenizers for the evaluation tests and the scoring benchmark, built offline.

A random Llama (or GPT-2) small enough to run hundreds of forward passes in
a second, and a word-level tokenizer over ``w0``…``w{V-5}`` (plus ``<pad>``,
``<s>``, ``</s>``, ``<unk>``) that prepends ``<s>`` like Llama's does.  A larger
``initializer_range`` than the default makes the next-token distributions
far from uniform, so log-prob differences are large enough to test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

VOCAB = 64
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
#: A chat template made of ordinary words, so the word-level tokenizer can tokenise what it renders.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}"
    "{% if add_generation_prompt %}w3 {% endif %}"
)
LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    tie_word_embeddings=False, initializer_range=0.3,
)


def build_tokenizer(*, bos: bool = True, chat_template: str | None = None) -> Any:
    """The word-level tokenizer; ``bos`` makes ``add_special_tokens=True`` prepend ``<s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_llama(*, seed: int = 0, attn: str = "sdpa", **overrides: Any) -> Any:
    """A random float32 Llama in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**LLAMA, **overrides})
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def build_gpt2(*, seed: int = 0) -> Any:
    """A random GPT-2 (absolute position embeddings: padding mistakes show up differently than with RoPE)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    return GPT2LMHeadModel(config).eval()


def save_tiny_lm(directory: Path, *, seed: int = 0) -> Path:
    """The tiny Llama and its tokenizer as a model directory ``AutoModelForCausalLM`` loads."""
    build_llama(seed=seed).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def words(rng: random.Random, lo: int, hi: int) -> str:
    """A random run of ``lo``…``hi`` vocabulary words."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def perturb_(model: Any, *, seed: int, scale: float) -> None:
    """Add Gaussian noise to every parameter in place (what applying a vector does to a model)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
