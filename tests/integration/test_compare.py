"""Registry.similarity and Registry.diff on registered vectors, against numpy computed here.

Vectors cover partial and disjoint tensor sets, exact zeros, bfloat16 next to float32, and a
stored sign of -1 (a registered vector counts as sign x blob, what compose adds).  The
reference statistics are written out below in numpy from the tensors the test saved, with
its own grouping of Llama tensor names; nothing of pvreg's is used to compute them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.factories import make_base
from pvreg import Registry
from pvreg.registry.errors import (
    BaseMismatchError,
    EvalError,
    NotFoundError,
    OutputExistsError,
    UnsafeOutputError,
)
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def reg(home: Path):
    with Registry.open() as r:
        yield r


def save_delta(path: Path, base: dict[str, torch.Tensor], names: list[str], *, seed: int,
               dtype: torch.dtype = torch.float32, zeros: float = 0.3) -> dict[str, np.ndarray]:
    """A random delta over ``names`` with a share of exact zeros; returns the float64 values the file holds."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for n in names:
        x = rng.normal(0, 0.02, tuple(base[n].shape)) * (rng.random(tuple(base[n].shape)) > zeros)
        tensors[n] = torch.from_numpy(x).to(dtype)
    save_file(tensors, str(path))
    return {n: t.to(torch.float64).numpy() for n, t in tensors.items()}


def flat(vec: dict[str, np.ndarray], names: list[str], shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    return np.concatenate([vec[n].ravel() if n in vec else np.zeros(int(np.prod(shapes[n]))) for n in names])


def reference(vecs: list[dict[str, np.ndarray]], names: list[str], shapes) -> dict:
    xs = [flat(v, names, shapes) for v in vecs]
    n = len(xs)
    norms = [float(np.linalg.norm(x)) for x in xs]
    cos = [[float(xs[i] @ xs[j] / (norms[i] * norms[j])) if norms[i] and norms[j] else None for j in range(n)]
           for i in range(n)]
    sign = []
    for i in range(n):
        row = []
        for j in range(n):
            both = (xs[i] != 0) & (xs[j] != 0)
            row.append(float(np.mean(np.sign(xs[i][both]) == np.sign(xs[j][both]))) if both.any() else None)
        sign.append(row)
    return {"numel": xs[0].size, "norms": norms, "touched": [float(np.mean(x != 0)) for x in xs],
            "cosine": cos, "sign": sign}


def assert_stats(got, want: dict) -> None:
    assert got.numel == want["numel"]
    assert got.norms == pytest.approx(want["norms"], rel=1e-12, abs=1e-300)
    assert got.touched == pytest.approx(want["touched"], rel=1e-12)
    for g_rows, w_rows in ((got.cosine, want["cosine"]), (got.sign_agreement, want["sign"])):
        for g, w in zip(g_rows, w_rows, strict=True):
            assert [x is None for x in g] == [x is None for x in w]
            assert [x for x in g if x is not None] == pytest.approx([x for x in w if x is not None], abs=1e-12)


def layer_key(name: str) -> str:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return f"layers.{m.group(1)}" if m else "other"


def module_key(name: str) -> str:
    rest = re.split(r"\.layers\.\d+\.", name)[-1]
    return rest.removeprefix("model.").removesuffix(".weight")


@pytest.fixture
def three(reg, tmp_path, base_dir, base_tensors):
    """a: every tensor (f32); b: layer 0 + lm_head (bf16); c: layer 1 + embeddings (f32), registered with sign -1."""
    names = sorted(base_tensors)
    sets = {
        "a": (names, torch.float32, 1),
        "b": ([n for n in names if ".layers.0." in n] + ["lm_head.weight"], torch.bfloat16, 1),
        "c": ([n for n in names if ".layers.1." in n] + ["model.embed_tokens.weight"], torch.float32, -1),
    }
    vecs = []
    for seed, (name, (chosen, dtype, sign)) in enumerate(sets.items(), 1):
        values = save_delta(tmp_path / f"{name}.safetensors", base_tensors, chosen, seed=seed, dtype=dtype)
        meta = reg.add(name, tmp_path / f"{name}.safetensors", base=base_dir, sign=sign)
        assert meta.dtype == ("bfloat16" if dtype == torch.bfloat16 else "float32")
        vecs.append({n: sign * v for n, v in values.items()})
    shapes = {n: tuple(t.shape) for n, t in base_tensors.items()}
    return vecs, shapes


def test_whole_vector_statistics_match_numpy(reg, three) -> None:
    vecs, shapes = three
    report = reg.similarity(["a", "b@1", "c"])
    assert report.vectors == ["a@1", "b@1", "c@1"]
    union = sorted(set().union(*vecs))
    want = reference(vecs, union, shapes)
    assert_stats(report.whole, want)
    # b and c touch disjoint tensors: orthogonal, and no common entry to agree on
    assert report.whole.cosine[1][2] == 0.0 and report.whole.sign_agreement[1][2] is None
    assert report.group_by is None and report.groups == []


@pytest.mark.parametrize("by, key", [("layer", layer_key), ("module-type", module_key), ("tensor", lambda n: n)])
def test_grouped_statistics_match_numpy(reg, three, by, key) -> None:
    vecs, shapes = three
    report = reg.similarity(["a", "b", "c"], by=by)
    union = sorted(set().union(*vecs))
    groups: dict[str, list[str]] = {}
    for n in union:
        groups.setdefault(key(n), []).append(n)
    assert report.group_by == by
    assert sorted(g.group for g in report.groups) == sorted(groups)
    for g in report.groups:
        assert_stats(g, reference(vecs, groups[g.group], shapes))
    if by == "layer":
        assert [g.group for g in report.groups] == ["layers.0", "layers.1", "other"]


def test_sign_of_a_registered_vector_counts(reg, tmp_path, base_dir, base_tensors) -> None:
    save_delta(tmp_path / "v.safetensors", base_tensors, sorted(base_tensors), seed=5)
    reg.add("up", tmp_path / "v.safetensors", base=base_dir)
    reg.add("down", tmp_path / "v.safetensors", base=base_dir, sign=-1)
    whole = reg.similarity(["up", "down"]).whole
    assert whole.cosine[0][1] == pytest.approx(-1.0, abs=1e-12)
    assert whole.sign_agreement[0][1] == 0.0 and whole.sign_agreement[0][0] == 1.0
    d = reg.diff("up", "down")
    assert d.summary.rel_change == pytest.approx(2.0, rel=1e-12)
    assert d.summary.cosine == pytest.approx(-1.0, abs=1e-12)


def test_diff_matches_numpy(reg, tmp_path, base_dir, base_tensors) -> None:
    """v1 (f32, no lm_head) -> v2 (bf16): one tensor kept exactly, the rest changed, embeddings gone, lm_head new."""
    names = sorted(base_tensors)
    kept = "model.layers.0.self_attn.q_proj.weight"
    v1 = save_delta(tmp_path / "v1.safetensors", base_tensors, [n for n in names if n != "lm_head.weight"], seed=1,
                    dtype=torch.bfloat16)
    rng = np.random.default_rng(9)
    v2_names = [n for n in names if n != "model.embed_tokens.weight"]
    v2 = {}
    for n in v2_names:
        if n == kept:
            v2[n] = v1[n]
        elif n in v1:
            v2[n] = v1[n] * 0.5 + rng.normal(0, 0.01, v1[n].shape)
        else:
            v2[n] = rng.normal(0, 0.02, tuple(base_tensors[n].shape))
    tensors2 = {n: torch.from_numpy(x).float() for n, x in v2.items()}
    save_file(tensors2, str(tmp_path / "v2.safetensors"))
    v2 = {n: t.double().numpy() for n, t in tensors2.items()}
    reg.add("helpful", tmp_path / "v1.safetensors", base=base_dir)
    reg.add("helpful", tmp_path / "v2.safetensors", base=base_dir)

    report = reg.diff("helpful@1", "helpful@2")
    assert (report.a, report.b) == ("helpful@1", "helpful@2")
    assert report.only_in_a == ["model.embed_tokens.weight"] and report.only_in_b == ["lm_head.weight"]
    both = sorted(set(v1) & set(v2))
    assert [t.name for t in report.tensors] == both
    for t in report.tensors:
        a, b = v1[t.name].ravel(), v2[t.name].ravel()
        assert t.shape == list(v1[t.name].shape)
        assert t.norm_a == pytest.approx(np.linalg.norm(a), rel=1e-12)
        assert t.norm_b == pytest.approx(np.linalg.norm(b), rel=1e-12)
        assert t.rel_change == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-10, abs=1e-15)
        assert t.cosine == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), abs=1e-12)
        assert t.max_abs_diff == pytest.approx(np.abs(b - a).max(), rel=1e-12, abs=0)
        assert t.identical == (t.name == kept)
    shapes = {n: tuple(x.shape) for n, x in base_tensors.items()}
    union = sorted(set(v1) | set(v2))
    fa, fb = flat(v1, union, shapes), flat(v2, union, shapes)
    s = report.summary
    assert s.norm_a == pytest.approx(np.linalg.norm(fa), rel=1e-12)
    assert s.norm_b == pytest.approx(np.linalg.norm(fb), rel=1e-12)
    assert s.rel_change == pytest.approx(np.linalg.norm(fb - fa) / np.linalg.norm(fa), rel=1e-10)
    assert s.cosine == pytest.approx(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb)), abs=1e-12)
    assert (s.tensors_compared, s.tensors_identical, s.tensors_changed) == (len(both), 1, len(both) - 1)
    assert (s.only_in_a, s.only_in_b, s.shape_changed) == (1, 1, 0)


def test_plot_is_a_heatmap_png_written_once(reg, three, tmp_path, snapshot) -> None:
    import matplotlib.image

    out = tmp_path / "plots" / "cos.png"
    reg.similarity(["a", "b", "c"], plot=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(out)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
    assert pixels[..., :3].std() > 0.05  # coloured cells, not a blank canvas
    first = out.read_bytes()
    before = snapshot()
    with pytest.raises(OutputExistsError, match="already exists"):
        reg.similarity(["a", "b"], plot=out)
    assert out.read_bytes() == first and snapshot() == before
    reg.similarity(["a", "b"], plot=out, force=True)
    assert out.read_bytes() != first
    assert not [p.name for p in out.parent.iterdir() if p.name != "cos.png"]  # no temporary file left


def test_refusals_leave_the_registry_unchanged(reg, three, tmp_path, home, snapshot) -> None:
    before = snapshot()
    with pytest.raises(NotFoundError, match="nosuch"):
        reg.similarity(["a", "nosuch"])
    with pytest.raises(EvalError, match="at least two vectors"):
        reg.similarity(["a"])
    with pytest.raises(EvalError, match="unknown grouping 'row'"):
        reg.similarity(["a", "b"], by="row")
    with pytest.raises(UnsafeOutputError, match="inside the registry home"):
        reg.similarity(["a", "b"], plot=home / "cos.png")
    with pytest.raises(EvalError, match=r"must end in \.png"):
        reg.similarity(["a", "b"], plot=tmp_path / "cos.txt")
    with pytest.raises(NotFoundError, match="nosuch"):
        reg.diff("nosuch", "a")
    assert snapshot() == before
    assert not (tmp_path / "cos.txt").exists()


def test_vectors_on_different_bases_are_refused(reg, three, tmp_path, snapshot) -> None:
    other = make_base(tmp_path / "other-base", seed=7)
    save_delta(tmp_path / "o.safetensors", other, sorted(other), seed=3)
    reg.add("other", tmp_path / "o.safetensors", base=tmp_path / "other-base")
    before = snapshot()
    for call in (lambda: reg.similarity(["a", "other"]), lambda: reg.diff("a", "other")):
        with pytest.raises(BaseMismatchError) as info:
            call()
        message = str(info.value)
        assert "different bases" in message and "a@1" in message and "other@1" in message
    assert snapshot() == before
