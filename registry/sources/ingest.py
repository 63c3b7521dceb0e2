"""Turning tensors into a validated, canonical, content-addressed blob.

Every way of making a vector (a delta file, a checkpoint pair, a LoRA
adapter, a composition) ends here: a :class:`TensorSource` says which tensors
there will be, then yields them one at a time; :func:`write_blob` checks each
one (floating dtype, finite values), accumulates float64 norms, and streams its
bytes into the store.  Memory stays at a few tensors (the one being made, the
ones being hashed and written behind it) plus a reduction chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pvreg.registry.errors import (
    InvalidVectorError,
)
from pvreg.registry.storage.blobstore import BlobStore
from pvreg.registry.tensors.checkpoint import Checkpoint
from pvreg.registry.tensors.dtypes import FLOAT_DTYPES, dtype_name
from pvreg.registry.tensors.fit import fit_problems, misfit_error
from pvreg.registry.tensors.safetensors import StreamingWriter, TensorInfo, iter_chunks
from pvreg.registry.tensors.workers import WriteBehind

if TYPE_CHECKING:
    import torch


class TensorSource(Protocol):
    """What :func:`write_blob` consumes: a fixed plan, then tensors in plan order."""

    label: str

    def plan(self) -> list[TensorInfo]: ...

    def tensor(self, name: str) -> torch.Tensor: ...

    def raw(self, name: str) -> memoryview | None:
        """The tensor's bytes if they can be copied verbatim (fast path), else None."""
        ...

    def release(self, name: str) -> None:
        """Called once the tensor is written: drop its input pages and reuse its memory (bounded RSS).

        The tensor (and every view of it) must not be used afterwards.
        """
        ...


@dataclass
class CheckpointSource:
    """A delta file as given: tensors are copied byte for byte."""

    checkpoint: Checkpoint
    label: str

    def plan(self) -> list[TensorInfo]:
        return [self.checkpoint.infos[n] for n in self.checkpoint.names()]

    def tensor(self, name: str) -> torch.Tensor:
        return self.checkpoint.tensor(name)

    def raw(self, name: str) -> memoryview | None:
        return self.checkpoint.raw(name)

    def release(self, name: str) -> None:
        self.checkpoint.release(name)


@dataclass
class BlobStats:
    sha256: str
    size_bytes: int
    norm: float
    tensor_norms: dict[str, float]
    dtype: str
    num_tensors: int
    num_params: int
    extra: dict[str, object] = field(default_factory=dict)
    # True when this write published the blob (it was not in the store before), so a
    # caller whose commit then fails knows the blob is its own to remove again.
    created: bool = False


def check_plan(plan: list[TensorInfo], label: str, base: Mapping[str, TensorInfo] | None) -> None:
    """Structural checks that need no tensor data; run before any heavy I/O."""
    if not plan:
        raise InvalidVectorError(f"{label}: contains no tensors")
    for info in plan:
        if info.dtype not in FLOAT_DTYPES:
            raise InvalidVectorError(
                f"{label}: tensor {info.name!r} has dtype {dtype_name(info.dtype)}; "
                "preference vectors must be floating point (float32, float16, bfloat16, float64)"
            )
    if base is not None:
        check_against_base(plan, label, base)


def check_against_base(
    plan: list[TensorInfo], label: str, base: Mapping[str, TensorInfo], *, base_label: str = "the base"
) -> None:
    misfits = fit_problems({i.name: i.shape for i in plan}, {n: b.shape for n, b in base.items()})
    if misfits:
        raise misfit_error(label, misfits, base_label=base_label)


def tensor_sq_norm(t: torch.Tensor, *, label: str, name: str) -> float:
    """Sum of squares in float64, chunked; raises on NaN/Inf."""
    import torch

    total = 0.0
    for chunk in iter_chunks(t):
        c = chunk.to(torch.float64)
        s = float(torch.dot(c, c))
        if not math.isfinite(s):
            if not bool(torch.isfinite(c).all()):
                raise InvalidVectorError(f"{label}: tensor {name!r} contains NaN or Inf values")
            raise InvalidVectorError(f"{label}: tensor {name!r} overflows float64 in its norm")
        total += s
    return total


def _write_tensor(writer: StreamingWriter, source: TensorSource, name: str, t: torch.Tensor) -> None:
    """Write one tensor (its raw bytes where the source has them), then let the source drop its inputs.

    Runs on the :class:`~pvreg.registry.tensors.workers.WriteBehind` thread, in plan order.
    """
    raw = source.raw(name)
    writer.write(name, raw if raw is not None else t)
    del t, raw  # every view of mapped pages goes before they are released
    source.release(name)


def write_blob(
    source: TensorSource,
    store: BlobStore,
    *,
    progress: Callable[[int], None] | None = None,
    expect_sha256: str | None = None,
) -> BlobStats:
    """Stream ``source`` into the store; the blob is published only if every tensor passes.

    Callers hold ``store.writer_lock()`` until the version row referencing the
    blob is committed, so ``gc`` cannot remove it in between.
    """
    plan = sorted(source.plan(), key=lambda i: i.name)
    entries = [(i.name, i.dtype, i.shape) for i in plan]
    store.ensure()
    norms: dict[str, float] = {}
    total = 0.0
    # behind exits first: no write is in flight when the writer commits or aborts.
    with StreamingWriter(store.staging, entries, {"format": "pt"}) as writer, WriteBehind() as behind:
        with behind.scope():
            for info in plan:
                t = source.tensor(info.name)
                # A source that computed the norm in its own pass (dense diffs) saves a pass here.
                known = getattr(source, "sq_norm", None)
                sq = known(info.name) if known is not None else None
                if sq is None:
                    sq = tensor_sq_norm(t, label=source.label, name=info.name)
                norms[info.name] = math.sqrt(sq)
                total += sq
                # Hashing (the blob's sha256) and writing overlap the next tensor's computation.
                behind.submit(_write_tensor, writer, source, info.name, t)
                del t
                if progress is not None:
                    progress(info.nbytes)
        digest = writer.finish()
        if expect_sha256 is not None and digest != expect_sha256:
            raise InvalidVectorError(
                f"{source.label}: tensor content has sha256 {digest[:16]} but its embedded "
                f"metadata says {expect_sha256[:16]}; the file was modified"
            )
        target = store.path(digest)
        created = not target.exists()
        if created:
            writer.commit(target)
        else:
            writer.abort()  # identical content is already stored
    dtypes = {i.dtype for i in plan}
    return BlobStats(
        sha256=digest,
        size_bytes=writer.size,
        norm=math.sqrt(total),
        tensor_norms=norms,
        dtype=dtype_name(next(iter(dtypes))) if len(dtypes) == 1 else "mixed",
        num_tensors=len(plan),
        num_params=sum(i.numel for i in plan),
        created=created,
    )
