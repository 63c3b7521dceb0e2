"""``pvreg add`` from checkpoints through the CLI: LoRA adapters, unsafe pickles, mismatches.

LoRA expectations come from peft itself: ``merge_and_unload()`` on a fresh
base+adapter, minus the base weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line
from helpers.factories import llama_shapes, random_tensors, save_checkpoint
from helpers.models import LORA_LLAMA, build_llama
from pvreg.registry.api import Registry
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(base_dir: Path, out: Path, targets: list[str], seed: int | None, **kw) -> Path:
    """Save a LoRA adapter for the base; ``seed`` None keeps peft's init (B = 0)."""
    model = LlamaForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw))
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(out)
    return out


def _merged(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    fresh = LlamaForCausalLM.from_pretrained(base_dir)
    return {k: v.detach().clone() for k, v in PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("lora")
    base_dir = tmp / "base"
    build_llama(seed=0, attn=None, config=LORA_LLAMA).save_pretrained(base_dir)
    base = load_file(str(base_dir / "model.safetensors"))
    pos = _adapter(base_dir, tmp / "pos", ALL_TARGETS, seed=1)
    neg = _adapter(base_dir, tmp / "neg", ["q_proj", "v_proj", "down_proj"], seed=2)
    merged_pos, merged_neg = _merged(base_dir, pos), _merged(base_dir, neg)
    return {
        "tmp": tmp, "base_dir": base_dir, "base": base, "pos": pos, "neg": neg,
        "delta_pos": {n: merged_pos[n] - base[n] for n in base if not torch.equal(merged_pos[n], base[n])},
        "pair": {n: merged_pos[n] - merged_neg[n] for n in base if not torch.equal(merged_pos[n], merged_neg[n])},
    }


def _stored(ref: str) -> dict[str, torch.Tensor]:
    with Registry.open() as reg:
        return load_file(str(reg.blob_path(ref)))


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for n, w in want.items():
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], w, rtol=1e-5, atol=1e-5)


def _target_names(targets: list[str]) -> list[str]:
    return sorted(
        f"model.layers.{layer}.{'mlp' if t in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{t}.weight"
        for layer in range(2) for t in targets
    )


# ---------------------------------------------------------------- LoRA


def test_lora_matches_peft_merge(world, cli) -> None:
    res = cli("add", "x", "--lora", world["pos"], "--base", world["base_dir"], "--json")
    assert res.exit_code == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["kind"] == "lora" and meta["dtype"] == "float32"
    got = _stored(f"x@{meta['version']}")
    assert sorted(got) == _target_names(ALL_TARGETS)  # only adapted tensors
    _close(got, world["delta_pos"])
    prov = meta["provenance"]
    assert prov["input_format"] == "lora"
    assert prov["adapter"]["r"] == 4 and prov["adapter"]["lora_alpha"] == 8
    assert prov["adapter"]["num_modules"] == 14
    assert len(prov["adapter"]["fingerprint"]) == 64
    assert prov["storage_relative_error"] == 0.0
    assert prov["omitted_zero_tensors"]["count"] == 0


def test_lora_pair_matches_merged_difference(world, cli) -> None:
    res = cli("add", "x", "--positive", world["pos"], "--negative", world["neg"], "--base", world["base_dir"],
              "--json", "--dtype", "bfloat16")
    assert res.exit_code == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["kind"] == "pair" and meta["dtype"] == "bfloat16"
    assert meta["provenance"]["input_format"] == "lora"
    assert set(meta["provenance"]) >= {"positive", "negative", "base", "storage_relative_error"}
    got = _stored(f"x@{meta['version']}")
    assert sorted(got) == _target_names(ALL_TARGETS)  # union of both adapters
    want = world["pair"]
    for n in want:
        assert got[n].dtype == torch.bfloat16
        torch.testing.assert_close(got[n].float(), want[n], rtol=1e-2, atol=1e-2)
    assert 0 < meta["provenance"]["storage_relative_error"] < 1e-2

    res32 = cli("add", "y", "--positive", world["pos"], "--negative", world["neg"], "--base", world["base_dir"], "--json")
    _close(_stored(f"y@{json.loads(res32.stdout)['version']}"), want)


def test_lora_zero_modules_omitted_and_all_zero_refused(world, tmp_path: Path, cli, snapshot) -> None:
    partial = shutil.copytree(world["pos"], tmp_path / "partial")
    state = load_file(str(partial / "adapter_model.safetensors"))
    zeroed = [k for k in state if ".layers.0.self_attn.q_proj.lora_B" in k or ".layers.1.mlp.up_proj.lora_A" in k]
    assert len(zeroed) == 2
    for k in zeroed:
        state[k] = torch.zeros_like(state[k])
    save_file(state, str(partial / "adapter_model.safetensors"), metadata={"format": "pt"})
    res = cli("add", "x", "--lora", partial, "--base", world["base_dir"], "--json")
    assert res.exit_code == 0, res.stderr
    meta = json.loads(res.stdout)
    omitted = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    assert meta["provenance"]["omitted_zero_tensors"]["names"] == sorted(omitted)
    got = _stored("x@1")
    _close(got, {n: t for n, t in world["delta_pos"].items() if n not in omitted})

    fresh = _adapter(world["base_dir"], tmp_path / "fresh", ["q_proj"], seed=None)  # peft init: B = 0
    before = snapshot()
    one_error_line(cli("add", "z", "--lora", fresh, "--base", world["base_dir"]), 2, "all deltas are zero")
    res = cli("add", "z", "--positive", world["pos"], "--negative", world["pos"], "--base", world["base_dir"])
    one_error_line(res, 2, "all deltas are zero")
    assert snapshot() == before


def test_lora_adapter_mixed_with_checkpoint_refused(world, cli) -> None:
    res = cli("add", "x", "--positive", world["pos"], "--negative", world["base_dir"], "--base", world["base_dir"])
    one_error_line(res, 2, "LoRA adapter")
    res = cli("add", "x", "--finetuned", world["pos"], "--base", world["base_dir"])
    one_error_line(res, 2, "--lora")


def test_lora_needs_base_weights(world, cli) -> None:
    res = cli("add", "x", "--lora", world["pos"], "--base", "cd" * 32)
    one_error_line(res, 2, "--base as a path")


# ---------------------------------------------------------------- unsafe pickles


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("role", ["positive", "finetuned"])
def test_unsafe_pickle_refused(tmp_path: Path, base_dir: Path, base_tensors, cli, snapshot,
                               zip_format: bool, role: str) -> None:
    marker = tmp_path / "pwned"
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    payload = {**base_tensors, "lm_head.weight": _Evil(marker)}
    torch.save(payload, evil_dir / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with Registry.open() as reg:
        reg.resolve_base(base_dir)
    before = snapshot()
    if role == "positive":
        save_checkpoint(tmp_path / "neg", base_tensors)
        args = ["--positive", evil_dir, "--negative", tmp_path / "neg"]
    else:
        args = ["--finetuned", evil_dir / "pytorch_model.bin"]
    res = cli("add", "x", *args, "--base", base_dir)
    one_error_line(res, 2, "pytorch_model.bin", "refused", "Unsupported global")
    assert not marker.exists()
    assert snapshot() == before


# ---------------------------------------------------------------- name / shape mismatches


SHAPES = llama_shapes()


@pytest.mark.parametrize(
    "pos_edit, neg_edit, fragments",
    [
        # negative lacks a tensor
        ({}, {"model.layers.1.mlp.up_proj.weight": None},
         ["--negative", "lacks tensor 'model.layers.1.mlp.up_proj.weight'", "[32, 16]"]),
        # both sides wrong: the first tensor in sorted order is reported, with both shapes
        ({"model.norm.weight": (17,)}, {"model.layers.0.input_layernorm.weight": (15,)},
         ["--negative", "'model.layers.0.input_layernorm.weight' has shape [15] but the base has [16]"]),
        ({"lm_head.weight": (64, 17)}, {"model.embed_tokens.weight": (65, 16)},
         ["--positive", "'lm_head.weight' has shape [64, 17] but the base has [64, 16]"]),
        # an extra tensor
        ({"a.extra.weight": (3,)}, {},
         ["--positive", "'a.extra.weight' (shape [3]) does not exist in the base"]),
    ],
    ids=["missing", "shape-neg-first", "shape-pos-first", "extra"],
)
def test_mismatch_is_one_line(tmp_path: Path, base_dir: Path, cli, snapshot, pos_edit, neg_edit, fragments) -> None:
    def build(edit: dict, seed: int) -> Path:
        shapes = {n: s for n, s in {**SHAPES, **edit}.items() if s is not None}
        out = tmp_path / f"ckpt{seed}"
        save_checkpoint(out, random_tensors(shapes, seed=seed))
        return out

    pos, neg = build(pos_edit, 1), build(neg_edit, 2)
    with Registry.open() as reg:
        reg.resolve_base(base_dir)
    before = snapshot()
    res = cli("add", "x", "--positive", pos, "--negative", neg, "--base", base_dir)
    one_error_line(res, 2, *fragments)
    assert snapshot() == before


def test_finetuned_mismatch_is_one_line(tmp_path: Path, base_dir: Path, cli) -> None:
    save_checkpoint(tmp_path / "ft", random_tensors({**SHAPES, "model.norm.weight": (8,)}, seed=3))
    res = cli("add", "x", "--finetuned", tmp_path / "ft", "--base", base_dir)
    one_error_line(res, 2, "--finetuned", "'model.norm.weight' has shape [8] but the base has [16]")


def test_bad_dtype_is_one_line(base_dir: Path, tmp_path: Path, cli) -> None:
    save_checkpoint(tmp_path / "ft", random_tensors(SHAPES, seed=3))
    res = cli("add", "x", "--finetuned", tmp_path / "ft", "--base", base_dir, "--dtype", "int8")
    one_error_line(res, 2, "'int8'", "float32, bfloat16, float16 or float64")
