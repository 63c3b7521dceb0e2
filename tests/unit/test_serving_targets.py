"""Engine profiles and the adapter config (pvreg.registry.serving.targets, .peftdir), without models."""

from __future__ import annotations

import re

import pytest
import torch
from pvreg.registry.errors import InvalidOptionError
from pvreg.registry.serving.peftdir import AdapterContent, adapter_config, padded
from pvreg.registry.serving.targets import conv1d, non_lora_reason, profile, server_rank


@pytest.mark.parametrize(
    ("name", "shape", "why"),
    [
        ("model.layers.0.self_attn.q_proj.weight", (8, 4), None),
        ("model.layers.0.input_layernorm.weight", (4,), "1-D tensor (norm or bias)"),
        ("model.layers.0.self_attn.q_proj.bias", (8,), "1-D tensor (norm or bias)"),
        ("model.embed_tokens.weight", (100, 4), "embedding"),
        ("transformer.wte.weight", (100, 4), "embedding"),
        ("lm_head.weight", (100, 4), "output head"),
        ("transformer.h.0.attn.c_attn.weight", (4, 12), None),
    ],
)
def test_non_lora_reason(name: str, shape: tuple[int, ...], why: str | None) -> None:
    assert non_lora_reason(name, shape) == why


def test_profiles_refuse_carry_where_the_engine_cannot_load_it() -> None:
    assert profile("peft", "carry").carry
    for target in ("vllm", "sglang", "lorax"):
        with pytest.raises(InvalidOptionError, match=f"which {target} does not load"):
            profile(target, "carry")
    with pytest.raises(InvalidOptionError, match="invalid target 'tgi'"):
        profile("tgi", "drop")
    assert profile("vllm", "drop").default_limit == 256 and not profile("vllm", "drop").patterns


def test_server_rank_and_conv1d() -> None:
    assert [server_rank(r) for r in (1, 2, 16, 17, 300, 513)] == [1, 8, 16, 32, 320, None]
    assert conv1d("GPT2LMHeadModel") and not conv1d("LlamaForCausalLM") and not conv1d(None)


def test_padding_keeps_the_product_and_patterns_name_one_module_each() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, generator=g), torch.randn(3, 2, generator=g)
    pa, pb = padded(a, b, 6)
    assert pa.shape == (6, 5) and pb.shape == (3, 6) and torch.equal(pb @ pa, b @ a)
    content = AdapterContent(
        factors={
            "model.layers.1.mlp.up_proj": (torch.zeros(4, 5), torch.zeros(3, 4)),
            "model.layers.11.mlp.up_proj": (torch.zeros(2, 5), torch.zeros(3, 2)),
            "model.layers.2.mlp.up_proj": (torch.zeros(2, 5), torch.zeros(3, 2)),
        }
    )
    config = adapter_config(content, base_model="acme/llama", uniform=False)
    assert config["r"] == 2 and config["alpha_pattern"] == config["rank_pattern"]
    (pattern, rank), = config["rank_pattern"].items()
    assert rank == 4
    # PEFT's rule (get_pattern_key): re.match(rf"(.*\.)?({pattern})$", module)
    assert [m for m in content.factors if re.match(rf"(.*\.)?({pattern})$", m)] == ["model.layers.1.mlp.up_proj"]
    uniform = adapter_config(content, base_model=None, uniform=True)
    assert uniform["r"] == uniform["lora_alpha"] == 4 and uniform["rank_pattern"] == {}
