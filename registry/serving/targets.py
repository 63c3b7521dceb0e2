"""Serving-engine profiles: what each engine accepts in a LoRA adapter, and what pvreg must not write for it.

* ``peft`` — ``PeftModel.from_pretrained``: per-module ranks (``rank_pattern``/``alpha_pattern``),
  and full weights for non-LoRA tensors through ``modules_to_save`` (``--non-lora carry``).
* ``vllm`` / ``sglang`` — multi-LoRA servers: LoRA on linear layers only, no ``modules_to_save``
  (vLLM rejects adapters holding full weights such as ``lm_head``/``embed_tokens``), one rank for
  every module (they read ``r``/``lora_alpha`` and not the patterns, so pvreg pads every module with
  zero rows to the largest rank, which is exact), and a rank at most the server's
  ``--max-lora-rank`` (default limit here 256, vLLM's largest common setting; its allowed values are
  listed so the report can say which one to start the server with).
* ``lorax`` — like vLLM, plus one adapter per vector and the per-request merge payload.

Which tensors are "non-LoRA": 1-D tensors (norms, biases), embeddings and the output head (a LoRA
on them is not supported by every engine, and a preference vector's share there is usually small;
the report says how small).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pvreg.registry.errors import InvalidOptionError, opt

#: Engines' ``--max-lora-rank`` choices (vLLM's MaxLoRARanks); the report names the smallest that fits.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: Embedding and output-head tensors of the common causal-LM families.
_EMBEDDING_RE = re.compile(r"(^|\.)(embed_tokens|wte|wpe|embed_in|word_embeddings|embed_positions|embeddings)\.")
_HEAD_RE = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")


@dataclass(frozen=True)
class Profile:
    name: str
    carry: bool  # may write full weights (modules_to_save)
    patterns: bool  # reads rank_pattern/alpha_pattern (else: one uniform rank, zero padded)
    default_limit: int | None  # rank limit unless --max-rank says otherwise


PROFILES: dict[str, Profile] = {
    "peft": Profile("peft", carry=True, patterns=True, default_limit=None),
    "vllm": Profile("vllm", carry=False, patterns=False, default_limit=256),
    "sglang": Profile("sglang", carry=False, patterns=False, default_limit=256),
    "lorax": Profile("lorax", carry=False, patterns=False, default_limit=None),
}
NON_LORA = ("refuse", "drop", "carry")


def profile(target: str, non_lora: str) -> Profile:
    """The profile of ``target``, after checking ``non_lora`` is one it accepts."""
    p = PROFILES.get(target)
    if p is None:
        raise InvalidOptionError(
            f"invalid {opt('target')} {target!r}: expected one of {', '.join(PROFILES)}", option="target", value=target
        )
    if non_lora not in NON_LORA:
        raise InvalidOptionError(
            f"invalid {opt('non_lora')} {non_lora!r}: expected refuse, drop or carry", option="non_lora", value=non_lora
        )
    if non_lora == "carry" and not p.carry:
        raise InvalidOptionError(
            f"{opt('non_lora')} carry writes full weights (modules_to_save), which {target} does not load; "
            f"use {opt('non_lora')} drop, or {opt('target')} peft",
            option="non_lora",
            value=non_lora,
        )
    return p


def non_lora_reason(name: str, shape: tuple[int, ...]) -> str | None:
    """Why tensor ``name`` cannot be a LoRA module on every engine (None when it can)."""
    if len(shape) != 2:
        return f"{len(shape)}-D tensor (norm or bias)"
    if _EMBEDDING_RE.search(name):
        return "embedding"
    if _HEAD_RE.search(name):
        return "output head"
    if not name.endswith(".weight"):
        return "not a module weight"
    return None


def server_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` value vLLM accepts that serves ``rank`` (None above 512)."""
    return next((r for r in VLLM_RANKS if r >= rank), None)


#: Architectures whose linear layers are transformers' ``Conv1D`` (weight stored (in, out)).
_CONV1D_PREFIXES = ("GPT2", "OpenAIGPT", "gpt2", "openai-gpt")


def conv1d(architecture: str | None) -> bool:
    """Whether the base stores its linear weights (in, out) (GPT-2 family): the adapter then needs ``fan_in_fan_out``.

    Unknown architectures are taken to use ``nn.Linear`` (out, in), as every current causal LM does.
    """
    return architecture is not None and architecture.startswith(_CONV1D_PREFIXES)
