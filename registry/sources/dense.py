"""Dense sources: φ = θ+ − θ− or θft − θbase, streamed one tensor at a time from memory-mapped checkpoints."""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import UserError, opt
from pvreg.registry.sources.diffs import (
    Made,
    _abs,
    _all_zero,
    _check_floating,
    _check_layouts,
    _checkpoint_facts,
    _default_dtype,
    _finish,
    _hash,
    _Meter,
    _omitted,
    _require_infos,
    chunk_error_sums,
)
from pvreg.registry.sources.ingest import tensor_sq_norm
from pvreg.registry.tensors.buffers import OutputBuffers
from pvreg.registry.tensors.checkpoint import Checkpoint, open_checkpoint
from pvreg.registry.tensors.dtypes import DTYPES, dtype_name, torch_dtype
from pvreg.registry.tensors.readahead import Readahead
from pvreg.registry.tensors.safetensors import CHUNK_ELEMENTS, TensorInfo
from pvreg.registry.tensors.workers import Workers, single_threaded_torch, while_importing_torch, widen

if TYPE_CHECKING:
    import torch

    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.tensors.fingerprint import FingerprintCache


@dataclass
class _DiffSource:
    """φ[name] = minuend[name] − subtrahend[name], streamed tensor by tensor."""

    label: str
    minuend: Checkpoint
    subtrahend: Checkpoint
    infos: list[TensorInfo]  # sorted, stored dtype
    meter: _Meter
    resources: ExitStack
    _pending: set[str] = field(default_factory=set)
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _sq: dict[str, float] = field(default_factory=dict)
    _position: dict[str, int] = field(default_factory=dict)
    _readahead: Readahead | None = None
    _workers: Workers = field(default_factory=Workers)
    _buffers: OutputBuffers = field(default_factory=OutputBuffers)  # outputs come back at release()

    def __post_init__(self) -> None:
        self._pending = {i.name for i in self.infos}
        self._shapes = {i.name: i.shape for i in self.infos}
        self._position = {i.name: k for k, i in enumerate(self.infos)}
        self._readahead = Readahead(
            [
                (
                    i.name,
                    self.minuend.infos[i.name].nbytes + self.subtrahend.infos[i.name].nbytes,
                    (self.minuend, self.subtrahend),
                )
                for i in self.infos
            ]
        )

    def plan(self) -> list[TensorInfo]:
        return list(self.infos)

    def tensor(self, name: str) -> torch.Tensor:
        """φ[name] in the stored dtype, in one fused pass per cache-sized chunk.

        Per chunk of :func:`iter_chunks` size, on a small worker pool
        (:mod:`~pvreg.registry.tensors.workers`): the exact difference in float32
        (float64 if an input is float64) into a reused buffer, the one cast into
        the output, the storage-error sums and the stored chunk's float64 squared
        norm (handed to ``write_blob`` through :meth:`sq_norm`).  The per-chunk
        sums are then added up in chunk order, and errors raised for the first
        offending chunk, exactly as casting, metering and norming one after the
        other did, so every stored byte and recorded figure is unchanged.
        """
        import torch

        if self._readahead is not None:
            self._readahead.reached(self._position[name])
        a = self.minuend.tensor(name).reshape(-1)
        b = self.subtrahend.tensor(name).reshape(-1)
        compute = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        target = torch_dtype(self.meter.stored_code)
        numel = a.numel()
        out = self._buffers.take(name, (numel,), target)
        cast = target != compute
        sums: dict[int, tuple[float, float, float]] = {}

        def job(k: int, part: slice) -> None:
            stored = out[part]
            n = part.stop - part.start
            e = self._workers.scratch(compute, n) if cast else stored
            e.copy_(a[part])
            e.sub_(widen(b[part], self._workers.scratch(compute, n, slot=1)))  # exact for float32/bf16/f16
            if cast:
                stored.copy_(e)  # the one cast to the stored dtype
                sums[k] = chunk_error_sums(e, stored)
            else:
                c = stored.to(torch.float64)
                sums[k] = (0.0, 0.0, float(torch.dot(c, c)))

        with single_threaded_torch():
            self._workers.run(numel, job, CHUNK_ELEMENTS)
        metering, total = cast, 0.0
        for k, start in enumerate(range(0, numel, CHUNK_ELEMENTS)):
            esq, dsq, sq = sums[k]
            if metering:
                metering = self.meter.account(name, esq, dsq, target)
            if not math.isfinite(sq):
                # tensor_sq_norm names the problem (NaN/Inf, or a float64 overflow) for this chunk.
                tensor_sq_norm(out[start : start + CHUNK_ELEMENTS], label=self.label, name=name)
            total += sq
        self.meter.done(out)
        self._sq[name] = total
        return out.view(self._shapes[name])

    def sq_norm(self, name: str) -> float | None:
        """The float64 squared norm :meth:`tensor` computed on the way, if it did."""
        return self._sq.pop(name, None)

    def raw(self, name: str) -> memoryview | None:
        return None

    def release(self, name: str) -> None:
        self.minuend.release(name)
        self.subtrahend.release(name)
        self._buffers.give(name)
        self._pending.discard(name)
        if not self._pending:
            self.close()

    def close(self) -> None:
        self._workers.close()
        self.resources.close()


def _dense(
    resolved: ResolvedBase,
    kind: str,
    minuend: tuple[str, Path],
    subtrahend: tuple[str, Path | None],
    stored: str | None,
    cache: FingerprintCache,
) -> Made:
    base_infos = _require_infos(
        resolved, f"{opt('positive')}/{opt('negative')}" if kind == "pair" else f"{opt('finetuned')}"
    )
    stack = ExitStack()
    try:
        (m_role, m_path), (s_role, s_path) = minuend, subtrahend
        m_ckpt = stack.enter_context(open_checkpoint(m_path))
        if s_path is None:  # finetuned: the subtrahend is the base itself
            if resolved.path is None:
                raise UserError(f"{opt('finetuned')} needs the base model's weights; give {opt('base')} as a path")
            s_path = resolved.path
        s_ckpt = stack.enter_context(open_checkpoint(s_path))
        m_label, s_label = f"--{m_role} {m_path}", (f"--{s_role} {s_path}" if s_role != "base" else f"base {s_path}")

        # Structural checks, no tensor data read yet.
        sides = [(m_label, m_ckpt.infos), (s_label, s_ckpt.infos)]
        _check_layouts(sides, base_infos)
        _check_floating(sides)
        # Both checkpoints are inputs (for --finetuned the base is the subtrahend).
        input_codes = {i.dtype for i in m_ckpt.infos.values()} | {i.dtype for i in s_ckpt.infos.values()}
        code = stored or _default_dtype(input_codes)

        # One (cached) hashing pass: input fingerprints + which deltas are exactly zero; it runs
        # while torch imports, which the diff pass needs next.
        (m_fp, m_dig), (s_fp, s_dig) = while_importing_torch(lambda: (_hash(m_ckpt, cache), _hash(s_ckpt, cache)))
        names = sorted(base_infos)
        zero = [n for n in names if m_ckpt.infos[n].dtype == s_ckpt.infos[n].dtype and m_dig[n] == s_dig[n]]
        zero_set = set(zero)
        kept = [n for n in names if n not in zero_set]
        label = f"{m_path} - {s_path}"
        if not kept:
            raise _all_zero(label, len(names))
        item = DTYPES[code][0]
        infos = [TensorInfo(n, code, base_infos[n].shape, math.prod(base_infos[n].shape) * item) for n in kept]
        meter = _Meter(label, code, len(infos))
        source = _DiffSource(label, m_ckpt, s_ckpt, infos, meter, stack.pop_all())
    except BaseException:
        stack.close()
        raise

    provenance: dict[str, Any] = {
        "source": kind,
        "input_format": "checkpoint",
        m_role: _checkpoint_facts(m_path, m_ckpt, m_fp),
    }
    if kind == "pair":
        provenance[s_role] = _checkpoint_facts(s_path, s_ckpt, s_fp)
        provenance["base"] = {
            "fingerprint": resolved.fingerprint,
            "path": str(resolved.path) if resolved.path else None,
        }
    else:
        provenance["base"] = {"fingerprint": s_fp, "path": _abs(s_path)}
    provenance |= {
        "formula": "positive - negative" if kind == "pair" else "finetuned - base",
        "compute_dtype": "float64" if "F64" in input_codes else "float32",
        "stored_dtype": dtype_name(code),
        "stored_dtype_source": "--dtype" if stored else "default",
        "num_tensors_in_base": len(names),
        "omitted_zero_tensors": _omitted(zero),
    }
    return Made(source=source, kind=kind, provenance=provenance, finish=_finish(meter, source.close))


def _dense_pair(resolved: ResolvedBase, pos: Path, neg: Path, stored: str | None, cache: FingerprintCache) -> Made:
    return _dense(resolved, "pair", ("positive", pos), ("negative", neg), stored, cache)


def _dense_finetuned(resolved: ResolvedBase, ft: Path, stored: str | None, cache: FingerprintCache) -> Made:
    return _dense(resolved, "finetuned", ("finetuned", ft), ("base", None), stored, cache)
