"""Vector similarity and diff against numpy computed here, on real safetensors files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.factories import llama_shapes
from pvreg.registry.errors import (
    BaseMismatchError,
    EvalError,
    InvalidTensorFileError,
    InvalidVectorError,
    NotFoundError,
)
from pvreg.registry.evaluation.similarity import (
    diff,
    layer_of,
    module_type_of,
    similarity,
)
from safetensors.torch import save_file

SHAPES = llama_shapes()


def make_vector(path: Path, seed: int, *, keep: float = 1.0, sparsity: float = 0.3,
                dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """A random delta over a random subset of the Llama tensors, with exact zeros; returns its float64 values."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(SHAPES.items()):
        if rng.random() > keep:
            continue
        x = rng.normal(0, 1, shape) * (rng.random(shape) > sparsity)
        tensors[name] = torch.from_numpy(x).to(dtype)
    save_file(tensors, str(path))
    return {n: t.to(torch.float64).numpy() for n, t in tensors.items()}


def flat(vec: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The vector over ``names`` in order, a missing tensor as zeros."""
    return np.concatenate([vec[n].reshape(-1) if n in vec else np.zeros(int(np.prod(SHAPES[n]))) for n in names])


def np_stats(vecs: list[dict[str, np.ndarray]], names: list[str]) -> dict:
    xs = [flat(v, names) for v in vecs]
    n = len(xs)
    norms = [float(np.linalg.norm(x)) for x in xs]
    cos = [[float(xs[i] @ xs[j]) / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else None for j in range(n)]
           for i in range(n)]
    sign = []
    for i in range(n):
        row = []
        for j in range(n):
            both = (xs[i] != 0) & (xs[j] != 0)
            row.append(float((both & (np.sign(xs[i]) == np.sign(xs[j]))).sum() / both.sum()) if both.any() else None)
        sign.append(row)
    return {"numel": xs[0].size, "norms": norms, "touched": [float((x != 0).mean()) for x in xs],
            "cosine": cos, "sign": sign}


def assert_matches(stats, want: dict) -> None:
    assert stats.numel == want["numel"]
    assert stats.norms == pytest.approx(want["norms"], rel=1e-12)
    assert stats.touched == pytest.approx(want["touched"], rel=1e-12)
    for got_row, want_row, attr in ((stats.cosine, want["cosine"], "cos"),
                                    (stats.sign_agreement, want["sign"], "sign")):
        for g, w in zip(got_row, want_row):
            assert [x is None for x in g] == [x is None for x in w], attr
            assert [x for x in g if x is not None] == pytest.approx([x for x in w if x is not None], abs=1e-12)


def save_np(path: Path, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Save as float32; return the float64 values the file really holds."""
    t = {n: torch.from_numpy(v).float() for n, v in tensors.items()}
    save_file(t, str(path))
    return {n: x.double().numpy() for n, x in t.items()}


@pytest.fixture
def three(tmp_path: Path):
    paths = [tmp_path / f"v{i}.safetensors" for i in range(3)]
    vecs = [make_vector(p, 10 + i, keep=0.8) for i, p in enumerate(paths)]
    # Make v1 correlated with v0 where both have a tensor, so cosines are not all ~0.
    vecs[1] = save_np(paths[1], {n: v + 0.8 * vecs[0][n] if n in vecs[0] else v for n, v in vecs[1].items()})
    return paths, vecs


def test_whole_vector_statistics(three) -> None:
    paths, vecs = three
    report = similarity(paths, labels=["a", "b", "c"])
    names = sorted(set().union(*vecs))
    want = np_stats(vecs, names)
    assert report.vectors == ["a", "b", "c"] and report.whole.group == "all"
    assert_matches(report.whole, want)
    assert 0.2 < report.whole.cosine[0][1] < 0.9  # the correlation is seen
    assert report.whole.cosine[0][0] == pytest.approx(1.0)
    assert 0.5 < report.whole.sign_agreement[0][1] < 1
    assert report.groups == [] and report.group_by is None


@pytest.mark.parametrize("group_by, key", [("tensor", lambda n: n), ("layer", layer_of), ("module-type", module_type_of)])
def test_grouped_statistics(three, group_by, key) -> None:
    paths, vecs = three
    report = similarity(paths, group_by=group_by)
    names = sorted(set().union(*vecs))
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(key(n), []).append(n)
    assert sorted(g.group for g in report.groups) == sorted(groups)
    for g in report.groups:
        assert_matches(g, np_stats(vecs, groups[g.group]))
    assert sum(g.numel for g in report.groups) == report.whole.numel


def test_chunked_reads_give_the_same_report(three) -> None:
    paths, _ = three
    small = similarity(paths, group_by="layer", chunk_elements=7).model_dump()
    whole = similarity(paths, group_by="layer").model_dump()

    def same(x, y) -> None:  # equal up to float summation order
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                same(x[k], y[k])
        elif isinstance(x, list):
            assert len(x) == len(y)
            for u, w in zip(x, y):
                same(u, w)
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-15)
        else:
            assert x == y

    same(small, whole)


def test_bfloat16_vectors(tmp_path: Path) -> None:
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    vecs = [make_vector(p, 30 + i, dtype=torch.bfloat16) for i, p in enumerate(paths)]
    report = similarity(paths)
    assert_matches(report.whole, np_stats(vecs, sorted(set().union(*vecs))))


def test_zero_vector_has_no_cosine(tmp_path: Path) -> None:
    a, z = tmp_path / "a.safetensors", tmp_path / "z.safetensors"
    make_vector(a, 1)
    save_file({"model.norm.weight": torch.zeros(16)}, str(z))
    report = similarity([a, z])
    assert report.whole.cosine[0][1] is None and report.whole.cosine[1][1] is None
    assert report.whole.sign_agreement[0][1] is None
    assert report.whole.touched[1] == 0.0 and report.whole.norms[1] == 0.0
    assert report.model_dump_json()  # no NaN anywhere


def test_names_of_groups() -> None:
    assert layer_of("model.layers.12.mlp.up_proj.weight") == "layers.12"
    assert layer_of("transformer.h.3.attn.c_attn.weight") == "layers.3"
    assert layer_of("model.embed_tokens.weight") == "other"
    assert module_type_of("model.layers.12.mlp.up_proj.weight") == "mlp.up_proj"
    assert module_type_of("base_model.model.model.layers.0.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert module_type_of("transformer.h.3.attn.c_attn.bias") == "attn.c_attn"
    assert module_type_of("model.embed_tokens.weight") == "embed_tokens"
    assert module_type_of("lm_head.weight") == "lm_head"
    assert module_type_of("model.norm.weight") == "norm"


def test_similarity_errors(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    make_vector(a, 1)
    other = tmp_path / "shape.safetensors"
    save_file({"model.norm.weight": torch.ones(17)}, str(other))
    with pytest.raises(BaseMismatchError,
                       match=rf"tensor model.norm.weight has shape \[16\] in {a} but \[17\] in {other}"):
        similarity([a, other])
    ints = tmp_path / "int.safetensors"
    save_file({"w": torch.ones(3, dtype=torch.int64)}, str(ints))
    with pytest.raises(InvalidVectorError, match=rf"{ints}: tensor w has dtype I64"):
        similarity([ints])
    nan = tmp_path / "nan.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(nan))
    with pytest.raises(InvalidVectorError, match=rf"{nan}: tensor w contains NaN or Inf"):
        similarity([nan])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InvalidTensorFileError, match=rf"{junk}: not a readable safetensors file"):
        similarity([junk])
    with pytest.raises(NotFoundError, match="does not exist"):
        similarity([tmp_path / "missing.safetensors"])
    with pytest.raises(InvalidTensorFileError, match="is a directory"):
        similarity([tmp_path])
    with pytest.raises(EvalError, match="at least one"):
        similarity([])
    with pytest.raises(EvalError, match="group_by must be one of"):
        similarity([a], group_by="block")
    with pytest.raises(EvalError, match="labels"):
        similarity([a], labels=["x", "y"])


# --- diff ----------------------------------------------------------------------------


def test_diff_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a_t = {n: rng.normal(0, 1, s) for n, s in sorted(SHAPES.items())}
    b_t = {n: v + rng.normal(0, 0.3, v.shape) for n, v in a_t.items()}
    b_t["model.norm.weight"] = a_t["model.norm.weight"].copy()       # identical
    del b_t["lm_head.weight"]                                          # only in a
    b_t["extra.weight"] = rng.normal(0, 1, (3, 4))                     # only in b
    b_t["model.layers.0.mlp.up_proj.weight"] = rng.normal(0, 1, (4, 4))  # shape changed
    a_t["model.layers.1.input_layernorm.weight"] = np.zeros(16)       # ‖a‖ = 0 for one tensor
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({n: torch.from_numpy(v) for n, v in a_t.items()}, str(pa))  # float64 files: exact here
    save_file({n: torch.from_numpy(v) for n, v in b_t.items()}, str(pb))
    report = diff(pa, pb, labels=("helpful@1", "helpful@2"), chunk_elements=50)
    assert (report.a, report.b) == ("helpful@1", "helpful@2")
    assert report.only_in_a == ["lm_head.weight"] and report.only_in_b == ["extra.weight"]
    assert [(s.name, s.shape_a, s.shape_b) for s in report.shape_changed] == [
        ("model.layers.0.mlp.up_proj.weight", [32, 16], [4, 4])]
    common = sorted(n for n in set(a_t) & set(b_t) if a_t[n].shape == b_t[n].shape)
    assert [t.name for t in report.tensors] == common
    for t in report.tensors:
        a, b = a_t[t.name].ravel(), b_t[t.name].ravel()
        assert t.norm_a == pytest.approx(np.linalg.norm(a)) and t.norm_b == pytest.approx(np.linalg.norm(b))
        assert t.max_abs_diff == pytest.approx(np.abs(b - a).max())
        assert t.identical == bool((a == b).all())
        if np.linalg.norm(a) == 0:
            assert t.rel_change is None and t.cosine is None
        else:
            assert t.rel_change == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a))
            assert t.cosine == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert [t.name for t in report.tensors if t.identical] == ["model.norm.weight"]
    # Whole vector: a tensor missing on one side is zeros there; a reshaped one is removed + added.
    fa = np.concatenate([a_t[n].ravel() for n in common] + [a_t["lm_head.weight"].ravel(),
                        a_t["model.layers.0.mlp.up_proj.weight"].ravel(), np.zeros(12 + 16)])
    fb = np.concatenate([b_t[n].ravel() for n in common] + [np.zeros(SHAPES["lm_head.weight"][0] * 16),
                        np.zeros(32 * 16), b_t["extra.weight"].ravel(),
                        b_t["model.layers.0.mlp.up_proj.weight"].ravel()])
    s = report.summary
    assert s.norm_a == pytest.approx(np.linalg.norm(fa)) and s.norm_b == pytest.approx(np.linalg.norm(fb))
    assert s.rel_change == pytest.approx(np.linalg.norm(fb - fa) / np.linalg.norm(fa))
    assert s.cosine == pytest.approx(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb)))
    assert (s.tensors_compared, s.tensors_identical, s.tensors_changed) == (len(common), 1, len(common) - 1)
    assert (s.only_in_a, s.only_in_b, s.shape_changed) == (1, 1, 1)


def test_diff_of_a_vector_with_itself(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    make_vector(a, 4)
    report = diff(a, a)
    assert report.summary.rel_change == 0.0 and report.summary.cosine == pytest.approx(1.0)
    assert report.summary.tensors_changed == 0 and all(t.identical for t in report.tensors)
    assert report.a == report.b == str(a)


def test_diff_errors(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    make_vector(a, 5)
    with pytest.raises(NotFoundError):
        diff(a, tmp_path / "nope.safetensors")
    with pytest.raises(EvalError, match="chunk_elements"):
        diff(a, a, chunk_elements=0)
