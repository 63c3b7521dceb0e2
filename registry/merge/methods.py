"""Merge methods: how pvreg combines the deltas of one tensor.

Composition builds ``θ = θ_base + combine(δ_1..δ_n)`` one tensor name at a time.
This module is only the ``combine`` step. For each tensor name the caller passes

* ``deltas``  – the stored vector tensors ``δ_i`` for that name, all of one shape
  and of the accumulation dtype (``float32`` or ``float64``; it is never changed);
* ``weights`` – the final scalar coefficients ``w_i`` (coefficient × sign ×
  optional normalisation, worked out by the caller);
* ``keys``    – a stable identifier of each vector (its sha256), which seeds the
  randomness of the DARE methods.

and gets back the combined delta (base not added) in the input dtype.

Methods (mergekit-style: one small class each, listed in :data:`METHODS`, no
registration by import side effect):

``linear``
    ``result = Σ_i w_i·δ_i``.

``ties`` (Yadav et al. 2023, "TIES-Merging"), parameter ``density`` ∈ (0, 1]
    1. Trim: for each vector, ``k = ceil(density·numel)``; let ``t_i`` be the
       k-th largest of ``|δ_i|``; keep every entry with ``|δ_i| >= t_i`` and zero
       the rest. Ties at the threshold are all kept, so slightly more than ``k``
       entries can survive; nothing is broken by position or index.
    2. ``d_i = w_i·trim(δ_i)``.
    3. Elect a sign per element: ``σ = sign(Σ_i d_i)``.
    4. Disjoint mean: ``result = Σ_{i∈A} d_i / max(1, |A|)`` with
       ``A = {i : d_i ≠ 0 and sign(d_i) = σ}``. Where ``σ = 0`` the result is 0.

``dare_linear`` (Yu et al. 2023, "DARE"), parameter ``density`` ∈ (0, 1]
    ``m_i ~ Bernoulli(density)`` per element, ``δ'_i = δ_i·m_i / density``,
    ``result = Σ_i w_i·δ'_i``.

``dare_ties``, parameter ``density`` ∈ (0, 1]
    DARE drop-and-rescale, then the TIES sign election and disjoint mean
    (steps 3–4 above) on ``d_i = w_i·δ'_i``; no magnitude trim.

Randomness (DARE): the mask of vector ``key`` on tensor ``tensor_name`` is
``torch.rand(shape, generator=g, dtype=float32) < density`` on the CPU, where
``g = torch.Generator().manual_seed(s)`` and ``s`` is the first 8 bytes, read
big-endian, of ``sha256(f"{seed}\\0{tensor_name}\\0{key}")`` (see
:func:`derive_seed`). A mask therefore depends only on (seed, tensor name, key,
shape, density) – not on processing order, threads, or the order of vectors in
the spec. Bit-for-bit reproduction additionally assumes the same torch version
(its CPU random stream is not guaranteed stable across releases).

Order independence: every method accumulates the vectors in a canonical order
(sorted by ``(key, weight)``), so permuting the inputs gives bit-identical
results, not just results equal up to rounding.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import torch
from pvreg.registry.errors import BaseMismatchError, SpecError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "METHODS",
    "DareLinear",
    "DareParams",
    "DareTies",
    "Linear",
    "LinearParams",
    "MergeMethod",
    "Ties",
    "TiesParams",
    "derive_seed",
    "get_method",
    "kth_largest_abs",
    "trim_count",
]

#: Accumulation dtypes ``combine`` accepts.
ACCUMULATION_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)

#: Seeds are recorded in the database as signed 64-bit integers.
MAX_SEED: int = 2**63 - 1


# --------------------------------------------------------------------------- #
# Parameter schemas
# --------------------------------------------------------------------------- #


class LinearParams(BaseModel):
    """``linear`` takes no parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TiesParams(BaseModel):
    """``ties``: ``density`` ∈ (0, 1], the fraction of entries kept per tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    density: float = Field(gt=0, le=1, allow_inf_nan=False)


class DareParams(BaseModel):
    """``dare_linear``/``dare_ties``: ``density`` ∈ (0, 1], the keep probability."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    density: float = Field(gt=0, le=1, allow_inf_nan=False)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def derive_seed(seed: int, tensor_name: str, key: str) -> int:
    """Generator seed for one (seed, tensor, vector) triple.

    ``int.from_bytes(sha256(f"{seed}\\0{tensor_name}\\0{key}".encode("utf-8"))
    .digest()[:8], "big")`` – an unsigned 64-bit integer.
    """
    material = f"{seed}\0{tensor_name}\0{key}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")


def trim_count(density: float, numel: int) -> int:
    """``k = ceil(density·numel)``, clamped to ``[1, numel]`` (0 for an empty tensor).

    ``density`` is read as the decimal it prints as (``repr``), so ``0.1·30`` is
    exactly 3 rather than ``ceil(3.0000000000000004) = 4``.
    """
    if numel <= 0:
        return 0
    k = math.ceil(Fraction(repr(float(density))) * numel)
    return min(max(k, 1), numel)


def _dare_mask(shape: torch.Size, density: float, generator_seed: int) -> torch.Tensor:
    """Boolean keep-mask: ``torch.rand(shape, generator=g, dtype=float32) < density``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(generator_seed)
    u = torch.rand(shape, generator=g, dtype=torch.float32, device="cpu")
    mask = u < density
    del u
    return mask


_INT_VIEW: dict[torch.dtype, torch.dtype] = {torch.float32: torch.int32, torch.float64: torch.int64}


def kth_largest_abs(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of ``|delta|`` (1-based) as a 0-dim tensor of ``delta``'s dtype.

    Exact, and leaner than ``torch.kthvalue``/``topk`` on the whole tensor (which
    copy the input and allocate int64 indices, ~4 tensor-sizes for float32):
    non-negative IEEE floats order like their bit patterns, so the threshold is
    bisected over the integer view of ``|delta|`` with boolean counts; once the
    window ``[lo, hi)`` holds few enough entries they are extracted and finished
    with ``kthvalue``.
    """
    numel = delta.numel()
    if not 1 <= k <= numel:
        raise ValueError(f"k={k} out of range for {numel} entries")
    a = delta.abs().reshape(-1)
    bits = a.view(_INT_VIEW[a.dtype])
    # Invariant: count(bits >= lo) = cnt_lo >= k > cnt_hi = count(bits >= hi).
    lo, hi = 0, int(bits.max()) + 1
    cnt_lo, cnt_hi = numel, 0
    limit = max(1 << 14, numel >> 4)
    while hi - lo > 1 and cnt_lo - cnt_hi > limit:
        mid = (lo + hi) // 2
        c = int(torch.count_nonzero(bits >= mid))
        if c >= k:
            lo, cnt_lo = mid, c
        else:
            hi, cnt_hi = mid, c
    if hi - lo == 1:
        # Every entry in [lo, hi) equals lo, and the k-th largest lies there.
        result = torch.tensor(lo, dtype=bits.dtype).view(a.dtype)
    else:
        window = bits >= lo
        window.logical_and_(bits < hi)
        sub = a[window]
        del window
        # The k-th largest overall is the (k - cnt_hi)-th largest in the window.
        result = torch.kthvalue(sub, sub.numel() - (k - cnt_hi) + 1).values
        del sub
    del a, bits
    return result.to(delta.device)


def _canonical_order(weights: Sequence[float], keys: Sequence[str]) -> list[int]:
    """Indices sorted by ``(key, weight)``: the order every method accumulates in."""
    return sorted(range(len(keys)), key=lambda i: (keys[i], weights[i]))


def _sign_consensus(
    order: Sequence[int],
    contribution: Callable[[int], torch.Tensor],
    like: torch.Tensor,
) -> torch.Tensor:
    """TIES steps 3–4 over ``d_i = contribution(i)``.

    ``σ = sign(Σ d_i)``; ``result = Σ_{d_i≠0, sign(d_i)=σ} d_i / max(1, count)``.

    ``contribution`` is called twice per vector (once per pass) and must return
    the same fresh tensor both times; this keeps at most a handful of
    tensor-sized buffers alive instead of all ``n`` contributions: the running
    sum (pass 1) or the result (pass 2), one contribution, and boolean/uint8
    masks (σ>0, σ<0, agreement, count).
    """
    total = torch.zeros_like(like)
    for i in order:
        d = contribution(i)
        total.add_(d)
        del d
    sigma_pos = total > 0
    sigma_neg = total < 0
    # Reuse the sum's buffer for the result.
    total.zero_()
    count_dtype = torch.uint8 if len(order) < 256 else torch.int32
    count = torch.zeros(like.shape, dtype=count_dtype, device=like.device)
    for i in order:
        d = contribution(i)
        agree = d > 0
        agree.logical_and_(sigma_pos)
        neg = d < 0
        neg.logical_and_(sigma_neg)
        agree.logical_or_(neg)
        del neg
        # Same-size uint8 view: adding a bool tensor would allocate a cast copy.
        count.add_(agree.view(torch.uint8) if count_dtype == torch.uint8 else agree)
        d.masked_fill_(agree.logical_not_(), 0)
        total.add_(d)
        del d, agree
    del sigma_pos, sigma_neg
    count.clamp_(min=1)
    total.div_(count)
    return total


# --------------------------------------------------------------------------- #
# Methods
# --------------------------------------------------------------------------- #


class MergeMethod(ABC):
    """One way to combine the deltas of a tensor.

    Subclasses declare ``name``, the pydantic ``params`` schema and whether they
    use randomness (``uses_seed``), and implement :meth:`_combine`. The public
    :meth:`combine` validates its arguments, runs without autograd and puts the
    vectors in canonical order.
    """

    name: ClassVar[str]
    params: ClassVar[type[BaseModel]]
    uses_seed: ClassVar[bool] = False

    config: BaseModel
    seed: int | None

    def __init__(self, params: BaseModel, *, seed: int | None) -> None:
        if not isinstance(params, self.params):
            raise TypeError(
                f"merge method {self.name!r} expects {self.params.__name__}, "
                f"got {type(params).__name__}"
            )
        self.config = params
        if self.uses_seed:
            self.seed = 0 if seed is None else _check_seed(seed)
        else:
            # Deterministic methods accept and ignore a seed.
            self.seed = None

    def record(self) -> dict[str, Any]:
        """What a compose record should store: method name, parameters, seed if used."""
        out: dict[str, Any] = {"method": self.name, **self.config.model_dump()}
        if self.uses_seed:
            out["seed"] = self.seed
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.record().items() if k != "method")
        return f"{type(self).__name__}({args})"

    def combine(
        self,
        deltas: Sequence[torch.Tensor],
        weights: Sequence[float],
        *,
        tensor_name: str,
        keys: Sequence[str],
    ) -> torch.Tensor:
        """Combine ``deltas`` with ``weights`` into one delta of the same dtype and shape.

        Raises ``ValueError`` on a broken call contract (lengths, dtypes),
        :class:`BaseMismatchError` when the shapes differ and :class:`SpecError`
        on a non-finite weight.
        """
        n = len(deltas)
        if n == 0:
            raise ValueError(f"{self.name}: no deltas for tensor {tensor_name!r}")
        if len(weights) != n or len(keys) != n:
            raise ValueError(
                f"{self.name}: tensor {tensor_name!r} got {n} deltas, "
                f"{len(weights)} weights and {len(keys)} keys"
            )
        first = deltas[0]
        if first.dtype not in ACCUMULATION_DTYPES:
            raise ValueError(
                f"{self.name}: tensor {tensor_name!r} has dtype {first.dtype}; "
                "expected float32 or float64 (cast before combining)"
            )
        for d, k in zip(deltas, keys):
            if d.dtype != first.dtype or d.device != first.device:
                raise ValueError(
                    f"{self.name}: tensor {tensor_name!r} of vector {k} is {d.dtype} on "
                    f"{d.device}, expected {first.dtype} on {first.device}"
                )
            if d.shape != first.shape:
                raise BaseMismatchError(
                    f"tensor {tensor_name!r} of vector {k} has shape {tuple(d.shape)}, "
                    f"expected {tuple(first.shape)}"
                )
        ws = [float(w) for w in weights]
        for w, k in zip(ws, keys):
            if not math.isfinite(w):
                raise SpecError(f"weight {w} of vector {k} is not finite")
        ks = [str(k) for k in keys]
        order = _canonical_order(ws, ks)
        with torch.no_grad():
            return self._combine(list(deltas), ws, order, tensor_name=tensor_name, keys=ks)

    @abstractmethod
    def _combine(
        self,
        deltas: list[torch.Tensor],
        weights: list[float],
        order: list[int],
        *,
        tensor_name: str,
        keys: list[str],
    ) -> torch.Tensor:
        """Validated combine; ``order`` is the canonical accumulation order."""


class Linear(MergeMethod):
    """``result = Σ_i w_i·δ_i``."""

    name = "linear"
    params = LinearParams

    def _combine(
        self,
        deltas: list[torch.Tensor],
        weights: list[float],
        order: list[int],
        *,
        tensor_name: str,
        keys: list[str],
    ) -> torch.Tensor:
        out = torch.zeros_like(deltas[0])
        for i in order:
            out.add_(deltas[i], alpha=weights[i])
        return out


class Ties(MergeMethod):
    """TIES: trim to top-``density`` by magnitude, elect sign, disjoint mean.

    ``k = ceil(density·numel)``; ``t_i`` = k-th largest ``|δ_i|``;
    ``d_i = w_i·δ_i·[|δ_i| >= t_i]`` (all ties at ``t_i`` kept);
    ``σ = sign(Σ d_i)``;
    ``result = Σ_{d_i≠0, sign(d_i)=σ} d_i / max(1, #{i : d_i≠0, sign(d_i)=σ})``.
    """

    name = "ties"
    params = TiesParams

    def _combine(
        self,
        deltas: list[torch.Tensor],
        weights: list[float],
        order: list[int],
        *,
        tensor_name: str,
        keys: list[str],
    ) -> torch.Tensor:
        like = deltas[0]
        numel = like.numel()
        if numel == 0:
            return torch.zeros_like(like)
        density: float = self.config.density  # type: ignore[attr-defined]
        k = trim_count(density, numel)
        # Thresholds are found once (one selection per vector) and reused in pass 2.
        thresholds: dict[int, torch.Tensor | None] = {}

        def contribution(i: int) -> torch.Tensor:
            delta, w = deltas[i], weights[i]
            if i not in thresholds:
                if k >= numel:
                    thresholds[i] = None  # keep everything
                else:
                    thresholds[i] = kth_largest_abs(delta, k)
            t = thresholds[i]
            if t is None:
                return torch.mul(delta, w)
            d = delta.abs()
            drop = d < t
            torch.mul(delta, w, out=d)
            d.masked_fill_(drop, 0)
            del drop
            return d

        return _sign_consensus(order, contribution, like)


class _Dare(MergeMethod):
    """Shared DARE drop-and-rescale: ``δ'_i = δ_i·m_i / density``, ``m_i ~ Bernoulli(density)``."""

    params = DareParams
    uses_seed = True

    def _rescaled(self, delta: torch.Tensor, *, tensor_name: str, key: str) -> torch.Tensor:
        """Fresh tensor ``δ·m / density`` with the mask derived from (seed, tensor, key)."""
        density: float = self.config.density  # type: ignore[attr-defined]
        assert self.seed is not None
        if density == 1.0:
            return delta.clone()  # every mask entry is kept: rand() < 1 always
        mask = _dare_mask(delta.shape, density, derive_seed(self.seed, tensor_name, key))
        mask = mask.to(delta.device)
        out = delta.masked_fill(mask.logical_not_(), 0)
        del mask
        out.div_(density)
        return out


class DareLinear(_Dare):
    """DARE + linear: ``result = Σ_i w_i·(δ_i·m_i / density)``."""

    name = "dare_linear"

    def _combine(
        self,
        deltas: list[torch.Tensor],
        weights: list[float],
        order: list[int],
        *,
        tensor_name: str,
        keys: list[str],
    ) -> torch.Tensor:
        out = torch.zeros_like(deltas[0])
        for i in order:
            d = self._rescaled(deltas[i], tensor_name=tensor_name, key=keys[i])
            out.add_(d, alpha=weights[i])
            del d
        return out


class DareTies(_Dare):
    """DARE + TIES consensus: ``d_i = w_i·δ_i·m_i / density``; ``σ = sign(Σ d_i)``;
    ``result = Σ_{d_i≠0, sign(d_i)=σ} d_i / max(1, #{i : d_i≠0, sign(d_i)=σ})``.
    """

    name = "dare_ties"

    def _combine(
        self,
        deltas: list[torch.Tensor],
        weights: list[float],
        order: list[int],
        *,
        tensor_name: str,
        keys: list[str],
    ) -> torch.Tensor:
        like = deltas[0]
        if like.numel() == 0:
            return torch.zeros_like(like)

        def contribution(i: int) -> torch.Tensor:
            # Masks are regenerated in pass 2 from the same derived seed rather
            # than held for every vector.
            d = self._rescaled(deltas[i], tensor_name=tensor_name, key=keys[i])
            d.mul_(weights[i])
            return d

        return _sign_consensus(order, contribution, like)


#: Every merge method by name. Explicit; nothing registers itself on import.
METHODS: dict[str, type[MergeMethod]] = {
    "linear": Linear,
    "ties": Ties,
    "dare_linear": DareLinear,
    "dare_ties": DareTies,
}


# --------------------------------------------------------------------------- #
# Construction from user input
# --------------------------------------------------------------------------- #


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"invalid seed {seed!r}: must be an integer")
    if not 0 <= seed <= MAX_SEED:
        raise SpecError(f"invalid seed {seed}: must be between 0 and {MAX_SEED}")
    return seed


def get_method(
    name: str, *, density: float | None = None, seed: int | None = None
) -> MergeMethod:
    """Build the merge method ``name`` from user-supplied options.

    ``density`` is required for ``ties``, ``dare_linear`` and ``dare_ties`` and
    refused for ``linear``. ``seed`` is used by the DARE methods; ``None`` means 0
    (read it back from ``method.seed`` to record it). Deterministic methods
    accept and ignore a seed. Raises :class:`SpecError` with a one-line message
    naming the bad value.
    """
    cls = METHODS.get(name)
    if cls is None:
        raise SpecError(
            f"unknown merge method {name!r} (expected one of: {', '.join(sorted(METHODS))})"
        )
    takes_density = "density" in cls.params.model_fields
    if takes_density and density is None:
        raise SpecError(f"merge method {name!r} requires a density in (0, 1]")
    if not takes_density and density is not None:
        raise SpecError(f"merge method {name!r} takes no density (got {density!r})")
    if seed is not None:
        seed = _check_seed(seed)
    raw: dict[str, Any] = {"density": density} if takes_density else {}
    try:
        params = cls.params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
        value = raw.get(field, err.get("input"))
        detail = "must be a finite number in (0, 1]" if field == "density" else err["msg"]
        raise SpecError(f"invalid {field} {value!r} for merge method {name!r}: {detail}") from None
    return cls(params, seed=seed)
