"""Writing an adapter directory that ``PeftModel.from_pretrained(base, DIR)`` loads.

``adapter_model.safetensors`` holds ``base_model.model.<module>.lora_A.weight`` (r, in) and
``lora_B.weight`` (out, r) per module, plus, for carried tensors, the module's full weights
(``base_model.model.<module>.<param>``, PEFT's ``modules_to_save`` format).  The scaling is folded
into B, so ``lora_alpha = r`` per module and PEFT's scaling ``alpha / r`` is exactly 1: per-module
ranks then need both ``rank_pattern`` and ``alpha_pattern`` (the patterns are the escaped module
paths, anchored the way PEFT anchors them, so each names exactly one module).  ``uniform`` pads every
module with zero rows/columns to the largest rank instead (exact: zero rank-1 terms add nothing),
for engines that read only ``r`` and ``lora_alpha``.

pvreg does not import peft to write this; the tests load the result with peft.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.tensors.dtypes import dtype_code
from pvreg.registry.tensors.hfnames import ADAPTER_CONFIG, ADAPTER_SAFETENSORS, PEFT_PREFIX
from pvreg.registry.tensors.safetensors import StreamingWriter

if TYPE_CHECKING:
    import torch


@dataclass
class AdapterContent:
    """The tensors of one adapter, keyed by module path (no peft prefix)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (A, B)
    full: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor name -> full weight (carried)
    modules_to_save: list[str] = field(default_factory=list)

    def max_rank(self) -> int:
        return max((a.shape[0] for a, _ in self.factors.values()), default=0)


def padded(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with zero rows/columns appended up to ``rank``: the same B·A."""
    import torch

    extra = rank - a.shape[0]
    if extra <= 0:
        return a, b
    return (
        torch.cat([a, a.new_zeros((extra, a.shape[1]))], 0),
        torch.cat([b, b.new_zeros((b.shape[0], extra))], 1),
    )


def _pattern(module: str) -> str:
    return re.escape(module)


def adapter_config(
    content: AdapterContent, *, base_model: str | None, uniform: bool, fan_in_fan_out: bool = False
) -> dict[str, Any]:
    """``adapter_config.json``: plain LoRA, scaling 1 per module, no dropout or bias."""
    ranks = {m: int(a.shape[0]) for m, (a, _) in content.factors.items()}
    if uniform or not ranks:
        r = content.max_rank() or 1
        rank_pattern: dict[str, int] = {}
    else:
        r = Counter(ranks.values()).most_common(1)[0][0]
        rank_pattern = {_pattern(m): k for m, k in sorted(ranks.items()) if k != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "target_modules": sorted(content.factors),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": sorted(content.modules_to_save) or None,
    }


def write_adapter(
    directory: Path, content: AdapterContent, *, base_model: str | None, uniform: bool, fan_in_fan_out: bool = False
) -> str:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``; the file's sha256.

    ``content`` holds factors in the base tensor's layout, φ = B·A with B (d0, r) and A (r, d1).
    ``fan_in_fan_out`` (GPT-2's ``Conv1D``, whose weight is stored (in, out)): PEFT then computes
    ΔW = (B_peft·A_peft)ᵀ with A_peft (r, in), B_peft (out, r), so A_peft = Bᵀ and B_peft = Aᵀ.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rank = content.max_rank()
    tensors: dict[str, torch.Tensor] = {}
    for module, (a0, b0) in content.factors.items():
        a, b = padded(a0, b0, rank) if uniform else (a0, b0)
        if fan_in_fan_out:
            a, b = b.T, a.T
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    for name, t in content.full.items():
        tensors[f"{PEFT_PREFIX}{name}"] = t.contiguous()
    entries = [(k, dtype_code(t.dtype), tuple(t.shape)) for k, t in sorted(tensors.items())]
    with StreamingWriter(directory / ADAPTER_SAFETENSORS, entries, {"format": "pt"}) as writer:
        for k, _, _ in entries:
            writer.write(k, tensors[k])
        digest = writer.commit()
    config = adapter_config(content, base_model=base_model, uniform=uniform, fan_in_fan_out=fan_in_fan_out)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return digest
