"""Registry.apply: in-place merge into a loaded transformers model, bit-exact revert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.models import SMALL_LLAMA, build_llama
from pvreg.registry.api import Registry
from pvreg.registry.errors import BaseMismatchError
from pvreg.registry.merge.apply import map_names
from safetensors.torch import load_file, save_file


def _lm(tied: bool = False):
    return build_llama(seed=0, attn=None, config=SMALL_LLAMA, tie_word_embeddings=tied)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    model = _lm()
    base = tmp_path_factory.mktemp("lm") / "base"
    model.save_pretrained(base)
    return model, base


@pytest.fixture
def reg(home: Path):
    with Registry.open() as r:
        yield r


def _vector(path: Path, base: dict[str, torch.Tensor], names: list[str], seed: int,
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {n: (torch.randn(base[n].shape, generator=g) * 0.05).to(dtype) for n in names}
    save_file(t, str(path))
    return t


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_apply_and_revert_bit_exact(lm, reg: Registry, tmp_path: Path) -> None:
    model, base_dir = lm
    base = load_file(str(base_dir / "model.safetensors"))
    names = sorted(base)
    a = _vector(tmp_path / "a.safetensors", base, names[:8], seed=1)
    b = _vector(tmp_path / "b.safetensors", base, names[5:], seed=2, dtype=torch.bfloat16)
    reg.add("a", tmp_path / "a.safetensors", base=base_dir)
    reg.add("b", tmp_path / "b.safetensors", base=base_dir, sign=-1)
    before = _params(model)
    with reg.apply(model, "a:0.7 b:-1.3") as handle:
        assert handle.active and len(handle.touched) == len(names)
        assert handle.saved_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
        for n, p in model.named_parameters():
            e = base[n].float()
            if n in a:
                e = e + 0.7 * a[n].float()
            if n in b:
                e = e + (-1.3) * (-1) * b[n].float()
            torch.testing.assert_close(p.detach(), e, rtol=1.3e-6, atol=1e-6)
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3]])).logits
        assert torch.isfinite(logits).all()
    assert not handle.active
    after = _params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_restore_on_exception_and_idempotent(lm, reg: Registry, tmp_path: Path) -> None:
    model, base_dir = lm
    base = load_file(str(base_dir / "model.safetensors"))
    _vector(tmp_path / "a.safetensors", base, ["lm_head.weight"], seed=3)
    reg.add("a", tmp_path / "a.safetensors", base=base_dir)
    before = _params(model)
    with pytest.raises(KeyError):
        with reg.apply(model, ["a:2"]):
            assert not torch.equal(model.lm_head.weight, before["lm_head.weight"])
            raise KeyError("boom")
    handle = reg.apply(model, "a")
    handle.restore()
    handle.restore()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_prefix_mapping_bare_and_peft(lm, reg: Registry, tmp_path: Path) -> None:
    model, base_dir = lm
    base = load_file(str(base_dir / "model.safetensors"))
    names = [n for n in sorted(base) if n.startswith("model.layers.0.")]
    a = _vector(tmp_path / "a.safetensors", base, names + ["lm_head.weight"], seed=4)
    reg.add("a", tmp_path / "a.safetensors", base=base_dir)
    # PEFT layout: base_model.model.<transformers names>
    wrapper = torch.nn.Module()
    wrapper.base_model = torch.nn.Module()
    wrapper.base_model.model = model
    before = _params(model)
    with reg.apply(wrapper, "a"):
        torch.testing.assert_close(model.lm_head.weight.detach(), base["lm_head.weight"] + a["lm_head.weight"])
    # Bare LlamaModel: no "model." prefix, and no lm_head -> refused before any change.
    bare = model.model
    _vector(tmp_path / "b.safetensors", base, names, seed=5)
    reg.add("b", tmp_path / "b.safetensors", base=base_dir)
    with reg.apply(bare, "b") as h:
        assert "layers.0.mlp.up_proj.weight" in h.touched
    with pytest.raises(BaseMismatchError, match="lm_head.weight"):
        reg.apply(bare, "a")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_tied_weights_updated_once(reg: Registry, tmp_path: Path) -> None:
    model = _lm(tied=True)
    base_dir = tmp_path / "tied"
    model.save_pretrained(base_dir)
    base = load_file(str(base_dir / "model.safetensors"))
    d = _vector(tmp_path / "e.safetensors", base, ["model.embed_tokens.weight"], seed=6)
    reg.add("e", tmp_path / "e.safetensors", base=base_dir)
    with reg.apply(model, "e:0.5"):
        expected = base["model.embed_tokens.weight"] + 0.5 * d["model.embed_tokens.weight"]
        torch.testing.assert_close(model.lm_head.weight.detach(), expected)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight.detach(), base["model.embed_tokens.weight"])


def test_map_names_unit() -> None:
    p = {n: torch.nn.Parameter(torch.zeros(1)) for n in
         ["base_model.model.model.layers.0.w", "base_model.model.lm_head.weight"]}
    mapping, missing = map_names(["model.layers.0.w", "lm_head.weight", "model.nope"], p)
    assert mapping == {"model.layers.0.w": "base_model.model.model.layers.0.w",
                       "lm_head.weight": "base_model.model.lm_head.weight"}
    assert missing == ["model.nope"]
