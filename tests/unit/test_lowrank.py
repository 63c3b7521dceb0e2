"""Truncated SVD for LoRA export (registry/serving/lowrank.py), checked against independent maths.

Every expected value is computed here, from the delta, with plain torch (float64
products and norms) or numpy's float64 SVD (Eckart–Young: the best rank-r
Frobenius error is sqrt(Σ_{i>r} σ_i²)), never from the code under test.

Tolerances.  The module factorises in float32; gesdd's backward error and the
float32 factors add an absolute error to ‖φ − b a‖/‖φ‖ of about
ε₃₂·√min(m, n) (ε₃₂ = 2⁻²³ ≈ 1.19e-7).  The bound tested is
``TOL(m, n) = 50·ε₃₂·√min(m, n)`` — at most 6e-5 for the shapes here, far below
any of the errors compared (which differ between adjacent ranks by ≥ 1e-2), so
an off-by-one rank or a wrong residual formula fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.errors import error_line
from pvreg.registry.errors import InvalidOptionError, NonFiniteTensorError
from pvreg.registry.serving.lowrank import LowRank, low_rank, overall_error

EPS32 = float(torch.finfo(torch.float32).eps)


def tol(shape: tuple[int, ...]) -> float:
    return 50 * EPS32 * math.sqrt(min(shape))


def decaying(m: int, n: int, *, seed: int, decay: float = 0.8, noise: float = 0.0) -> torch.Tensor:
    """φ = U diag(decay^i) Vᵀ (+ Gaussian noise), float32: a spectrum like a real delta's, not a flat one."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = decay ** torch.arange(k, dtype=torch.float64)
    phi = (u * s) @ v.T
    if noise:
        phi += noise * torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(max(m, n))
    return phi.float()


def direct_error(phi: torch.Tensor, lr: LowRank) -> float:
    """‖φ − b a‖_F / ‖φ‖_F with the factors multiplied in float64."""
    p = phi.double()
    return float(torch.linalg.norm(p - lr.b.double() @ lr.a.double()) / torch.linalg.norm(p))


def eckart_young(phi: torch.Tensor, r: int) -> float:
    """The best possible rank-r relative error, from numpy's float64 SVD of the same float32 values."""
    s = np.linalg.svd(phi.double().numpy(), compute_uv=False)
    return float(np.sqrt(np.sum(s[r:] ** 2)) / np.sqrt(np.sum(s**2)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("m", "n", "r"), [(48, 32, 1), (48, 32, 5), (32, 96, 12), (64, 64, 40), (17, 9, 8)])
def test_reported_error_equals_direct_and_eckart_young(m: int, n: int, r: int) -> None:
    phi = decaying(m, n, seed=m * n + r, noise=0.05)
    lr = low_rank(phi, rank=r)
    assert lr.rank == r
    assert lr.a.shape == (r, n) and lr.b.shape == (m, r)
    assert lr.a.dtype == lr.b.dtype == torch.float32
    assert lr.a.is_contiguous() and lr.b.is_contiguous()
    assert lr.norm == pytest.approx(float(torch.linalg.norm(phi.double())), rel=1e-12)
    assert lr.residual == pytest.approx(lr.error * lr.norm, rel=1e-12)
    assert abs(lr.error - direct_error(phi, lr)) <= tol(phi.shape)
    assert abs(lr.error - eckart_young(phi, r)) <= tol(phi.shape)
    assert lr.error > 1e-3  # the comparison above is not a trivial 0 == 0


def test_b_at_a_reproduces_an_exactly_low_rank_delta() -> None:
    g = torch.Generator().manual_seed(3)
    phi = (
        torch.randn(40, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 24, generator=g, dtype=torch.float64)
    ).float()
    lr = low_rank(phi, rank=4)
    diff = (lr.b @ lr.a - phi).abs().max()
    assert float(diff) <= tol(phi.shape) * float(phi.abs().max())
    assert lr.error <= tol(phi.shape)
    # One rank fewer is visibly worse: the fourth direction carries real energy.
    assert low_rank(phi, rank=3).error > 1e-2


def test_balanced_split() -> None:
    """b = U√S and a = √S Vᵀ: bᵀb = a aᵀ = diag(σ₁..σ_r), the σ being φ's own (numpy's SVD)."""
    phi = decaying(30, 20, seed=11, noise=0.1)
    lr = low_rank(phi, rank=6)
    sigma = torch.from_numpy(np.linalg.svd(phi.double().numpy(), compute_uv=False)[:6])
    bb = lr.b.double().T @ lr.b.double()
    aa = lr.a.double() @ lr.a.double().T
    scale = float(sigma[0])
    assert torch.allclose(bb, torch.diag(sigma), atol=tol(phi.shape) * scale)
    assert torch.allclose(aa, torch.diag(sigma), atol=tol(phi.shape) * scale)


def test_full_rank_is_exact_within_float32() -> None:
    phi = decaying(50, 30, seed=5, decay=0.95, noise=0.2)
    lr = low_rank(phi, rank=30)
    assert lr.rank == 30
    assert lr.residual == 0.0 and lr.error == 0.0
    # The factors themselves reproduce φ to float32 accuracy (in a float32 product, as PEFT computes it).
    rel = float(torch.linalg.norm((lr.b @ lr.a - phi).double()) / torch.linalg.norm(phi.double()))
    assert rel <= tol(phi.shape)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    r1=st.integers(1, 24),
    r2=st.integers(1, 24),
    seed=st.integers(0, 2**31),
    decay=st.floats(0.3, 1.0),
)
def test_higher_rank_never_increases_the_error(m: int, n: int, r1: int, r2: int, seed: int, decay: float) -> None:
    lo, hi = sorted((r1, r2))
    phi = decaying(m, n, seed=seed, decay=decay, noise=0.1)
    a, b = low_rank(phi, rank=lo), low_rank(phi, rank=hi)
    assert a.rank == min(lo, m, n) and b.rank == min(hi, m, n)
    assert b.error <= a.error + 1e-12
    # And so for the error of the factors themselves, up to float32 rounding.
    assert direct_error(phi, b) <= direct_error(phi, a) + tol(phi.shape)


# --------------------------------------------------------------------------- the energy rule


def energy_fractions(phi: torch.Tensor) -> np.ndarray:
    """cum[k] = Σ_{i≤k+1} σ_i² / Σ σ², from numpy's float64 SVD."""
    s2 = np.linalg.svd(phi.double().numpy(), compute_uv=False) ** 2
    return np.cumsum(s2) / np.sum(s2)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(2, 32),
    n=st.integers(2, 32),
    seed=st.integers(0, 2**31),
    energy=st.floats(0.01, 1.0),
    decay=st.floats(0.5, 0.95),
)
def test_energy_picks_the_smallest_rank_meeting_it(m: int, n: int, seed: int, energy: float, decay: float) -> None:
    phi = decaying(m, n, seed=seed, decay=decay, noise=0.05)
    frac = energy_fractions(phi)
    # float32 σ may legitimately fall either side of an E that sits on a boundary; skip those.
    if np.min(np.abs(frac - energy)) < 1e-4 and energy < 1.0:
        return
    lr = low_rank(phi, energy=energy)
    r = lr.rank
    assert 1 <= r <= min(m, n)
    assert frac[r - 1] >= energy - 1e-4  # r meets E ...
    if r > 1:
        assert frac[r - 2] < energy  # ... and r − 1 does not
    # The reported error is the discarded energy: error² = 1 − kept fraction.
    assert lr.error**2 == pytest.approx(1 - frac[r - 1], abs=1e-5)


def test_energy_on_a_known_spectrum() -> None:
    """σ = 0.5^i: kept fractions 0.75, 0.9375, 0.984..., so E = 0.9 needs 2 and E = 0.95 needs 3."""
    phi = decaying(40, 20, seed=1, decay=0.5)
    assert low_rank(phi, energy=0.5).rank == 1
    assert low_rank(phi, energy=0.9).rank == 2
    assert low_rank(phi, energy=0.95).rank == 3
    assert low_rank(phi, energy=0.9, max_rank=1).rank == 1
    full = low_rank(phi, energy=1.0)
    assert full.error <= tol(phi.shape)


# --------------------------------------------------------------------------- caps and edge cases


def test_rank_capped_by_shape_and_max_rank() -> None:
    phi = decaying(7, 5, seed=2, noise=0.1)
    capped = low_rank(phi, rank=100)
    assert capped.rank == 5 and capped.a.shape == (5, 5) and capped.b.shape == (7, 5)
    assert capped.error == 0.0
    assert low_rank(phi, rank=4, max_rank=2).rank == 2
    assert low_rank(phi, rank=2, max_rank=4).rank == 2
    assert low_rank(phi, energy=1.0, max_rank=3).rank == 3
    assert low_rank(phi, rank=4, max_rank=2).error == pytest.approx(eckart_young(phi, 2), abs=tol(phi.shape))


def test_zero_delta_has_rank_zero() -> None:
    for kwargs in ({"rank": 8}, {"energy": 0.9}):
        lr = low_rank(torch.zeros(6, 4, dtype=torch.bfloat16), **kwargs)
        assert lr.rank == 0 and lr.norm == 0.0 and lr.residual == 0.0 and lr.error == 0.0
        assert lr.a.shape == (0, 4) and lr.b.shape == (6, 0)
        assert lr.a.dtype == lr.b.dtype == torch.float32
        assert torch.equal(lr.b @ lr.a, torch.zeros(6, 4))


def test_no_rank_is_spent_on_exactly_zero_singular_values() -> None:
    phi = torch.zeros(5, 4)
    phi[0, 0], phi[2, 1] = 3.0, -2.0  # σ = (3, 2, 0, 0) exactly
    lr = low_rank(phi, rank=4)
    assert lr.rank == 2 and lr.error == 0.0
    assert torch.allclose(lr.b @ lr.a, phi, rtol=0, atol=4 * EPS32 * 3)


def test_empty_module() -> None:
    lr = low_rank(torch.zeros(0, 3), rank=2)
    assert lr.rank == 0 and lr.a.shape == (0, 3) and lr.b.shape == (0, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_are_factorised_in_float32(dtype: torch.dtype) -> None:
    phi = decaying(24, 40, seed=7, noise=0.05).to(dtype)
    lr = low_rank(phi, rank=5)
    assert lr.a.dtype == lr.b.dtype == torch.float32
    exact = phi.float()  # the values the module sees, exactly (bf16/f16 ⊂ f32)
    assert abs(lr.error - direct_error(exact, lr)) <= tol(phi.shape)
    assert abs(lr.error - eckart_young(exact, 5)) <= tol(phi.shape)
    assert lr.norm == pytest.approx(float(torch.linalg.norm(exact.double())), rel=1e-12)


def test_overall_error_is_the_error_of_the_concatenated_vector() -> None:
    phis = [decaying(20, 12, seed=1, noise=0.1), 3 * decaying(8, 30, seed=2, noise=0.3), torch.zeros(4, 4)]
    parts = [low_rank(p, rank=3) for p in phis]
    flat = torch.cat([p.double().flatten() for p in phis])
    approx = torch.cat([(lr.b.double() @ lr.a.double()).flatten() for lr in parts])
    expected = float(torch.linalg.norm(flat - approx) / torch.linalg.norm(flat))
    assert overall_error((lr.norm, lr.residual) for lr in parts) == pytest.approx(expected, abs=1e-5)
    assert expected > 0.05
    assert overall_error([]) == 0.0 and overall_error([(0.0, 0.0)]) == 0.0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "python", "cli"),
    [
        ({}, "give exactly one of rank or energy (neither", "--rank or --energy"),
        ({"rank": 4, "energy": 0.9}, "(both were given)", "--rank or --energy"),
        ({"rank": 0}, "invalid rank 0:", "invalid --rank 0:"),
        ({"rank": True}, "invalid rank True:", "--rank True"),
        ({"rank": 2.5}, "invalid rank 2.5:", "--rank 2.5"),
        ({"energy": 0.0}, "invalid energy 0.0:", "invalid --energy 0.0:"),
        ({"energy": 1.5}, "invalid energy 1.5:", "--energy 1.5"),
        ({"energy": float("nan")}, "invalid energy nan:", "--energy nan"),
        ({"rank": 4, "max_rank": 0}, "invalid max_rank 0:", "invalid --max-rank 0:"),
    ],
)
def test_bad_policies_name_the_option(kwargs: dict, python: str, cli: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        low_rank(torch.ones(3, 3), **kwargs)
    assert python in str(info.value)
    line = error_line(info.value)
    assert cli in line and "\n" not in line
    assert info.value.exit_code == 2


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_non_2d_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidOptionError, match=r"needs a 2-D tensor, got shape"):
        low_rank(torch.ones(shape), rank=1)


def test_integer_tensor_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="int64 tensor: not floating point"):
        low_rank(torch.ones(3, 3, dtype=torch.int64), rank=1)


@pytest.mark.parametrize(
    ("value", "dtype", "why"),
    [
        (float("nan"), torch.float32, "NaN or Inf"),
        (float("inf"), torch.bfloat16, "NaN or Inf"),
        (1e300, torch.float64, "overflow float32"),
    ],
)
def test_non_finite_is_refused_and_can_be_named(value: float, dtype: torch.dtype, why: str) -> None:
    phi = torch.ones(4, 5, dtype=dtype)
    phi[1, 2] = value
    phi[3, 0] = value
    with pytest.raises(NonFiniteTensorError, match=why) as info:
        low_rank(phi, energy=0.9)
    err = info.value
    assert err.count == 2 and err.exit_code == 2 and "2 of 20 values" in str(err)
    named = err.named("model.layers.0.mlp.up_proj.weight")
    assert named.tensor == "model.layers.0.mlp.up_proj.weight" and named.count == 2
    assert str(named).startswith("tensor 'model.layers.0.mlp.up_proj.weight': 2 of 20 values")
    assert "\n" not in error_line(named)
