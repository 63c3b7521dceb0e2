"""Tiny causal LMs and tokenizers, built offline: one builder per kind, a preset per use.

Every transformers model a test needs comes from :func:`build_llama` or
:func:`build_gpt2` with one of the presets below, and every tokenizer from
:func:`build_tokenizer`, so the suite has one place that knows how to make them:

- ``LLAMA`` -- the evaluation tests' model (and the scoring benchmark's): small enough for
  hundreds of forward passes a second, with a larger ``initializer_range`` than the default
  so next-token distributions are far from uniform and log-prob differences are large
  enough to test;
- ``SMALL_LLAMA`` -- the shapes of :data:`helpers.factories.LLAMA_CONFIG` (what ``make_base``
  writes) with transformers' default initialisation: apply, compose;
- ``LORA_LLAMA`` / ``LORA_GPT2`` -- the LoRA tests' bases (a 128-token vocabulary);
- ``TRAIN_LLAMA`` -- the training tests' model, with the training tokenizer
  (:func:`make_tiny_llama`).

The evaluation tokenizer is word-level over ``w0``…``w{V-5}`` (plus ``<pad>``, ``<s>``,
``</s>``, ``<unk>``) and prepends ``<s>`` like Llama's does.  The training tokenizer's
vocabulary is ``<pad> <s> </s> <unk> yes no <|user|> <|assistant|> <|end|> w0 .. w54``,
its chat tokens registered as special so TRL's ``</s>`` and the role markers stay one
token each.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
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

# --- presets ---------------------------------------------------------------------------------------------------------

LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    tie_word_embeddings=False, initializer_range=0.3,
)
SMALL_LLAMA = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=64, max_position_embeddings=64,
)
LORA_LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=128,
)
TRAIN_LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    tie_word_embeddings=False,
)
GPT2 = dict(vocab_size=VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2,
            initializer_range=0.3)
LORA_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)

# --- the training vocabulary -----------------------------------------------------------------------------------------

CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>"]
TRAIN_WORDS = ["yes", "no"] + [f"w{i}" for i in range(VOCAB - len(SPECIALS) - 2 - len(CHAT_TOKENS))]
TRAIN_VOCAB = SPECIALS + ["yes", "no"] + CHAT_TOKENS + TRAIN_WORDS[2:]
PROMPT_WORDS = TRAIN_WORDS[2:]
#: A minimal chat template: role markers are vocabulary tokens, every turn ends with <|end|>.
TRAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


# --- builders --------------------------------------------------------------------------------------------------------


def build_tokenizer(*, bos: bool = True, chat_template: str | None = None, vocab: Sequence[str] | None = None,
                    special: Sequence[str] = (), split_punctuation: bool = True) -> Any:
    """A word-level fast tokenizer over ``vocab`` (default: the evaluation vocabulary).

    ``bos`` makes ``add_special_tokens=True`` prepend ``<s>``; ``special`` tokens are
    registered as additional special tokens; ``split_punctuation`` picks the
    ``Whitespace`` pre-tokenizer (else ``WhitespaceSplit``, which keeps ``<|end|>`` whole).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab if vocab is not None else SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", ids["<s>"])]
        )
    extra = {"additional_special_tokens": list(special)} if special else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", **extra
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_llama(*, seed: int | None = 0, attn: str | None = "sdpa", config: dict[str, Any] = LLAMA,
                **overrides: Any) -> Any:
    """A random float32 ``LlamaForCausalLM`` in eval mode, from a preset and ``overrides``.

    ``seed`` seeds torch's global generator first (None: the caller already did);
    ``attn`` picks the attention implementation (None: transformers' default).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    cfg = LlamaConfig(**{**config, **overrides})
    if attn is not None:
        cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def build_gpt2(*, seed: int | None = 0, config: dict[str, Any] = GPT2, **overrides: Any) -> Any:
    """A random GPT-2 in eval mode (absolute position embeddings: padding mistakes show up differently than with RoPE)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**config, **overrides})).eval()


def save_tiny_lm(directory: Path, *, seed: int = 0) -> Path:
    """The evaluation Llama and its tokenizer as a model directory ``AutoModelForCausalLM`` loads."""
    build_llama(seed=seed).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def make_tiny_llama(directory: Path, *, seed: int = 0, chat: bool = False) -> Path:
    """The training Llama (~40k parameters) plus the training tokenizer, saved as a model directory."""
    build_llama(seed=seed, attn=None, config=TRAIN_LLAMA).save_pretrained(directory)
    build_tokenizer(bos=False, vocab=TRAIN_VOCAB, special=CHAT_TOKENS, split_punctuation=False,
                    chat_template=TRAIN_CHAT_TEMPLATE if chat else None).save_pretrained(directory)
    return directory


# --- inputs ----------------------------------------------------------------------------------------------------------


def words(rng: random.Random, lo: int, hi: int) -> str:
    """A random run of ``lo``…``hi`` evaluation-vocabulary words."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def perturb_(model: Any, *, seed: int, scale: float) -> None:
    """Add Gaussian noise to every parameter in place (what applying a vector does to a model)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def random_prompts(n: int, *, seed: int, words: int = 4) -> list[str]:
    """``n`` prompts of ``words`` random training-vocabulary words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(PROMPT_WORDS) for _ in range(words)) for _ in range(n)]


def yes_no_pairs(n: int, *, seed: int) -> list[dict[str, str]]:
    """Synthetic preference data: after any prompt, answer " yes" rather than " no"."""
    return [{"prompt": p, "chosen": " yes", "rejected": " no"} for p in random_prompts(n, seed=seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
