"""Writing a composition: model shards (with their index) or one vector file, streamed tensor by tensor.

Shard headers are computed up front, so each output tensor is written as soon
as it is computed and its input pages are released right after.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pvreg.registry.merge.engine import (
    Workers,
    _release,
    check_finite,
    combined_delta,
    merged_tensor,
    single_threaded_torch,
)
from pvreg.registry.merge.plan import Plan
from pvreg.registry.tensors.buffers import OutputBuffers
from pvreg.registry.tensors.hfnames import SAFETENSORS_INDEX
from pvreg.registry.tensors.workers import WriteBehind

if TYPE_CHECKING:
    import torch


class ComposeProgress(Protocol):
    """Progress sink: told the totals once, then each finished tensor's output bytes."""

    def start(self, tensors: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass
class Written:
    files: list[str]
    entries: list[tuple[str, str, tuple[int, ...], str]]
    total_size: int


def plan_shards(
    entries: list[tuple[str, str, tuple[int, ...]]], shard_size: int
) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Greedy split in name order: a shard closes when the next tensor would overflow it."""
    from pvreg.registry.tensors.dtypes import DTYPES

    shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for entry in entries:
        nbytes = _numel(entry[2]) * DTYPES[entry[1]][0]
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_model(
    plan: Plan, tmp: Path, shard_size: int, progress: ComposeProgress | None, cache: Any, *, device: Any = None
) -> Written:
    """Stream θ_base + Δ into shards under ``tmp``; returns files and per-tensor digests.

    ``device``: a CUDA ``torch.device`` to combine on (``linear``), or None for the CPU.
    """
    from pvreg.registry.merge.cuda import Staging
    from pvreg.registry.tensors.checkpoint import open_checkpoint
    from pvreg.registry.tensors.dtypes import DTYPES, FLOAT_DTYPES, torch_dtype
    from pvreg.registry.tensors.fingerprint import tensor_digests
    from pvreg.registry.tensors.readahead import Prefetchable, Readahead
    from pvreg.registry.tensors.safetensors import StreamingWriter

    assert plan.base is not None and plan.base.path is not None
    with open_checkpoint(plan.base.path) as ckpt:
        base_digests = tensor_digests(ckpt, cache)
        names = sorted(ckpt.infos)
        users = {n: [i for i in plan.inputs if n in i.file.infos] for n in names}
        entries = []
        for n in names:
            code = ckpt.infos[n].dtype
            if plan.dtype_code is not None and code in FLOAT_DTYPES:
                code = plan.dtype_code
            entries.append((n, code, ckpt.infos[n].shape))
        shards = plan_shards(entries, shard_size)
        total = sum(_numel(s) * DTYPES[c][0] for _, c, s in entries)
        if progress is not None:
            progress.start(len(entries), total)
        files: list[str] = []
        digests: list[tuple[str, str, tuple[int, ...], str]] = []
        weight_map: dict[str, str] = {}
        sequence: list[tuple[str, int, tuple[Prefetchable, ...]]] = [
            (
                n,
                ckpt.infos[n].nbytes + sum(u.file.infos[n].nbytes for u in users[n]),
                (ckpt, *(u.file for u in users[n])),
            )
            for shard in shards
            for n, _, _ in shard
        ]
        readahead = Readahead(sequence)
        position = 0
        on = (device, Staging()) if device is not None else None
        buffers = OutputBuffers()
        with single_threaded_torch(), Workers() as workers, WriteBehind() as behind:
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                shard_digests: dict[str, str] = {}
                # Per-tensor digests make the fingerprint; a whole-file hash would go unused.
                # behind.scope() exits first: no write is in flight when the writer commits or aborts.
                with StreamingWriter(tmp / fname, shard, {"format": "pt"}, digest=False) as writer, behind.scope():
                    for name, code, shape in shard:
                        readahead.reached(position)
                        position += 1
                        info = ckpt.infos[name]
                        u = users[name]
                        if u:
                            out = merged_tensor(
                                plan, name, u, ckpt.tensor(name), torch_dtype(code), workers, on, buffers
                            )
                            _release(plan, name, u)  # the inputs' pages are no longer needed
                            ckpt.release(name)
                            known = None
                        elif code == info.dtype:
                            out = None  # untouched: the base's bytes, bit for bit
                            known = base_digests[name]
                        else:
                            out = ckpt.tensor(name).to(torch_dtype(code))
                            known = None
                        # Hashing and writing overlap the next tensor's computation.
                        behind.submit(_write_tensor, writer, ckpt, name, out, known, shard_digests, buffers)
                        out = None
                        weight_map[name] = fname
                        if progress is not None:
                            progress.advance(_numel(shape) * DTYPES[code][0])
                    behind.drain()
                    writer.commit()
                digests.extend((n, c, s, shard_digests[n]) for n, c, s in shard)
                files.append(fname)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        files.append(SAFETENSORS_INDEX)
    return Written(files, digests, total)


def _write_tensor(
    writer: Any,
    ckpt: Any,
    name: str,
    out: torch.Tensor | None,
    known_digest: str | None,
    digests: dict[str, str],
    buffers: OutputBuffers,
) -> None:
    """Hash (unless known) and write one output tensor, then drop the base's pages and reuse its buffer.

    Runs on the :class:`WriteBehind` thread (hashlib and ``write`` release the GIL).
    """
    from pvreg.registry.tensors.safetensors import tensor_bytes

    buf = ckpt.raw(name) if out is None else tensor_bytes(out)
    digests[name] = known_digest or hashlib.sha256(buf).hexdigest()
    writer.write(name, buf)
    del buf, out  # every view of the mapped pages goes before they are released
    ckpt.release(name)
    buffers.give(name)


def write_vector(plan: Plan, target: Path, progress: ComposeProgress | None) -> Written:
    """Σ η_i·s_i·φ_i over the union of the vectors' tensors, as one safetensors file.

    Each tensor is stored in ``--dtype`` or else the promotion of the inputs'
    stored dtypes for it (bf16+bf16 -> bf16, bf16+f32 -> f32).
    """
    import torch

    from pvreg.registry.tensors.dtypes import DTYPES, dtype_code, torch_dtype
    from pvreg.registry.tensors.safetensors import StreamingWriter, tensor_bytes

    names = sorted({n for i in plan.inputs for n in i.file.infos})
    users = {n: [i for i in plan.inputs if n in i.file.infos] for n in names}
    entries = []
    for n in names:
        if plan.dtype_code is not None:
            code = plan.dtype_code
        else:
            dt = torch_dtype(users[n][0].file.infos[n].dtype)
            for u in users[n][1:]:
                dt = torch.promote_types(dt, torch_dtype(u.file.infos[n].dtype))
            code = dtype_code(dt)
        entries.append((n, code, users[n][0].file.infos[n].shape))
    total = sum(_numel(s) * DTYPES[c][0] for _, c, s in entries)
    if progress is not None:
        progress.start(len(entries), total)
    digests = []
    with StreamingWriter(target, entries, {"format": "pt"}) as writer:
        for name, code, shape in entries:
            out = check_finite(name, combined_delta(plan, name, users[name]).to(torch_dtype(code)))
            buf = tensor_bytes(out)
            digests.append((name, code, shape, hashlib.sha256(buf).hexdigest()))
            writer.write(name, buf)
            del buf, out
            _release(plan, name, users[name])
            if progress is not None:
                progress.advance(_numel(shape) * DTYPES[code][0])
        writer.commit()
    return Written([target.name], digests, total)
