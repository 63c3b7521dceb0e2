"""Dense deltas from PEFT LoRA adapters (pvreg.registry.sources.lora).

Expected deltas are computed independently by peft: ``merge_and_unload()`` on a fresh
base+adapter, minus the base weights.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.models import LORA_GPT2, LORA_LLAMA, build_gpt2, build_llama  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from pvreg.registry.errors import (  # noqa: E402
    BaseMismatchError,
    InvalidTensorFileError,
    NotFoundError,
    UnsafeCheckpointError,
    UnsupportedAdapterError,
)
from pvreg.registry.sources.lora import LoraAdapter  # noqa: E402
from transformers import GPT2LMHeadModel, LlamaForCausalLM  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def _base_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(base_dir / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _randomise_lora(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _make(tmp: Path, family: str, seed: int = 0, **lora_kwargs) -> tuple[Path, Path]:
    """Save a tiny base and a randomised LoRA adapter for it; return (base_dir, adapter_dir)."""
    if family == "llama":
        model = build_llama(seed=seed, attn=None, config=LORA_LLAMA)
    else:
        model = build_gpt2(seed=seed, config=LORA_GPT2)
    base_dir, adapter_dir = tmp / "base", tmp / "adapter"
    model.save_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    _randomise_lora(peft_model, seed + 1)
    peft_model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def _expected_deltas(family: str, base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """peft's own merge, minus the base, for every tensor of the base checkpoint that changed."""
    base = load_file(str(base_dir / "model.safetensors"))
    cls = LlamaForCausalLM if family == "llama" else GPT2LMHeadModel
    fresh = cls.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload().state_dict()
    deltas = {}
    for name, tensor in base.items():
        diff = merged[name].float() - tensor.float()
        if torch.count_nonzero(diff):
            deltas[name] = diff
    return deltas


def _assert_matches(adapter: LoraAdapter, base_dir: Path, expected: dict[str, torch.Tensor]) -> dict[str, str]:
    mapping = adapter.resolve(_base_shapes(base_dir))
    assert set(mapping) == set(expected)
    for name, want in expected.items():
        got = adapter.delta(name)
        assert got.dtype == torch.float32
        assert got.shape == want.shape
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)
    return mapping


def _llama_target_tensors(targets: list[str]) -> set[str]:
    out = set()
    for layer in range(2):
        for t in targets:
            part = "mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            out.add(f"model.layers.{layer}.{part}.{t}.weight")
    return out


# --------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_llama_matches_peft_merge(tmp_path: Path, use_rslora: bool) -> None:
    base_dir, adapter_dir = _make(
        tmp_path, "llama", r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=use_rslora
    )
    expected = _expected_deltas("llama", base_dir, adapter_dir)
    assert set(expected) == _llama_target_tensors(LLAMA_TARGETS)

    adapter = LoraAdapter.open(adapter_dir)
    assert adapter.config["use_rslora"] is use_rslora
    assert adapter.modules == sorted(n.removesuffix(".weight") for n in expected)
    mapping = _assert_matches(adapter, base_dir, expected)
    assert all(mapping[name] == name.removesuffix(".weight") for name in mapping)
    want_scale = 8 / 2.0 if use_rslora else 8 / 4
    assert adapter.scaling("model.layers.0.self_attn.q_proj") == pytest.approx(want_scale)


def test_llama_rank_and_alpha_pattern(tmp_path: Path) -> None:
    rank_pattern = {"layers.0.self_attn.q_proj": 2, "v_proj": 6}
    alpha_pattern = {"^model.layers.1.self_attn.o_proj": 3, "down_proj": 16, "mlp.up_proj": 5}
    base_dir, adapter_dir = _make(
        tmp_path,
        "llama",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    expected = _expected_deltas("llama", base_dir, adapter_dir)
    adapter = LoraAdapter.open(adapter_dir)
    assert adapter.rank("model.layers.0.self_attn.q_proj") == 2
    assert adapter.rank("model.layers.1.self_attn.q_proj") == 4
    assert adapter.rank("model.layers.1.self_attn.v_proj") == 6
    assert adapter.scaling("model.layers.1.self_attn.o_proj") == pytest.approx(3 / 4)
    assert adapter.scaling("model.layers.0.self_attn.o_proj") == pytest.approx(8 / 4)
    assert adapter.scaling("model.layers.0.mlp.down_proj") == pytest.approx(16 / 4)
    assert adapter.scaling("model.layers.0.self_attn.v_proj") == pytest.approx(8 / 6)
    _assert_matches(adapter, base_dir, expected)


def test_gpt2_conv1d_fan_in_fan_out(tmp_path: Path) -> None:
    base_dir, adapter_dir = _make(
        tmp_path, "gpt2", r=4, lora_alpha=8, target_modules=GPT2_TARGETS, fan_in_fan_out=True
    )
    expected = _expected_deltas("gpt2", base_dir, adapter_dir)
    assert len(expected) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer
    adapter = LoraAdapter.open(adapter_dir)
    mapping = _assert_matches(adapter, base_dir, expected)
    assert mapping["transformer.h.0.attn.c_attn.weight"] == "transformer.h.0.attn.c_attn"
    assert adapter.delta("transformer.h.0.attn.c_attn.weight").shape == (32, 96)  # Conv1D: [in, out]

    # Hub-style GPT-2 checkpoints carry no "transformer." prefix: resolve by stripping it.
    base = load_file(str(base_dir / "model.safetensors"))
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    save_file({k.removeprefix("transformer."): v for k, v in base.items()}, str(bare_dir / "model.safetensors"))
    bare = LoraAdapter.open(adapter_dir)
    mapping = bare.resolve(_base_shapes(bare_dir))
    assert set(mapping) == {k.removeprefix("transformer.") for k in expected}
    for name, want in expected.items():
        torch.testing.assert_close(bare.delta(name.removeprefix("transformer.")), want, rtol=1e-5, atol=1e-5)


def test_prefix_added_and_bin_and_bf16(tmp_path: Path) -> None:
    """Adapter keys without the model-class prefix; .bin checkpoint; bf16 factors upcast."""
    base_dir, adapter_dir = _make(tmp_path, "llama", r=4, lora_alpha=8, target_modules=["q_proj"])
    shapes = _base_shapes(base_dir)
    ref = LoraAdapter.open(adapter_dir)
    ref.resolve(shapes)
    want = {n: ref.delta(n) for n in _llama_target_tensors(["q_proj"])}

    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    # keys "base_model.model.layers.0..." (no "model."), saved as a zip torch checkpoint
    torch.save(
        {k.replace("base_model.model.model.", "base_model.model."): v for k, v in state.items()},
        other / "adapter_model.bin",
    )
    adapter = LoraAdapter.open(other)
    assert adapter.modules[0] == "layers.0.self_attn.q_proj"
    assert set(adapter.resolve(shapes)) == set(want)
    for name, tensor in want.items():
        assert torch.equal(adapter.delta(name), tensor)

    (other / "adapter_model.bin").unlink()
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(other / "adapter_model.safetensors"))
    adapter = LoraAdapter.open(other)
    adapter.resolve(shapes)
    for name in want:
        a = state[f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"].to(torch.bfloat16).float()
        b = state[f"base_model.model.{name.removesuffix('.weight')}.lora_B.weight"].to(torch.bfloat16).float()
        got = adapter.delta(name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, (b @ a) * 2.0, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "bias"),
    ],
    ids=["dora", "modules_to_save", "bias"],
)
def test_refuses_unrepresentable_adapters(tmp_path: Path, kwargs: dict, needle: str) -> None:
    _, adapter_dir = _make(tmp_path, "gpt2", r=4, lora_alpha=8, target_modules=GPT2_TARGETS, **kwargs)
    with pytest.raises(UnsupportedAdapterError, match=needle) as info:
        LoraAdapter.open(adapter_dir)
    assert "\n" not in str(info.value)

    # Even with a doctored config, the saved extra tensors are refused.
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(use_dora=False, modules_to_save=None, bias="none")
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedAdapterError):
        LoraAdapter.open(adapter_dir)


def _hand_adapter(tmp: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "none", "target_modules": ["q"]}
    cfg.update(config)
    (tmp / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    return tmp


def _pair(module: str, out: int = 3, inp: int = 5, r: int = 2) -> dict[str, torch.Tensor]:
    return {
        f"base_model.model.{module}.lora_A.weight": torch.ones(r, inp),
        f"base_model.model.{module}.lora_B.weight": torch.ones(out, r),
    }


@pytest.mark.parametrize(
    "config, extra",
    [
        ({"peft_type": "IA3"}, {}),
        ({"layer_replication": [[0, 2]]}, {}),
        ({"target_parameters": ["experts.down_proj"]}, {}),
        ({"init_lora_weights": "pissa_niter_4"}, {}),
        ({"alora_invocation_tokens": [1, 2]}, {}),
        ({"some_future_variant": {"x": 1}}, {}),
        ({}, {"base_model.model.emb.lora_embedding_A": torch.ones(2, 7)}),
        ({}, {"base_model.model.m.q.lora_A.default.weight": torch.ones(2, 5)}),
        ({}, {"base_model.model.m.q.lora_B.bias": torch.ones(3)}),
    ],
    ids=["ia3", "replication", "target_parameters", "pissa", "alora", "unknown-field", "embedding",
         "adapter-name", "lora-bias"],
)
def test_refuses_by_config_or_key(tmp_path: Path, config: dict, extra: dict) -> None:
    adapter_dir = _hand_adapter(tmp_path / "a", {**_pair("m.q"), **extra}, **config)
    with pytest.raises(UnsupportedAdapterError) as info:
        LoraAdapter.open(adapter_dir)
    assert "\n" not in str(info.value) and "adapter" in str(info.value)


def test_malformed_adapters(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        LoraAdapter.open(tmp_path / "missing")
    only_a = {k: v for k, v in _pair("m.q").items() if "lora_A" in k}
    with pytest.raises(InvalidTensorFileError, match="lora_B"):
        LoraAdapter.open(_hand_adapter(tmp_path / "a", only_a))
    with pytest.raises(InvalidTensorFileError, match="rank 4"):  # factors of rank 2, config says 4
        LoraAdapter.open(_hand_adapter(tmp_path / "b", _pair("m.q"), r=4))


class _Evil:
    marker: str = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["zip", "raw"])
def test_refuses_code_executing_pickle(tmp_path: Path, fmt: str) -> None:
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    marker = tmp_path / "pwned"
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    evil = _Evil()
    evil.marker = str(marker)
    payload = {"base_model.model.m.q.lora_A.weight": evil}
    if fmt == "zip":
        torch.save(payload, adapter_dir / "adapter_model.bin")
    else:
        with open(adapter_dir / "adapter_model.bin", "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as info:
        LoraAdapter.open(adapter_dir)
    assert "adapter_model.bin" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------ base mismatch


def test_base_missing_adapted_tensor(tmp_path: Path) -> None:
    base_dir, adapter_dir = _make(tmp_path, "llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    shapes = _base_shapes(base_dir)
    del shapes["model.layers.1.self_attn.v_proj.weight"]
    adapter = LoraAdapter.open(adapter_dir)
    with pytest.raises(BaseMismatchError, match=r"model\.layers\.1\.self_attn\.v_proj"):
        adapter.resolve(shapes)

    shapes = _base_shapes(base_dir)
    shapes["model.layers.0.self_attn.q_proj.weight"] = (64, 32)
    with pytest.raises(BaseMismatchError, match=r"q_proj.*\[32, 32\].*\[64, 32\]"):
        adapter.resolve(shapes)

    with pytest.raises(NotFoundError):
        LoraAdapter.open(adapter_dir).delta("model.layers.0.self_attn.q_proj.weight")  # not resolved


def test_ambiguous_and_layout_resolution(tmp_path: Path) -> None:
    adapter = LoraAdapter.open(_hand_adapter(tmp_path / "a", _pair("m.q")))
    with pytest.raises(BaseMismatchError, match="ambiguous"):
        adapter.resolve({"x.m.q.weight": (3, 5), "y.m.q.weight": (3, 5)})
    assert adapter.resolve({"x.m.q.weight": (3, 5)}) == {"x.m.q.weight": "m.q"}
    assert adapter.resolve({"q.weight": (3, 5)}) == {"q.weight": "m.q"}
    assert adapter.resolve({"m.q.weight": (5, 3)}) == {"m.q.weight": "m.q"}  # Conv1D layout
    assert adapter.delta("m.q.weight").shape == (5, 3)

    # A square weight follows the layout the non-square ones show; mixed layouts are refused.
    tensors = {**_pair("m.q", 3, 3), **_pair("m.k", 3, 5), **_pair("m.v", 4, 5)}
    adapter = LoraAdapter.open(_hand_adapter(tmp_path / "b", tensors, fan_in_fan_out=True))
    with pytest.raises(UnsupportedAdapterError, match="m.q"):
        adapter.resolve({"m.q.weight": (3, 3), "m.k.weight": (5, 3), "m.v.weight": (4, 5)})
    adapter.resolve({"m.q.weight": (3, 3), "m.k.weight": (5, 3), "m.v.weight": (5, 4)})
