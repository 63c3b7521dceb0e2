"""Merge methods (pvreg.registry.merge.methods): hand-computed expectations.

Expected tensors are written out literally; the DARE checks use properties
(kept entries equal δ/density, dropped ones are 0, determinism, order
independence, kept fraction) rather than the implementation.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pvreg.registry.errors import SpecError
from pvreg.registry.merge.methods import (
    METHODS,
    DareLinear,
    DareTies,
    Linear,
    MergeMethod,
    Ties,
    derive_seed,
    get_method,
    kth_largest_abs,
    trim_count,
)

DTYPES = [torch.float32, torch.float64]


def t(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- #
# Registry of methods / parameter validation
# --------------------------------------------------------------------------- #


def test_methods_dict_is_explicit() -> None:
    assert METHODS == {
        "linear": Linear,
        "ties": Ties,
        "dare_linear": DareLinear,
        "dare_ties": DareTies,
    }
    for name, cls in METHODS.items():
        assert cls.name == name
        assert issubclass(cls, MergeMethod)


def test_get_method_builds_instances() -> None:
    assert isinstance(get_method("linear"), Linear)
    ties = get_method("ties", density=0.3)
    assert isinstance(ties, Ties) and ties.config.density == 0.3  # type: ignore[attr-defined]
    dare = get_method("dare_ties", density=0.5, seed=7)
    assert isinstance(dare, DareTies) and dare.seed == 7
    assert dare.record() == {"method": "dare_ties", "density": 0.5, "seed": 7}


def test_dare_seed_defaults_to_zero() -> None:
    m = get_method("dare_linear", density=0.5)
    assert m.seed == 0
    assert m.record()["seed"] == 0


def test_deterministic_methods_ignore_seed() -> None:
    assert get_method("linear", seed=3).seed is None
    assert get_method("ties", density=0.5, seed=3).seed is None
    assert "seed" not in get_method("ties", density=0.5).record()


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize(
    ("density", "shown"),
    [(0.0, "0.0"), (1.5, "1.5"), (float("nan"), "nan"), (-0.1, "-0.1"), (float("inf"), "inf")],
)
def test_invalid_density(method: str, density: float, shown: str) -> None:
    with pytest.raises(SpecError) as exc:
        get_method(method, density=density, seed=1)
    msg = str(exc.value)
    assert "\n" not in msg
    assert shown in msg


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_density_required(method: str) -> None:
    with pytest.raises(SpecError, match="density"):
        get_method(method)


def test_density_refused_for_linear() -> None:
    with pytest.raises(SpecError, match="0.5"):
        get_method("linear", density=0.5)


def test_unknown_method() -> None:
    with pytest.raises(SpecError, match="'slerp'") as exc:
        get_method("slerp")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("seed", [-1, True, 2**63, 1.5])
def test_invalid_seed(seed: object) -> None:
    with pytest.raises(SpecError, match="seed"):
        get_method("dare_linear", density=0.5, seed=seed)  # type: ignore[arg-type]


def test_spec_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        get_method("ties", density=0)


# --------------------------------------------------------------------------- #
# linear
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_hand_computed(dtype: torch.dtype) -> None:
    d1 = t([1.0, -2.0, 0.5, 4.0], dtype)
    d2 = t([3.0, 1.0, -1.0, 0.0], dtype)
    out = get_method("linear").combine([d1, d2], [2.0, -0.5], tensor_name="w", keys=["a", "b"])
    # 2*d1 - 0.5*d2
    assert_same(out, t([0.5, -4.5, 1.5, 8.0], dtype))


def test_linear_keeps_shape_and_does_not_mutate_inputs() -> None:
    d1 = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    d2 = torch.ones(2, 3)
    before = (d1.clone(), d2.clone())
    out = get_method("linear").combine([d1, d2], [1.0, 1.0], tensor_name="w", keys=["a", "b"])
    assert out.shape == (2, 3)
    assert_same(out, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert torch.equal(d1, before[0]) and torch.equal(d2, before[1])


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=32
    ),
    a=st.floats(min_value=-10, max_value=10, allow_nan=False),
    b=st.floats(min_value=-10, max_value=10, allow_nan=False),
)
def test_linear_is_linear(values: list[float], a: float, b: float) -> None:
    delta = torch.tensor(values, dtype=torch.float64)
    m = get_method("linear")
    ab = m.combine([delta, delta], [a, b], tensor_name="x", keys=["k1", "k2"])
    together = m.combine([delta], [a + b], tensor_name="x", keys=["k1"])
    separate = m.combine([delta], [a], tensor_name="x", keys=["k1"]) + m.combine(
        [delta], [b], tensor_name="x", keys=["k2"]
    )
    torch.testing.assert_close(ab, together, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ab, separate, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------- #
# ties
# --------------------------------------------------------------------------- #


def test_trim_count() -> None:
    assert trim_count(0.5, 6) == 3
    assert trim_count(0.5, 5) == 3  # ceil(2.5)
    assert trim_count(0.1, 30) == 3  # not ceil(3.0000000000000004)
    assert trim_count(1.0, 7) == 7
    assert trim_count(1e-9, 10) == 1
    assert trim_count(0.5, 0) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_hand_computed(dtype: torch.dtype) -> None:
    # density 0.5 on 6 entries: k = 3, keep |x| >= 3rd largest |x|.
    d1 = t([3.0, -1.0, 2.0, 0.5, 5.0, 1.0], dtype)
    # |d1| desc 5,3,2 → t=2 → trimmed [3, 0, 2, 0, 5, 0]
    d2 = t([-4.0, -2.0, 1.0, 0.5, 2.0, 3.0], dtype)
    # |d2| desc 4,3,2,2 → t=2, a tie: four entries kept → [-4, -2, 0, 0, 2, 3]
    d3 = t([1.0, 1.0, -3.0, 0.25, 4.0, -8.0], dtype)
    # |d3| desc 8,4,3 → t=3 → [0, 0, -3, 0, 4, -8]; weight 0.5 → [0, 0, -1.5, 0, 2, -4]
    # Σ d_i = [-1, -2, 0.5, 0, 9, -1] → σ = [-1, -1, +1, 0, +1, -1]
    #   e0: only d2 agrees → -4         e1: only d2 (the tie-kept -2) → -2
    #   e2: d1=2 agrees, d3=-1.5 not → 2 e3: nothing kept → 0
    #   e4: (5+2+2)/3 = 3               e5: d3=-4 beats d2=3 → -4
    out = get_method("ties", density=0.5).combine(
        [d1, d2, d3], [1.0, 1.0, 0.5], tensor_name="w", keys=["k1", "k2", "k3"]
    )
    assert_same(out, t([-4.0, -2.0, 2.0, 0.0, 3.0, -4.0], dtype))


def test_ties_sign_conflict_cancels_to_zero() -> None:
    d1 = t([1.0, 2.0, -3.0])
    d2 = t([-1.0, 1.0, 1.0])
    # Σ = [0, 3, -2] → σ = [0, +1, -1]; e0 has no elected sign → 0
    out = get_method("ties", density=1.0).combine(
        [d1, d2], [1.0, 1.0], tensor_name="w", keys=["a", "b"]
    )
    assert_same(out, t([0.0, 1.5, -3.0]))


def test_ties_negative_weight_flips_vote() -> None:
    d1 = t([2.0, 2.0])
    d2 = t([1.0, -4.0])
    # d = [2, 2] and [-1, 4] → Σ = [1, 6] → σ = [+,+] → [2, (2+4)/2]
    out = get_method("ties", density=1.0).combine(
        [d1, d2], [1.0, -1.0], tensor_name="w", keys=["a", "b"]
    )
    assert_same(out, t([2.0, 3.0]))


def test_ties_zero_weight_does_not_vote_or_count() -> None:
    d1 = t([2.0, -2.0])
    d2 = t([5.0, 5.0])
    out = get_method("ties", density=1.0).combine(
        [d1, d2], [1.0, 0.0], tensor_name="w", keys=["a", "b"]
    )
    assert_same(out, t([2.0, -2.0]))


def test_ties_all_equal_magnitudes_keeps_all() -> None:
    d = t([1.0, -1.0, 1.0, -1.0])
    out = get_method("ties", density=0.25).combine([d], [1.0], tensor_name="w", keys=["a"])
    assert_same(out, d)


def test_ties_order_independent_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(50, 7, generator=g) for _ in range(4)]
    weights = [0.3, -1.1, 0.7, 2.0]
    keys = ["d", "a", "c", "b"]
    m = get_method("ties", density=0.3)
    fwd = m.combine(deltas, weights, tensor_name="x", keys=keys)
    rev = m.combine(deltas[::-1], weights[::-1], tensor_name="x", keys=keys[::-1])
    assert torch.equal(fwd, rev)


def test_ties_scalar_and_empty_tensors() -> None:
    m = get_method("ties", density=0.5)
    out = m.combine([torch.tensor(2.0), torch.tensor(-1.0)], [1.0, 1.0], tensor_name="s", keys=["a", "b"])
    assert out.shape == () and out.item() == 2.0
    empty = m.combine([torch.zeros(0, 3)], [1.0], tensor_name="e", keys=["a"])
    assert empty.shape == (0, 3)


# --------------------------------------------------------------------------- #
# dare_linear / dare_ties
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_linear_density_one_equals_linear(dtype: torch.dtype) -> None:
    d1 = t([1.0, -2.0, 0.5, 4.0], dtype)
    d2 = t([3.0, 1.0, -1.0, 0.0], dtype)
    out = get_method("dare_linear", density=1.0, seed=5).combine(
        [d1, d2], [2.0, -0.5], tensor_name="w", keys=["a", "b"]
    )
    assert_same(out, t([0.5, -4.5, 1.5, 8.0], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_ties_density_one_equals_ties_without_trim(dtype: torch.dtype) -> None:
    d1 = t([1.0, -2.0, 3.0], dtype)
    d2 = t([-3.0, -1.0, 1.0], dtype)
    # d = [1,-2,3], [-1.5,-0.5,0.5]; Σ = [-0.5,-2.5,3.5]
    # → [-1.5, (-2-0.5)/2, (3+0.5)/2]
    out = get_method("dare_ties", density=1.0, seed=5).combine(
        [d1, d2], [1.0, 0.5], tensor_name="w", keys=["a", "b"]
    )
    assert_same(out, t([-1.5, -1.25, 1.75], dtype))


def _ramp(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Nonzero, distinct entries so a dropped entry is recognisable as 0."""
    return torch.arange(1, n + 1, dtype=dtype) * 0.25


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_kept_entries_rescaled_dropped_zero(method: str, dtype: torch.dtype) -> None:
    delta = _ramp(1000, dtype)
    out = get_method(method, density=0.5, seed=1234).combine(
        [delta], [1.0], tensor_name="layer.0.w", keys=["k"]
    )
    assert out.dtype == dtype
    kept = out != 0
    assert 0 < int(kept.sum()) < 1000
    assert torch.equal(out[kept], delta[kept] / 0.5)
    assert torch.all(out[~kept] == 0)


def test_dare_rescale_non_power_of_two_density() -> None:
    delta = _ramp(500, torch.float64)
    out = get_method("dare_linear", density=0.3, seed=9).combine(
        [delta], [1.0], tensor_name="w", keys=["k"]
    )
    kept = out != 0
    torch.testing.assert_close(out[kept], delta[kept] / 0.3, rtol=1e-15, atol=0)


def test_dare_mask_follows_documented_seed_derivation() -> None:
    # The documented recipe, spelled out independently: sha256 → first 8 bytes
    # big-endian → torch.Generator seed → float32 rand < density.
    material = "42\0model.layers.3.mlp.up_proj.weight\0sha256:abc".encode()
    seed = int.from_bytes(hashlib.sha256(material).digest()[:8], "big")
    assert derive_seed(42, "model.layers.3.mlp.up_proj.weight", "sha256:abc") == seed
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand((20, 30), generator=g, dtype=torch.float32) < 0.5
    delta = torch.ones(20, 30, dtype=torch.float64)
    out = get_method("dare_linear", density=0.5, seed=42).combine(
        [delta], [1.0], tensor_name="model.layers.3.mlp.up_proj.weight", keys=["sha256:abc"]
    )
    assert torch.equal(out != 0, mask)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_deterministic_across_calls_and_instances(method: str) -> None:
    deltas = [_ramp(300), -_ramp(300).flip(0)]
    args = dict(tensor_name="w", keys=["a", "b"])
    a = get_method(method, density=0.5, seed=3).combine(deltas, [1.0, 0.7], **args)
    b = get_method(method, density=0.5, seed=3).combine(deltas, [1.0, 0.7], **args)
    m = get_method(method, density=0.5, seed=3)
    c = m.combine(deltas, [1.0, 0.7], **args)
    d = m.combine(deltas, [1.0, 0.7], **args)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(c, d)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_independent_of_vector_order(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    deltas = [torch.randn(40, 25, generator=g) for _ in range(3)]
    weights = [0.5, -1.25, 2.0]
    keys = ["sha256:ccc", "sha256:aaa", "sha256:bbb"]
    m = get_method(method, density=0.5, seed=11)
    fwd = m.combine(deltas, weights, tensor_name="x", keys=keys)
    rev = m.combine(deltas[::-1], weights[::-1], tensor_name="x", keys=keys[::-1])
    assert torch.equal(fwd, rev)


def test_dare_mask_depends_on_key_only_not_on_position() -> None:
    # The mask a vector gets is the same whether it is alone or with others.
    a, b = _ramp(400), _ramp(400) * 3
    m = get_method("dare_linear", density=0.5, seed=2)
    alone = m.combine([a], [1.0], tensor_name="x", keys=["ka"])
    both = m.combine([b, a], [0.0, 1.0], tensor_name="x", keys=["kb", "ka"])
    assert torch.equal(alone, both)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_depends_on_tensor_name_seed_and_key(method: str) -> None:
    delta = _ramp(1000)

    def mask(seed: int, name: str, key: str) -> torch.Tensor:
        out = get_method(method, density=0.5, seed=seed).combine(
            [delta], [1.0], tensor_name=name, keys=[key]
        )
        return out != 0

    base = mask(0, "a.weight", "k")
    assert not torch.equal(base, mask(0, "b.weight", "k"))
    assert not torch.equal(base, mask(1, "a.weight", "k"))
    assert not torch.equal(base, mask(0, "a.weight", "k2"))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_kept_fraction(method: str) -> None:
    delta = torch.ones(100_000)
    out = get_method(method, density=0.5, seed=0).combine(
        [delta], [1.0], tensor_name="big", keys=["k"]
    )
    frac = float((out != 0).float().mean())
    assert abs(frac - 0.5) <= 0.01 * 0.5


def test_dare_ties_consensus_on_masked_deltas() -> None:
    # dare_ties = dare_linear's per-vector drop/rescale followed by the TIES
    # consensus; rebuild the consensus by hand from the single-vector outputs.
    g = torch.Generator().manual_seed(5)
    d1, d2, d3 = (torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3))
    weights = [1.0, 0.5, -2.0]
    keys = ["a", "b", "c"]
    single = [
        get_method("dare_linear", density=0.5, seed=8).combine(
            [d], [w], tensor_name="x", keys=[k]
        )
        for d, w, k in zip((d1, d2, d3), weights, keys)
    ]
    out = get_method("dare_ties", density=0.5, seed=8).combine(
        [d1, d2, d3], weights, tensor_name="x", keys=keys
    )
    expected = []
    for j in range(64):
        vals = [float(s[j]) for s in single]
        total = sum(vals)
        sigma = (total > 0) - (total < 0)
        agree = [v for v in vals if v != 0 and ((v > 0) - (v < 0)) == sigma]
        expected.append(sum(agree) / max(1, len(agree)) if sigma != 0 else 0.0)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


# --------------------------------------------------------------------------- #
# combine contract
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "dare_ties"])
def test_combine_preserves_dtype_and_inputs(method: str) -> None:
    m = get_method(method) if method == "linear" else get_method(method, density=0.5, seed=1)
    for dtype in DTYPES:
        d = _ramp(100, dtype).reshape(10, 10)
        before = d.clone()
        out = m.combine([d, -d * 0.5], [1.0, 1.0], tensor_name="w", keys=["a", "b"])
        assert out.dtype == dtype and out.shape == (10, 10)
        assert torch.equal(d, before)


def test_combine_rejects_broken_contract() -> None:
    m = get_method("linear")
    with pytest.raises(ValueError):
        m.combine([], [], tensor_name="w", keys=[])
    with pytest.raises(ValueError):
        m.combine([t([1.0])], [1.0, 2.0], tensor_name="w", keys=["a"])
    with pytest.raises(ValueError):
        m.combine([torch.ones(2, dtype=torch.float16)], [1.0], tensor_name="w", keys=["a"])
    with pytest.raises(ValueError):
        m.combine([torch.ones(2), torch.ones(3)], [1.0, 1.0], tensor_name="w", keys=["a", "b"])
    with pytest.raises(SpecError):
        m.combine([torch.ones(2)], [math.nan], tensor_name="w", keys=["a"])


def test_ties_many_vectors_counts_beyond_uint8() -> None:
    # 300 agreeing vectors (count > 255) and one dissenter per element.
    deltas = [t([1.0, -2.0]) for _ in range(300)] + [t([-5.0, 5.0])]
    keys = [f"k{i:03d}" for i in range(301)]
    out = get_method("ties", density=1.0).combine(
        deltas, [1.0] * 301, tensor_name="w", keys=keys
    )
    assert_same(out, t([1.0, -2.0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kth_largest_abs_matches_sorted_reference(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    values = (torch.randn(50_000, generator=g) * torch.randint(0, 3, (50_000,), generator=g)).to(dtype)
    ranked = sorted((abs(v) for v in values.tolist()), reverse=True)
    for k in (1, 7, 1000, 25_000, 49_999, 50_000):
        assert kth_largest_abs(values, k).item() == ranked[k - 1]
    assert kth_largest_abs(t([-3.0, 3.0, 1.0], dtype), 2).item() == 3.0
