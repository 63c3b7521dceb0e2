"""The compose engine's cheap finite check: ``cast_stays_finite(acc, finite_bound(dtype))`` must never pass a slice
whose cast to the output dtype holds Inf/NaN (checked here by casting, independently of the bound's reasoning)."""

from __future__ import annotations

import pytest
import torch

from pvreg.registry.merge.engine import cast_stays_finite, finite_bound
from pvreg.registry.tensors.workers import SLICE_ELEMENTS


def _passes(acc: torch.Tensor, dtype: torch.dtype) -> bool:
    return cast_stays_finite(acc, finite_bound(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_bound_never_passes_a_slice_that_overflows_its_cast(dtype: torch.dtype) -> None:
    limit = float(torch.finfo(dtype).max)
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3, 1e18, 1e30):
        acc = torch.randn(SLICE_ELEMENTS, generator=g) * scale
        for k, v in enumerate((limit, limit * 1.0001, limit * 0.999, float("inf"), float("nan"))):
            spiked = acc.clone()
            spiked[k * 997] = torch.tensor(v, dtype=torch.float64).float()  # beyond float32's range: Inf
            cast_ok = bool(torch.isfinite(spiked.to(dtype)).all())
            if _passes(spiked, dtype):
                assert cast_ok, (dtype, scale, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ordinary_weights_take_the_fast_path(dtype: torch.dtype) -> None:
    """Model weights (|x| ~ 0.02–10) pass without the element-wise check; only then is the check cheap."""
    g = torch.Generator().manual_seed(1)
    assert _passes(torch.randn(SLICE_ELEMENTS, generator=g) * 10, dtype)


def test_an_inf_or_nan_accumulator_fails_even_for_float64_output() -> None:
    acc = torch.zeros(16, dtype=torch.float64)
    for v in (float("inf"), float("nan")):
        acc[3] = v
        assert not _passes(acc, torch.float64)


def test_the_slice_size_keeps_the_bound_sound() -> None:
    """finite_bound's ½ holds while n·u ≤ 1/3 (then n·u/(1 − n·u) ≤ ½); a larger slice would need a smaller bound."""
    assert SLICE_ELEMENTS * 2.0**-24 <= 1 / 3
