"""What every checkpoint source shares: the result shape, layout checks, input facts and the storage-error meter."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import InvalidVectorError, UserError, opt
from pvreg.registry.sources.ingest import BlobStats, TensorSource
from pvreg.registry.tensors.checkpoint import Checkpoint
from pvreg.registry.tensors.dtypes import FLOAT_DTYPES, dtype_name, torch_dtype
from pvreg.registry.tensors.fit import fit_problems, misfit_error
from pvreg.registry.tensors.safetensors import TensorInfo, iter_chunks

if TYPE_CHECKING:
    import torch

    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.tensors.fingerprint import FingerprintCache


#: How many omitted (zero-delta) tensor names the provenance lists.
OMITTED_NAMES_CAP = 50


@dataclass
class Made:
    """A vector ready to be written, and what to record about how it was made."""

    source: TensorSource
    kind: str  # "pair" | "finetuned" | "lora"
    provenance: dict[str, Any]
    finish: Callable[[BlobStats], None]
    #: LoRA sources: the exact factors, stored as a second blob (see pvreg.registry.serving.factors).
    factors: Callable[[], TensorSource] | None = None


def _default_dtype(input_codes: set[str]) -> str:
    """float32 when every input is float32 (or float64), else bfloat16."""
    return "F32" if input_codes <= {"F32", "F64"} else "BF16"


def _abs(path: Path) -> str:
    return str(path.expanduser().resolve())


def _require_infos(resolved: ResolvedBase, what: str) -> Mapping[str, TensorInfo]:
    if resolved.infos is None:
        raise UserError(
            f"{what} needs the base model's weights to check tensor names and shapes, but base "
            f"{resolved.fingerprint[:16]} is only known by its fingerprint; give {opt('base')} as a path"
        )
    return resolved.infos


def _shape(info: TensorInfo) -> list[int]:
    return list(info.shape)


def _check_layouts(sides: Sequence[tuple[str, Mapping[str, TensorInfo]]], base: Mapping[str, TensorInfo]) -> None:
    """Every side must have exactly the base's names and shapes; report the first offence by name."""
    base_shapes = {n: b.shape for n, b in base.items()}
    found = [
        (m.tensor, i, label, m)
        for i, (label, infos) in enumerate(sides)
        for m in fit_problems({n: t.shape for n, t in infos.items()}, base_shapes, exact=True)
    ]
    if found:
        _, _, label, first = min(found, key=lambda f: (f[0], f[1]))
        raise misfit_error(label, [first])


def _check_floating(sides: Sequence[tuple[str, Mapping[str, TensorInfo]]]) -> None:
    for label, infos in sides:
        for name in sorted(infos):
            code = infos[name].dtype
            if code not in FLOAT_DTYPES:
                raise InvalidVectorError(
                    f"{label}: tensor {name!r} has dtype {dtype_name(code)}; a vector can only be made "
                    "from floating-point tensors (float32, float16, bfloat16, float64)"
                )


def _hash(ckpt: Checkpoint, cache: FingerprintCache) -> tuple[str, dict[str, str]]:
    """(fingerprint, per-tensor digests) in one cached pass (pages are dropped as hashed)."""
    from pvreg.registry.tensors.fingerprint import checkpoint_entries, combine

    entries = checkpoint_entries(ckpt, cache)
    return combine(entries), {name: digest for name, _, _, digest in entries}


def _checkpoint_facts(path: Path, ckpt: Checkpoint, fingerprint: str) -> dict[str, Any]:
    formats = sorted({"safetensors" if f.suffix == ".safetensors" else "pytorch" for f in ckpt.files})
    return {
        "path": _abs(path),
        "fingerprint": fingerprint,
        "format": formats[0] if len(formats) == 1 else "mixed",
        "files": len(ckpt.files),
        "dtypes": sorted({dtype_name(i.dtype) for i in ckpt.infos.values()}),
    }


def _omitted(names: list[str]) -> dict[str, Any]:
    names = sorted(names)
    return {
        "count": len(names),
        "names": names[:OMITTED_NAMES_CAP],
        "truncated": len(names) > OMITTED_NAMES_CAP,
    }


def _all_zero(label: str, total: int) -> InvalidVectorError:
    return InvalidVectorError(
        f"{label}: all deltas are zero ({total} tensors are bit-identical); there is no vector to store"
    )


@dataclass
class _Meter:
    """Accumulates ‖stored − exact‖² and ‖exact‖² in float64; notices all-zero output."""

    label: str
    stored_code: str
    expected: int
    exact_sq: float = 0.0
    error_sq: float = 0.0
    produced: int = 0
    any_nonzero: bool = False

    def store(self, name: str, exact: torch.Tensor) -> torch.Tensor:
        """Cast the exact delta to the stored dtype, account for it, and return the stored tensor."""
        target = torch_dtype(self.stored_code)
        stored = exact if exact.dtype == target else exact.to(target)
        self.add(name, exact, stored)
        return stored

    def add(self, name: str, exact: torch.Tensor, stored: torch.Tensor) -> None:
        if stored.dtype != exact.dtype:
            for e, s in zip(iter_chunks(exact), iter_chunks(stored), strict=True):
                if not self.add_chunk(name, e, s):
                    break
        self.done(stored)

    def add_chunk(self, name: str, e: torch.Tensor, s: torch.Tensor) -> bool:
        """Account one chunk (exact ``e``, stored ``s`` of another dtype); False: stop metering this tensor.

        Chunks must be those of :func:`iter_chunks`, so the float64 sums come out
        the same whether the meter runs after the cast or fused into it.
        """
        esq, dsq, _ = chunk_error_sums(e, s)
        return self.account(name, esq, dsq, s.dtype)

    def account(self, name: str, esq: float, dsq: float, stored_dtype: torch.dtype) -> bool:
        """Add one chunk's :func:`chunk_error_sums` (in chunk order); False: stop metering this tensor."""
        import torch

        if not math.isfinite(esq):
            return False  # NaN/Inf in the inputs: write_blob reports it
        if not math.isfinite(dsq):
            limit = torch.finfo(stored_dtype).max
            raise InvalidVectorError(
                f"{self.label}: tensor {name!r} has delta values beyond the range of "
                f"{dtype_name(self.stored_code)} (max {limit:g}); store it as float32 or bfloat16"
            )
        self.exact_sq += esq
        self.error_sq += dsq
        return True

    def done(self, stored: torch.Tensor) -> None:
        """One more tensor produced: notice an all-zero vector once the last one is in."""
        if not self.any_nonzero and stored.numel() and bool(stored.any()):
            self.any_nonzero = True
        self.produced += 1
        if self.produced == self.expected and not self.any_nonzero:
            raise InvalidVectorError(
                f"{self.label}: all deltas are zero after casting to {dtype_name(self.stored_code)}; "
                "there is no vector to store"
            )

    @property
    def relative(self) -> float:
        return math.sqrt(self.error_sq / self.exact_sq) if self.exact_sq > 0 else 0.0


def chunk_error_sums(e: torch.Tensor, s: torch.Tensor) -> tuple[float, float, float]:
    """(‖e‖², ‖s − e‖², ‖s‖²) in float64 for one chunk: exact delta ``e``, stored ``s``.

    ‖s‖² comes from the same float64 copy of ``s``, so the extraction pass widens
    the stored chunk once for both the error meter and the blob's norm.
    """
    import torch

    e64 = e.to(torch.float64)
    d = s.to(torch.float64)
    stored_sq = float(torch.dot(d, d))
    d.sub_(e64)
    return float(torch.dot(e64, e64)), float(torch.dot(d, d)), stored_sq


def _finish(meter: _Meter, close: Callable[[], None]) -> Callable[[BlobStats], None]:
    def finish(stats: BlobStats) -> None:
        close()
        stats.extra["storage_relative_error"] = meter.relative

    return finish
