"""Exact LoRA factors: how they are kept beside a LoRA-sourced vector, and read back for export.

A vector registered from LoRA adapters (``add --lora``, a pair of adapters, ``train --method
lora``) is stored dense like every vector, and *also* as its factors, in a second
content-addressed blob (``versions.factors_sha256``).  For every tensor ``n`` of the vector and
every adapter ``t`` that contributes to it (``adapter``, or ``positive`` / ``negative``):

=====================  =========  ======================================================
``n::t::A``            ``(r, d1)``  float32, lora_A in the base tensor's layout
``n::t::B``            ``(d0, r)``  float32, lora_B in the base tensor's layout
``n::t::scale``        ``(1,)``     float64: the adapter's scaling times its sign in φ
=====================  =========  ======================================================

so that φ[n] = Σ_t scale_t · B_t @ A_t exactly as :mod:`pvreg.registry.sources.adapters`
computed the dense blob (float32 factors, the same scalings; a GPT-2 ``Conv1D`` module's
factors are stored swapped and transposed, B' = Aᵀ, A' = Bᵀ, so every tensor reads in the
base's ``(d0, d1)`` layout).  Why a blob and not a column: factors are tensors, the blob store
already hashes, verifies, garbage-collects and publishes tensors, and a content address makes
re-registering the same adapter free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import IntegrityError
from pvreg.registry.tensors.safetensors import SafetensorsFile, TensorInfo

if TYPE_CHECKING:
    import torch

#: Separates the tensor name, the adapter's role and the part; never part of a real tensor name.
SEP = "::"
PARTS = ("A", "B", "scale")

#: What the stored dense vector may differ from the factors' product, relative to its norm, per
#: stored dtype: the cast's rounding (half an ulp, 2^-8 for bfloat16, 2^-11 for float16) with room
#: for float32 summation; a factor blob outside this is not the vector's.
MATCH_TOLERANCE = {"F32": 1e-5, "F64": 1e-5, "BF16": 2**-7, "F16": 2**-9}


@dataclass(frozen=True)
class FactorTerm:
    """One adapter's contribution to one tensor: ``scale · b @ a`` (float32 factors)."""

    role: str
    a: torch.Tensor  # (r, d1)
    b: torch.Tensor  # (d0, r)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class FactorPlan:
    """What one adapter will contribute to one tensor, before any factor is read."""

    name: str  # the base tensor
    role: str
    rank: int
    shape: tuple[int, int]  # the base tensor's (d0, d1)
    scale: float
    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (A, B) float32, base layout


def key(name: str, role: str, part: str) -> str:
    return f"{name}{SEP}{role}{SEP}{part}"


class FactorSource:
    """The factors blob as a :class:`~pvreg.registry.sources.ingest.TensorSource` (one module at a time)."""

    def __init__(self, label: str, plans: list[FactorPlan]) -> None:
        self.label = f"{label} (LoRA factors)"
        self._plans = {(p.name, p.role): p for p in plans}
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._infos: list[TensorInfo] = []
        for p in plans:
            d0, d1 = p.shape
            self._infos += [
                TensorInfo(key(p.name, p.role, "A"), "F32", (p.rank, d1), 4 * p.rank * d1),
                TensorInfo(key(p.name, p.role, "B"), "F32", (d0, p.rank), 4 * d0 * p.rank),
                TensorInfo(key(p.name, p.role, "scale"), "F64", (1,), 8),
            ]

    def plan(self) -> list[TensorInfo]:
        return list(self._infos)

    def tensor(self, name: str) -> torch.Tensor:
        import torch

        tensor, role, part = name.split(SEP)
        p = self._plans[(tensor, role)]
        if part == "scale":
            return torch.tensor([p.scale], dtype=torch.float64)
        if (tensor, role) not in self._cache:
            self._cache = {(tensor, role): p.load()}  # A and B are written one after the other
        a, b = self._cache[(tensor, role)]
        return a if part == "A" else b

    def raw(self, name: str) -> memoryview | None:
        return None

    def release(self, name: str) -> None:
        return None


class StoredFactors:
    """A factors blob opened for reading: which tensors it covers, and their terms."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self.file = SafetensorsFile(path)
        self._roles: dict[str, list[str]] = {}
        for k in sorted(self.file.infos):
            parts = k.split(SEP)
            if len(parts) != 3 or parts[2] not in PARTS:
                raise IntegrityError(f"{label}: unexpected tensor {k!r} in the LoRA factors blob")
            if parts[2] == "A":
                self._roles.setdefault(parts[0], []).append(parts[1])
        for name, roles in self._roles.items():
            for role in roles:
                for part in PARTS:
                    if key(name, role, part) not in self.file.infos:
                        raise IntegrityError(f"{label}: LoRA factors of {name!r} ({role}) lack their {part}")

    def names(self) -> list[str]:
        return sorted(self._roles)

    def ranks(self, name: str) -> int:
        """The total rank of the tensor's terms (before any weighting)."""
        return sum(self.file.infos[key(name, r, "A")].shape[0] for r in self._roles[name])

    def terms(self, name: str) -> list[FactorTerm]:
        import torch

        out = []
        for role in self._roles[name]:
            a = self.file.tensor(key(name, role, "A")).to(torch.float32)
            b = self.file.tensor(key(name, role, "B")).to(torch.float32)
            scale = float(self.file.tensor(key(name, role, "scale")).reshape(-1)[0])
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or not math.isfinite(scale):
                raise IntegrityError(f"{self.label}: LoRA factors of {name!r} ({role}) are malformed")
            out.append(FactorTerm(role, a, b, scale))
        return out

    def product(self, name: str) -> torch.Tensor:
        """Σ scale · B @ A for one tensor, float32: what the dense blob holds (before its cast)."""
        total: torch.Tensor | None = None
        for t in self.terms(name):
            part = (t.b @ t.a).mul_(t.scale)
            total = part if total is None else total.add_(part)
        assert total is not None
        return total

    def release(self, name: str) -> None:
        for role in self._roles.get(name, []):
            for part in PARTS:
                self.file.release(key(name, role, part))

    def close(self) -> None:
        self.file.close()


def check_matches(factors: StoredFactors, dense: SafetensorsFile) -> None:
    """Raise :class:`IntegrityError` unless the factors reproduce the dense vector.

    Same tensor names, same shapes, and ‖dense − Σ s·B@A‖ ≤ tol·‖dense‖ per tensor, with the
    tolerance of the dense tensor's dtype (:data:`MATCH_TOLERANCE`): what ``pull`` checks before it
    trusts a published factors file, since an export from it claims to be exact.
    """
    import torch

    if set(factors.names()) != set(dense.infos):
        extra = sorted(set(factors.names()) ^ set(dense.infos))
        raise IntegrityError(f"{factors.label}: covers other tensors than the vector (first: {extra[0]!r})")
    for name in factors.names():
        tol = MATCH_TOLERANCE.get(dense.infos[name].dtype, 2**-7)
        want = dense.tensor(name).to(torch.float32)
        got = factors.product(name)
        if tuple(got.shape) != tuple(want.shape):
            raise IntegrityError(
                f"{factors.label}: factors of {name!r} give shape {list(got.shape)}, the vector has {list(want.shape)}"
            )
        err = float(torch.linalg.vector_norm((got - want).reshape(-1)))
        norm = float(torch.linalg.vector_norm(want.reshape(-1)))
        if not err <= tol * max(norm, 1e-30):
            raise IntegrityError(
                f"{factors.label}: factors of {name!r} do not reproduce the vector "
                f"(relative difference {err / max(norm, 1e-30):.3g})"
            )
        factors.release(name)
        dense.release(name)


# --- combining: one module of an export --------------------------------------------------------


@dataclass(frozen=True)
class ModuleFactors:
    """One module's exported factors (float32) and how they were made."""

    a: torch.Tensor  # (r, d1)
    b: torch.Tensor  # (d0, r)
    exact_rank: int
    svd_rank: int
    recompressed: bool


def combine_module(
    exact: list[tuple[float, FactorTerm]],
    dense: torch.Tensor | None,
    *,
    rank: int | None,
    energy: float | None,
    limit: int | None,
) -> ModuleFactors:
    """Factors of w·(exact terms) + dense for one module.

    A weighted sum of LoRAs is exactly the rank-concatenation of their scaled factors:
    Σ_i w_i·s_i·B_i·A_i = [w_1·s_1·B_1, …] · [A_1; …].  The dense terms (vectors stored only
    densely) are summed first and factorised once by truncated SVD (``rank`` or ``energy``): one
    SVD of the sum is the best rank-r approximation of that part (Eckart–Young), which r separate
    SVDs concatenated are not.  When the total rank exceeds ``limit`` the whole product is
    re-factorised by SVD at ``limit`` (the report marks it; the exact part is then approximate too).
    """
    import torch

    from pvreg.registry.serving.lowrank import low_rank

    a_parts = [t.a for _, t in exact]
    b_parts = [t.b * (w * t.scale) for w, t in exact]
    exact_rank = sum(t.rank for _, t in exact)
    svd_rank = 0
    if dense is not None:
        lr = low_rank(dense, rank=rank, energy=energy)
        svd_rank = lr.rank
        a_parts.append(lr.a)
        b_parts.append(lr.b)
    a = torch.cat(a_parts, 0) if a_parts else torch.zeros((0, 0))
    b = torch.cat(b_parts, 1) if b_parts else torch.zeros((0, 0))
    if limit is not None and a.shape[0] > limit:
        lr = low_rank(b @ a, rank=limit)
        return ModuleFactors(lr.a, lr.b, exact_rank, svd_rank, True)
    return ModuleFactors(a.contiguous(), b.contiguous(), exact_rank, svd_rank, False)
