"""Vectors made from checkpoints (pvreg.registry.sources.extract): θ+ − θ− and θft − θbase.

Expected values are computed independently here from the same files
(``safetensors.torch.load_file`` / ``torch.load`` and a plain subtraction).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.cli import one_error_line
from helpers.factories import llama_shapes, make_base, random_tensors, save_checkpoint
from pvreg.registry.api import Registry
from pvreg.registry.errors import BaseMismatchError, InvalidVectorError, UserError
from safetensors.torch import load_file

SHAPES = llama_shapes()
NAMES = sorted(SHAPES)


def _blob(meta) -> dict[str, torch.Tensor]:
    with Registry.open() as reg:
        return load_file(str(reg.blob_path(meta.ref)))


def _add(**kwargs):
    with Registry.open() as reg:
        return reg.add(kwargs.pop("name", "v"), **kwargs)


def _init_registry(base_dir: Path) -> None:
    """Create the registry and its fingerprint cache (snapshots ignore cache files, not cache dirs)."""
    with Registry.open() as reg:
        reg.resolve_base(base_dir)


def _fingerprint(path: Path) -> str:
    with Registry.open() as reg:
        return reg.fingerprint(path)


def _rel_error(stored: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> float:
    err = sum(float(((stored[n].double() - exact[n].double()) ** 2).sum()) for n in exact)
    ref = sum(float((exact[n].double() ** 2).sum()) for n in exact)
    return math.sqrt(err / ref)


@pytest.fixture
def pair(tmp_path: Path, base_dir: Path):
    """θ+ and θ− as separate float32 checkpoints (different random weights)."""
    pos = random_tensors(SHAPES, seed=11)
    neg = random_tensors(SHAPES, seed=12)
    save_checkpoint(tmp_path / "pos", pos)
    save_checkpoint(tmp_path / "neg", neg)
    return tmp_path / "pos", tmp_path / "neg"


# ---------------------------------------------------------------- exact values


def test_pair_float32_exact(pair, base_dir: Path) -> None:
    pos_dir, neg_dir = pair
    meta = _add(positive=pos_dir, negative=neg_dir, base=base_dir, dataset="d", tags={"k": "v"}, sign=-1)
    pos = load_file(str(pos_dir / "model.safetensors"))
    neg = load_file(str(neg_dir / "model.safetensors"))
    blob = _blob(meta)
    assert sorted(blob) == NAMES
    for n in NAMES:
        assert blob[n].dtype == torch.float32
        assert torch.equal(blob[n], pos[n] - neg[n]), n
    assert meta.kind == "pair" and meta.dtype == "float32" and meta.sign == -1 and meta.tags == {"k": "v"}
    prov = meta.provenance
    assert prov["positive"]["fingerprint"] == _fingerprint(pos_dir)
    assert prov["negative"]["fingerprint"] == _fingerprint(neg_dir)
    assert prov["positive"]["path"] == str(pos_dir.resolve())
    assert prov["base"]["fingerprint"] == meta.base_fingerprint == _fingerprint(base_dir)
    assert prov["stored_dtype"] == "float32" and prov["compute_dtype"] == "float32"
    assert prov["storage_relative_error"] == 0.0
    assert prov["omitted_zero_tensors"] == {"count": 0, "names": [], "truncated": False}
    json.dumps(prov)  # JSON-able
    expected_norm = math.sqrt(sum(float(((pos[n] - neg[n]).double() ** 2).sum()) for n in NAMES))
    assert meta.norm == pytest.approx(expected_norm, rel=1e-12)
    with Registry.open() as reg:
        assert reg.verify(meta.ref).ok


def test_finetuned_exact_with_zero_tensors_omitted(tmp_path: Path, base_dir: Path, base_tensors) -> None:
    g = torch.Generator().manual_seed(3)
    changed = [n for n in NAMES if "mlp" in n or n == "lm_head.weight"]
    ft = {n: (t + 0.01 * torch.randn(t.shape, generator=g)) if n in changed else t.clone()
          for n, t in base_tensors.items()}
    save_checkpoint(tmp_path / "ft", ft, shards=2)
    meta = _add(finetuned=tmp_path / "ft", base=base_dir)
    blob = _blob(meta)
    assert sorted(blob) == sorted(changed)
    for n in changed:
        assert torch.equal(blob[n], ft[n] - base_tensors[n]), n
    assert meta.kind == "finetuned" and meta.num_tensors == len(changed)
    omitted = meta.provenance["omitted_zero_tensors"]
    assert omitted["count"] == len(NAMES) - len(changed)
    assert omitted["names"] == sorted(set(NAMES) - set(changed))
    assert meta.provenance["finetuned"]["fingerprint"] == _fingerprint(tmp_path / "ft")
    assert meta.provenance["finetuned"]["files"] == 2
    assert meta.provenance["base"]["fingerprint"] == meta.base_fingerprint


def test_bf16_inputs_default_to_bf16(tmp_path: Path) -> None:
    make_base(tmp_path / "base", dtype=torch.bfloat16)
    pos = random_tensors(SHAPES, seed=21, dtype=torch.bfloat16)
    neg = random_tensors(SHAPES, seed=22, dtype=torch.bfloat16)
    save_checkpoint(tmp_path / "pos", pos)
    save_checkpoint(tmp_path / "neg", neg)
    meta = _add(positive=tmp_path / "pos", negative=tmp_path / "neg", base=tmp_path / "base")
    pos, neg = load_file(str(tmp_path / "pos" / "model.safetensors")), load_file(str(tmp_path / "neg" / "model.safetensors"))
    exact = {n: pos[n].float() - neg[n].float() for n in NAMES}
    blob = _blob(meta)
    assert meta.dtype == "bfloat16"
    for n in NAMES:
        assert blob[n].dtype == torch.bfloat16
        assert torch.equal(blob[n], exact[n].to(torch.bfloat16)), n
    rel = meta.provenance["storage_relative_error"]
    assert rel > 0
    assert rel == pytest.approx(_rel_error(blob, exact), rel=1e-9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_explicit_dtype(pair, base_dir: Path, dtype: str) -> None:
    pos_dir, neg_dir = pair
    meta = _add(positive=pos_dir, negative=neg_dir, base=base_dir, dtype=dtype)
    pos, neg = load_file(str(pos_dir / "model.safetensors")), load_file(str(neg_dir / "model.safetensors"))
    exact = {n: pos[n] - neg[n] for n in NAMES}
    blob = _blob(meta)
    target = getattr(torch, dtype)
    assert meta.dtype == dtype and meta.provenance["stored_dtype_source"] == "--dtype"
    for n in NAMES:
        assert torch.equal(blob[n], exact[n].to(target))
    assert meta.provenance["storage_relative_error"] == pytest.approx(_rel_error(blob, exact), rel=1e-9, abs=0)


def test_float64_inputs_computed_in_float64(tmp_path: Path, base_dir: Path) -> None:
    pos = random_tensors(SHAPES, seed=31, dtype=torch.float64)
    neg = random_tensors(SHAPES, seed=32, dtype=torch.float32)
    save_checkpoint(tmp_path / "pos", pos)
    save_checkpoint(tmp_path / "neg", neg)
    meta = _add(positive=tmp_path / "pos", negative=tmp_path / "neg", base=base_dir)
    exact = {n: pos[n] - neg[n].double() for n in NAMES}
    blob = _blob(meta)
    assert meta.dtype == "float32" and meta.provenance["compute_dtype"] == "float64"
    for n in NAMES:
        assert torch.equal(blob[n], exact[n].float())
    assert meta.provenance["storage_relative_error"] == pytest.approx(_rel_error(blob, exact), rel=1e-9)


def test_mixed_f32_bf16_defaults_to_bf16(tmp_path: Path, base_dir: Path) -> None:
    pos = random_tensors(SHAPES, seed=41)
    neg = random_tensors(SHAPES, seed=42, dtype=torch.bfloat16)
    save_checkpoint(tmp_path / "pos", pos)
    save_checkpoint(tmp_path / "neg", neg)
    meta = _add(positive=tmp_path / "pos", negative=tmp_path / "neg", base=base_dir)
    blob = _blob(meta)
    assert meta.dtype == "bfloat16"
    for n in NAMES:
        assert torch.equal(blob[n], (pos[n] - neg[n].float()).to(torch.bfloat16))


# ---------------------------------------------------------------- layouts on disk


def test_sharded_and_bin_inputs_give_the_same_vector(tmp_path: Path, pair, base_dir: Path) -> None:
    pos_dir, neg_dir = pair
    reference = _add(name="ref", positive=pos_dir, negative=neg_dir, base=base_dir)

    pos = load_file(str(pos_dir / "model.safetensors"))
    neg = load_file(str(neg_dir / "model.safetensors"))
    save_checkpoint(tmp_path / "pos3", pos, shards=3)
    (tmp_path / "negbin").mkdir()
    torch.save(neg, tmp_path / "negbin" / "pytorch_model.bin")
    torch.save(pos, tmp_path / "pos.bin")

    sharded = _add(name="sharded", positive=tmp_path / "pos3", negative=tmp_path / "negbin", base=base_dir)
    single_bin = _add(name="bin", positive=tmp_path / "pos.bin", negative=neg_dir, base=base_dir)
    assert sharded.sha256 == single_bin.sha256 == reference.sha256
    # fingerprints identify weights, not files
    assert sharded.provenance["positive"]["fingerprint"] == reference.provenance["positive"]["fingerprint"]
    assert sharded.provenance["positive"]["files"] == 3
    assert sharded.provenance["negative"]["format"] == "pytorch"
    assert sharded.provenance["negative"]["fingerprint"] == reference.provenance["negative"]["fingerprint"]


def test_finetuned_bin_matches_safetensors(tmp_path: Path, base_dir: Path, base_tensors) -> None:
    ft = {n: t + 0.5 for n, t in base_tensors.items()}
    save_checkpoint(tmp_path / "ft", ft)
    torch.save(ft, tmp_path / "ft.bin")
    a = _add(name="a", finetuned=tmp_path / "ft", base=base_dir)
    b = _add(name="b", finetuned=tmp_path / "ft.bin", base=base_dir)
    assert a.sha256 == b.sha256


def test_bin_zero_delta_detected_against_safetensors(tmp_path: Path, base_dir: Path, base_tensors) -> None:
    """Digests hash tensor bytes, so a .bin copy of a base tensor is recognised as unchanged."""
    ft = dict(base_tensors)
    ft["lm_head.weight"] = ft["lm_head.weight"] * 2
    torch.save(ft, tmp_path / "ft.bin")
    meta = _add(finetuned=tmp_path / "ft.bin", base=base_dir)
    assert sorted(_blob(meta)) == ["lm_head.weight"]
    assert meta.provenance["omitted_zero_tensors"]["count"] == len(NAMES) - 1


# ---------------------------------------------------------------- zero deltas


def test_all_zero_refused(tmp_path: Path, base_dir: Path, base_tensors, snapshot, cli) -> None:
    save_checkpoint(tmp_path / "same", base_tensors)
    _init_registry(base_dir)
    before = snapshot()
    with pytest.raises(InvalidVectorError, match="all deltas are zero"):
        _add(finetuned=tmp_path / "same", base=base_dir)
    res = cli("add", "v", "--positive", tmp_path / "same", "--negative", base_dir, "--base", base_dir)
    one_error_line(res, 2, "all deltas are zero")
    assert snapshot() == before


def test_omitted_names_are_capped(tmp_path: Path) -> None:
    shapes = {f"t.{i:03d}": (2,) for i in range(60)}
    base = random_tensors(shapes, seed=0)
    save_checkpoint(tmp_path / "base", base)
    ft = dict(base)
    ft["t.059"] = ft["t.059"] + 1
    save_checkpoint(tmp_path / "ft", ft)
    meta = _add(finetuned=tmp_path / "ft", base=tmp_path / "base")
    omitted = meta.provenance["omitted_zero_tensors"]
    assert omitted["count"] == 59 and omitted["truncated"] is True
    assert omitted["names"] == [f"t.{i:03d}" for i in range(50)]
    assert meta.num_tensors == 1


def test_all_zero_after_cast_refused(tmp_path: Path) -> None:
    """Deltas that differ in bytes but round to zero in float16 are still refused."""
    shapes = {"a": (4,), "b": (4,)}
    base = {n: torch.zeros(s) for n, s in shapes.items()}
    ft = {n: t + 1e-9 for n, t in base.items()}  # below float16's smallest subnormal
    save_checkpoint(tmp_path / "base", base)
    save_checkpoint(tmp_path / "ft", ft)
    with pytest.raises(InvalidVectorError, match="all deltas are zero after casting to float16"):
        _add(finetuned=tmp_path / "ft", base=tmp_path / "base", dtype="float16")


def test_float16_overflow_is_one_line(tmp_path: Path, base_dir: Path, base_tensors, cli) -> None:
    ft = dict(base_tensors)
    ft["lm_head.weight"] = ft["lm_head.weight"] + 1e6
    save_checkpoint(tmp_path / "ft", ft)
    res = cli("add", "v", "--finetuned", tmp_path / "ft", "--base", base_dir, "--dtype", "float16")
    one_error_line(res, 2, "'lm_head.weight'", "float16")


def test_nan_in_input_is_one_line(tmp_path: Path, base_dir: Path, base_tensors, snapshot, cli) -> None:
    _init_registry(base_dir)
    ft = dict(base_tensors)
    ft["model.norm.weight"] = ft["model.norm.weight"].clone()
    ft["model.norm.weight"][3] = float("nan")
    save_checkpoint(tmp_path / "ft", ft)
    before = snapshot()
    res = cli("add", "v", "--finetuned", tmp_path / "ft", "--base", base_dir)
    one_error_line(res, 2, "'model.norm.weight'", "NaN or Inf")
    assert snapshot() == before


# ---------------------------------------------------------------- structural errors


def test_base_known_only_by_fingerprint_is_refused(pair, base_dir: Path, tmp_path: Path) -> None:
    pos_dir, neg_dir = pair
    with pytest.raises(UserError, match="give base as a path"):
        _add(positive=pos_dir, negative=neg_dir, base="ab" * 32)
    with pytest.raises(UserError, match="give base as a path"):
        _add(finetuned=pos_dir, base="ab" * 32)


def test_dtype_checked_before_anything(pair, base_dir: Path, cli) -> None:
    pos_dir, neg_dir = pair
    res = cli("add", "v", "--positive", pos_dir, "--negative", neg_dir, "--base", base_dir, "--dtype", "int8")
    one_error_line(res, 2, "'int8'")


def test_non_float_tensor_refused(tmp_path: Path) -> None:
    base = {"a": torch.ones(4), "b": torch.arange(4)}
    save_checkpoint(tmp_path / "base", base)
    save_checkpoint(tmp_path / "ft", {"a": torch.zeros(4), "b": torch.arange(4)})
    with pytest.raises(InvalidVectorError, match="'b' has dtype int64"):
        _add(finetuned=tmp_path / "ft", base=tmp_path / "base")


def test_incomplete_pair_refused(pair, base_dir: Path, cli) -> None:
    pos_dir, _ = pair
    res = cli("add", "v", "--positive", pos_dir, "--base", base_dir)
    one_error_line(res, 2, "--negative")


def test_mismatch_reported_before_hashing(tmp_path: Path, pair, base_dir: Path, monkeypatch) -> None:
    """Structural errors come before any tensor data is hashed or read."""
    import pvreg.registry.tensors.fingerprint as fp

    pos_dir, _ = pair
    bad = random_tensors({**SHAPES, "model.norm.weight": (17,)}, seed=5)
    save_checkpoint(tmp_path / "bad", bad)
    with Registry.open() as reg:
        resolved = reg.resolve_base(base_dir)  # hashes the base (allowed)
    calls: list[str] = []
    real = fp.checkpoint_entries
    monkeypatch.setattr(fp, "checkpoint_entries", lambda c, cache=None: calls.append(str(c.source)) or real(c, cache))
    from pvreg.registry.sources import extract

    with pytest.raises(BaseMismatchError, match=r"'model.norm.weight' has shape \[17\] but the base has \[16\]"):
        extract.build_source(resolved, positive=pos_dir, negative=tmp_path / "bad", finetuned=None, lora=None,
                             dtype=None, cache=fp.FingerprintCache(None))
    assert calls == []


def test_inputs_released_tensor_by_tensor(pair, base_dir: Path, monkeypatch) -> None:
    from pvreg.registry.tensors.checkpoint import Checkpoint

    released: list[tuple[str, str]] = []
    real = Checkpoint.release

    def spy(self, name):
        released.append((self.source.name, name))
        return real(self, name)

    pos_dir, neg_dir = pair
    monkeypatch.setattr(Checkpoint, "release", spy)
    _add(positive=pos_dir, negative=neg_dir, base=base_dir)
    for side in ("pos", "neg"):
        assert [n for s, n in released if s == side][-len(NAMES):] == NAMES
