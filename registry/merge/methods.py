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

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pvreg.registry.errors import BaseMismatchError, SpecError
from pvreg.registry.merge.tensorops import (
    _canonical_order,
    _dare_mask,
    _sign_consensus,
    derive_seed,
    kth_largest_abs,
    trim_count,
)
from pvreg.registry.tensors.workers import widen

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
    "add_weighted",
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
            raise TypeError(f"merge method {self.name!r} expects {self.params.__name__}, got {type(params).__name__}")
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
                f"{self.name}: tensor {tensor_name!r} got {n} deltas, {len(weights)} weights and {len(keys)} keys"
            )
        first = deltas[0]
        if first.dtype not in ACCUMULATION_DTYPES:
            raise ValueError(
                f"{self.name}: tensor {tensor_name!r} has dtype {first.dtype}; "
                "expected float32 or float64 (cast before combining)"
            )
        for d, k in zip(deltas, keys, strict=True):
            if d.dtype != first.dtype or d.device != first.device:
                raise ValueError(
                    f"{self.name}: tensor {tensor_name!r} of vector {k} is {d.dtype} on "
                    f"{d.device}, expected {first.dtype} on {first.device}"
                )
            if d.shape != first.shape:
                raise BaseMismatchError(
                    f"tensor {tensor_name!r} of vector {k} has shape {tuple(d.shape)}, expected {tuple(first.shape)}"
                )
        ws = [float(w) for w in weights]
        for w, k in zip(ws, keys, strict=True):
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
        add_weighted(out, deltas, weights, order)
        return out


def add_weighted(
    acc: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    order: Sequence[int],
    widened: torch.Tensor | None = None,
) -> None:
    """``acc += Σ_i w_i·δ_i`` in ``order``: the one place the ``linear`` arithmetic is spelled out.

    ``δ_i`` may be of a narrower float dtype than ``acc`` (bf16/f16 into float32);
    the engine's streaming path passes ``widened``, a scratch buffer of ``acc``'s
    dtype and size, and each ``δ_i`` is widened into it first (:func:`widen`:
    same bits, faster than torch's mixed-dtype add).
    """
    for i in order:
        acc.add_(widen(deltas[i], widened), alpha=weights[i])


class Ties(MergeMethod):
    """TIES: trim to top-``density`` by magnitude, elect sign, disjoint mean.

    ``k = ceil(density·numel)``; ``t_i`` = k-th largest ``|δ_i|``;
    ``d_i = w_i·δ_i·[|δ_i| >= t_i]`` (all ties at ``t_i`` kept);
    ``σ = sign(Σ d_i)``;
    ``result = Σ_{d_i≠0, sign(d_i)=σ} d_i / max(1, #{i : d_i≠0, sign(d_i)=σ})``.
    """

    name = "ties"
    params = TiesParams
    config: TiesParams  # what __init__ checked it is

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
        density = self.config.density
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
    config: DareParams  # what __init__ checked it is
    uses_seed = True

    def _rescaled(self, delta: torch.Tensor, *, tensor_name: str, key: str) -> torch.Tensor:
        """Fresh tensor ``δ·m / density`` with the mask derived from (seed, tensor, key)."""
        density = self.config.density
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


def get_method(name: str, *, density: float | None = None, seed: int | None = None) -> MergeMethod:
    """Build the merge method ``name`` from user-supplied options.

    ``density`` is required for ``ties``, ``dare_linear`` and ``dare_ties`` and
    refused for ``linear``. ``seed`` is used by the DARE methods; ``None`` means 0
    (read it back from ``method.seed`` to record it). Deterministic methods
    accept and ignore a seed. Raises :class:`SpecError` with a one-line message
    naming the bad value.
    """
    cls = METHODS.get(name)
    if cls is None:
        raise SpecError(f"unknown merge method {name!r} (expected one of: {', '.join(sorted(METHODS))})")
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
