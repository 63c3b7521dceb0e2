"""Composing preference vectors: θ = θ_base + Σ_i η_i·s_i·φ_i (paper Eq. 5/6).

Three phases, in this order, so a bad request costs nothing:

1. :func:`prepare` resolves every reference and checks everything that needs
   no tensor data (one base fingerprint, ``--base`` matches it, tensor names
   and shapes, duplicates, options, the output path) and raises *one*
   single-line error listing every problem.
2. The output is written into a ``.pvreg-tmp-*`` sibling directory announced
   by a flock-held marker in ``<home>/pending/`` (so ``gc`` can clean it if we
   die), streaming one tensor at a time from memory maps and releasing the
   pages after each tensor (flat RSS).
3. The directory (or file) is renamed into place and the run is recorded in
   the ``compositions`` table.

The per-tensor combination itself is :mod:`pvreg.registry.methods`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pvreg.registry.errors import (
    BaseMismatchError,
    NotFoundError,
    OutputExistsError,
    PvregError,
    SpecError,
    UnsafeOutputError,
    UserError,
)
from pvreg.registry.fsutil import fsync_dir, remove_path, rename_noreplace, temp_sibling
from pvreg.registry.outputs import Protected, output_problems, registry_paths
from pvreg.registry.spec import build_spec
from pvreg.schemas import ParentRef, VectorMeta
from pvreg.schemas.compose import ComposeResult, ComposeSpec, ComposeTerm, CompositionRecord

if TYPE_CHECKING:
    import torch

    from pvreg.registry.api import Registry, ResolvedBase
    from pvreg.registry.methods import MergeMethod
    from pvreg.registry.tensorio import SafetensorsFile, TensorInfo

__all__ = ["ComposeProgress", "ComposeResult", "CompositionRecord", "compose", "list_compositions", "parse_size", "prepare"]

#: Largest finite value of each accumulation dtype: a larger coefficient can only produce Inf.
_ACCUMULATOR_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}
#: ``--dtype`` spellings -> safetensors dtype code.
DTYPE_CODES = {
    "float32": "F32", "fp32": "F32", "f32": "F32",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "bfloat16": "BF16", "bf16": "BF16",
    "float64": "F64", "fp64": "F64", "f64": "F64",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_NAME = "model.safetensors.index.json"
RECORD_NAME = "pvreg-composition.json"
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class ComposeProgress(Protocol):
    """Progress sink: told the totals once, then each finished tensor's output bytes."""

    def start(self, tensors: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


def parse_size(value: str | int) -> int:
    """``5GB`` (10^9), ``500MB``, ``2GiB`` (2^30) or a byte count, as bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE_RE.fullmatch(str(value))
        if m is None:
            raise SpecError(f"invalid shard size {value!r}: expected bytes or a size like 500MB, 2GB, 1GiB")
        unit = (m.group(2) or "").lower().removesuffix("b")
        size = int(float(m.group(1)) * _UNITS[unit])
    if size < 1:
        raise SpecError(f"invalid shard size {value!r}: must be at least 1 byte")
    return size


def dtype_code_of(name: str) -> str:
    code = DTYPE_CODES.get(name.lower())
    if code is None:
        raise SpecError(f"invalid dtype {name!r} (expected float32, bfloat16, float16 or float64)")
    return code


# --------------------------------------------------------------------------- #
# Phase 1: validation
# --------------------------------------------------------------------------- #


class Problems:
    """Collects every validation problem, then raises them as one line.

    The line names at most :attr:`SHOWN` problems and counts the rest, so a
    spec of thousands of bad terms still gives a readable message.
    """

    SHOWN = 10

    def __init__(self) -> None:
        self.items: list[tuple[type[PvregError], str]] = []
        self._seen: set[str] = set()

    def add(self, cls: type[PvregError], message: str) -> None:
        message = " ".join(message.split())
        if message not in self._seen:
            self._seen.add(message)
            self.items.append((cls, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        classes = {c for c, _ in self.items}
        cls = classes.pop() if len(classes) == 1 else SpecError
        shown = "; ".join(m for _, m in self.items[:self.SHOWN])
        more = len(self.items) - self.SHOWN
        raise cls(shown + (f"; and {more} more problem(s)" if more > 0 else ""))


@dataclass
class Input:
    """One resolved term: the version, its blob (mapped lazily) and its final weight."""

    term: ComposeTerm
    meta: VectorMeta
    file: "SafetensorsFile"
    weight: float = 1.0


@dataclass
class Plan:
    """A validated composition, ready to run."""

    spec: ComposeSpec  # resolved: name@version refs with sha256
    given: ComposeSpec  # as the user wrote it
    inputs: list[Input]
    method: "MergeMethod"
    base_fingerprint: str
    base: "ResolvedBase | None"
    dtype_code: str | None
    params: dict[str, Any] = field(default_factory=dict)
    base_files: list[tuple[str, Path]] = field(default_factory=list)  # copied into a model output

    def close(self) -> None:
        for i in self.inputs:
            i.file.close()


def _shape_problems(label: str, infos: dict[str, "TensorInfo"], base: dict[str, "TensorInfo"],
                    problems: Problems, *, limit: int = 3) -> None:
    from pvreg.registry.tensorio import FLOAT_DTYPES

    found: list[str] = []
    for name, info in sorted(infos.items()):
        b = base.get(name)
        if b is None:
            found.append(f"tensor {name!r} does not exist in the base")
        elif b.shape != info.shape:
            found.append(f"tensor {name!r} has shape {list(info.shape)} but the base has {list(b.shape)}")
        elif b.dtype not in FLOAT_DTYPES:
            found.append(f"tensor {name!r} is {b.dtype} in the base, not floating point")
    if found:
        more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
        problems.add(BaseMismatchError, f"{label}: " + ", ".join(found[:limit]) + more)


def _protected(reg: "Registry", base: "ResolvedBase | None", inputs: Sequence[Input]) -> list[Protected]:
    """What this compose must not write over: the registry, the base's files, the vectors' blobs."""
    from pvreg.registry.tensorio import checkpoint_files

    items = registry_paths(reg.settings)
    if base is not None and base.path is not None:
        items.append(Protected(base.path, "the base model"))
        with contextlib.suppress(PvregError):
            items.extend(Protected(f, "a file of the base model") for f in checkpoint_files(base.path))
    items.extend(Protected(i.file.path, f"the blob of {i.meta.ref}") for i in inputs)
    return items


def _check_output(out: Path, *, vector_only: bool, force: bool, problems: Problems) -> None:
    if out.is_symlink() and not force:
        problems.add(OutputExistsError, f"{out}: already exists (a symbolic link; use --force to replace it)")
    elif vector_only:
        if out.is_dir():
            problems.add(OutputExistsError, f"{out}: is a directory; --vector-only writes a .safetensors file")
        elif out.exists() and not force:
            problems.add(OutputExistsError, f"{out}: already exists (use --force to overwrite)")
    elif out.exists() and not force:
        if out.is_dir() and not any(out.iterdir()):
            return
        problems.add(OutputExistsError, f"{out}: already exists and is not empty (use --force to replace it)")


def prepare(
    reg: "Registry",
    spec: ComposeSpec,
    *,
    base: str | os.PathLike[str] | None,
    need_base: bool,
    out: Path | None = None,
    vector_only: bool = False,
    force: bool = False,
    register: str | None = None,
    lookup_base: bool = True,
) -> Plan:
    """Resolve and check everything that needs no tensor data; raise all problems at once."""
    from pvreg.registry.methods import get_method
    from pvreg.registry.refs import check_name
    from pvreg.registry.tensorio import SafetensorsFile

    problems = Problems()
    method = None
    try:
        method = get_method(spec.method, density=spec.density, seed=spec.seed)
    except PvregError as exc:
        problems.add(type(exc), str(exc))
    dtype_code = None
    if spec.dtype is not None:
        try:
            dtype_code = dtype_code_of(spec.dtype)
        except PvregError as exc:
            problems.add(type(exc), str(exc))
    if register is not None:
        try:
            check_name(register)
        except PvregError as exc:
            problems.add(type(exc), str(exc))

    inputs: list[Input] = []
    by_ref: dict[str, str] = {}
    by_sha: dict[str, tuple[str, str]] = {}
    for term, meta in zip(spec.terms, reg.resolve_many([t.ref for t in spec.terms])):
        if isinstance(meta, PvregError):
            problems.add(type(meta), str(meta))
            continue
        if term.sha256 is not None and not meta.sha256.startswith(term.sha256.lower().removeprefix("sha256:")):
            problems.add(SpecError, f"{term.ref!r} resolves to {meta.ref} (sha256 {meta.sha256[:12]}) "
                                    f"but the spec expects sha256 {term.sha256[:12]}")
        if meta.ref in by_ref:
            problems.add(SpecError, f"duplicate vector: {by_ref[meta.ref]!r} and {term.ref!r} both resolve to {meta.ref}")
            continue
        if meta.sha256 in by_sha:
            first_ref, first_meta = by_sha[meta.sha256]
            problems.add(SpecError, f"duplicate vector: {first_ref!r} ({first_meta}) and {term.ref!r} ({meta.ref}) "
                                    f"have the same sha256 {meta.sha256[:12]}")
            continue
        by_ref[meta.ref] = term.ref
        by_sha[meta.sha256] = (term.ref, meta.ref)
        if not math.isfinite(term.coefficient):
            problems.add(SpecError, f"{term.ref!r}: coefficient {term.coefficient} is not finite")
        elif abs(term.coefficient) > _ACCUMULATOR_MAX[spec.accumulate]:
            problems.add(SpecError, f"{term.ref!r}: coefficient {term.coefficient:g} overflows the "
                                    f"{spec.accumulate} accumulator")
        if spec.normalize and not meta.norm > 0:
            problems.add(SpecError, f"{term.ref!r}: cannot --normalize {meta.ref}, its norm is 0")
        path = reg.blobs.path(meta.sha256)
        try:
            file = SafetensorsFile(path)
        except PvregError:
            problems.add(NotFoundError, f"{meta.ref}: blob sha256:{meta.sha256[:12]} is missing or damaged (run pvreg verify)")
            continue
        scale = (1.0 / meta.norm) if spec.normalize and meta.norm > 0 else 1.0
        inputs.append(Input(term, meta, file, term.coefficient * meta.sign * scale))

    fps = sorted({i.meta.base_fingerprint for i in inputs})
    if len(fps) > 1:
        listing = ", ".join(f"{i.meta.ref} -> {i.meta.base_fingerprint[:16]}" for i in inputs)
        problems.add(BaseMismatchError, f"the vectors were made for different bases ({listing})")
    expected = fps[0] if len(fps) == 1 else None

    resolved = None
    if base is not None:
        try:
            resolved = reg.resolve_base(base)
        except PvregError as exc:
            problems.add(type(exc), str(exc))
        else:
            if expected is not None and resolved.fingerprint != expected:
                origins = ", ".join(f"{i.term.ref} -> {i.meta.ref}" for i in inputs)
                problems.add(BaseMismatchError, f"base mismatch: --base {os.fspath(base)} has fingerprint "
                                                f"{resolved.fingerprint[:16]} but the vectors expect {expected[:16]} ({origins})")
                resolved = None
            elif need_base and resolved.infos is None:
                problems.add(NotFoundError, f"--base {os.fspath(base)}: no local copy of this base is known; "
                                            "give the model directory")
    elif expected is not None and (need_base or lookup_base):
        info = reg.base_info(expected)
        if info is not None and info.local_path and Path(info.local_path).exists():
            try:
                candidate = reg.resolve_base(info.local_path)
            except PvregError:
                candidate = None
            if candidate is not None and candidate.fingerprint == expected:
                resolved = candidate
            elif need_base:
                problems.add(BaseMismatchError, f"no --base given and the registry's copy of base {expected[:16]} "
                                                f"at {info.local_path} no longer has that fingerprint")
        elif need_base:
            problems.add(NotFoundError, f"no --base given and the registry knows no local path for base "
                                        f"{expected[:16]}; pass --base DIR")

    if resolved is not None and resolved.infos is not None:
        for i in inputs:
            _shape_problems(f"{i.meta.ref}", i.file.infos, resolved.infos, problems)  # type: ignore[arg-type]
    else:
        shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
        for i in inputs:
            for name, info in i.file.infos.items():
                seen = shapes.setdefault(name, (i.meta.ref, info.shape))
                if seen[1] != info.shape:
                    problems.add(BaseMismatchError, f"tensor {name!r} has shape {list(seen[1])} in {seen[0]} "
                                                    f"but {list(info.shape)} in {i.meta.ref}")
    extra_files: list[tuple[str, Path]] = []
    if need_base and resolved is not None and resolved.path is not None and resolved.path.is_dir():
        extra_files, found = base_files(resolved.path)
        for message in found:
            problems.add(UserError, message)
    if out is not None:
        unsafe = output_problems(out, _protected(reg, resolved, inputs))
        for message in unsafe:
            problems.add(UnsafeOutputError, message)
        if not unsafe:
            _check_output(out, vector_only=vector_only, force=force, problems=problems)
    try:
        problems.raise_if_any()
    except PvregError:
        for i in inputs:
            i.file.close()
        raise
    assert method is not None and expected is not None
    record = method.record()
    resolved_spec = ComposeSpec(
        terms=[ComposeTerm(ref=i.meta.ref, coefficient=i.term.coefficient, sha256=i.meta.sha256) for i in inputs],
        method=method.name,
        density=record.get("density"),
        seed=record.get("seed"),
        normalize=spec.normalize,
        accumulate=spec.accumulate,
        dtype=spec.dtype,
    )
    return Plan(resolved_spec, spec, inputs, method, expected, resolved, dtype_code,
                {k: v for k, v in record.items() if k != "method"}, extra_files)


# --------------------------------------------------------------------------- #
# Phase 2: computing one tensor
# --------------------------------------------------------------------------- #


def combined_delta(plan: Plan, name: str, users: Sequence[Input], part: slice | None = None) -> "torch.Tensor":
    """Σ η_i·s_i·φ_i for one tensor (or the method's variant), in the accumulation dtype.

    ``part``: only that slice of the flattened tensor (elementwise methods only).
    """
    import torch

    acc = getattr(torch, plan.spec.accumulate)
    deltas = [(u.file.tensor(name) if part is None else u.file.tensor(name).reshape(-1)[part]).to(acc)
              for u in users]
    return plan.method.combine(
        deltas, [u.weight for u in users], tensor_name=name, keys=[u.meta.sha256 for u in users]
    )


#: Elements per slice for elementwise (``linear``) methods: the float32 temporaries
#: (4 MiB each) stay in cache and are reused from the heap instead of several
#: tensor-sized allocations (fresh, zero-filled pages each time) per tensor, which
#: also keeps peak RSS lower.  Measured here with 2 threads, 2^18-2^20 ran twice
#: as fast as 2^22; much smaller slices lose to per-op overhead (every torch op is
#: a parallel region, and on a busy machine tiny regions wait on descheduled
#: threads).  Bit-identical whatever the slice size.
SLICE_ELEMENTS = 1 << 20


def merged_tensor(plan: Plan, name: str, users: Sequence[Input], base: "torch.Tensor",
                  out_dtype: "torch.dtype") -> "torch.Tensor":
    """θ_base + Δ for one tensor, accumulated in ``plan.spec.accumulate``, cast to ``out_dtype``."""
    import torch

    numel = base.numel()
    if plan.method.name != "linear" or numel <= SLICE_ELEMENTS:
        delta = combined_delta(plan, name, users)
        delta.add_(base)  # θ = θ_base + Δ, in the accumulation dtype
        return check_finite(name, delta.to(out_dtype))
    out = torch.empty(base.shape, dtype=out_dtype)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    for start in range(0, numel, SLICE_ELEMENTS):
        part = slice(start, min(start + SLICE_ELEMENTS, numel))
        delta = combined_delta(plan, name, users, part)
        delta.add_(flat_base[part])
        check_finite(name, flat_out[part].copy_(delta))
        del delta
    return out


def check_finite(name: str, t: "torch.Tensor") -> "torch.Tensor":
    """``t`` itself, or :class:`SpecError` when it holds Inf/NaN.

    Inputs are finite (checked when added), so a non-finite output means the
    weighted sum overflowed the accumulator or the cast to the output dtype;
    writing it would give a model that silently computes NaN.
    """
    import torch

    if not bool(torch.isfinite(t).all()):
        raise SpecError(f"output tensor {name!r} would contain Inf/NaN as {str(t.dtype).removeprefix('torch.')}: "
                        "the coefficients are too large for that dtype")
    return t


def _release(plan: Plan, name: str, users: Sequence[Input]) -> None:
    for u in users:
        u.file.release(name)


@dataclass
class Written:
    files: list[str]
    entries: list[tuple[str, str, tuple[int, ...], str]]
    total_size: int


def plan_shards(entries: list[tuple[str, str, tuple[int, ...]]], shard_size: int) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Greedy split in name order: a shard closes when the next tensor would overflow it."""
    from pvreg.registry.tensorio import DTYPES

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


def write_model(plan: Plan, tmp: Path, shard_size: int, progress: ComposeProgress | None,
                cache: Any) -> Written:
    """Stream θ_base + Δ into shards under ``tmp``; returns files and per-tensor digests."""
    from pvreg.registry.fingerprint import tensor_digests
    from pvreg.registry.tensorio import (
        DTYPES, FLOAT_DTYPES, StreamingWriter, open_checkpoint, torch_dtype,
    )

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
        for k, shard in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            shard_digests: dict[str, str] = {}
            # Per-tensor digests make the fingerprint; a whole-file hash would go unused.
            with StreamingWriter(tmp / fname, shard, {"format": "pt"}, digest=False) as writer:
                for name, code, shape in shard:
                    info = ckpt.infos[name]
                    u = users[name]
                    if u:
                        out = merged_tensor(plan, name, u, ckpt.tensor(name), torch_dtype(code))
                        _release(plan, name, u)  # the inputs' pages are no longer needed
                        ckpt.release(name)
                        known = None
                    elif code == info.dtype:
                        out = None  # untouched: the base's bytes, bit for bit
                        known = base_digests[name]
                    else:
                        out = ckpt.tensor(name).to(torch_dtype(code))
                        known = None
                    _write_tensor(writer, ckpt, name, out, known, shard_digests)
                    out = None
                    weight_map[name] = fname
                    if progress is not None:
                        progress.advance(_numel(shape) * DTYPES[code][0])
                writer.commit()
            digests.extend((n, c, s, shard_digests[n]) for n, c, s in shard)
            files.append(fname)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        files.append(INDEX_NAME)
    return Written(files, digests, total)


def _write_tensor(writer: Any, ckpt: Any, name: str, out: "torch.Tensor | None", known_digest: str | None,
                  digests: dict[str, str]) -> None:
    """Hash (unless known) and write one output tensor, then drop the base's pages for it.

    (A write-behind thread for this was measured 5% slower on 2 cores: it
    competes with torch's own threads.)
    """
    from pvreg.registry.tensorio import tensor_bytes

    buf = ckpt.raw(name) if out is None else tensor_bytes(out)
    digests[name] = known_digest or hashlib.sha256(buf).hexdigest()
    writer.write(name, buf)
    del buf  # every view of the mapped pages goes before they are released
    ckpt.release(name)


def write_vector(plan: Plan, target: Path, progress: ComposeProgress | None) -> Written:
    """Σ η_i·s_i·φ_i over the union of the vectors' tensors, as one safetensors file.

    Each tensor is stored in ``--dtype`` or else the promotion of the inputs'
    stored dtypes for it (bf16+bf16 -> bf16, bf16+f32 -> f32).
    """
    import torch

    from pvreg.registry.tensorio import DTYPES, StreamingWriter, dtype_code, tensor_bytes, torch_dtype

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


def base_files(src: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The non-weight files of a base dir to copy (config, tokenizer, ...), and the problems found.

    Returns ``(relative name, file to read)`` pairs, recursing into
    sub-directories, without the weights, indexes, hidden files, the base's own
    README.md and composition record.  Symbolic links are followed (a Hub cache
    snapshot is made of them) and their *content* is copied; anything that is
    not a regular file once links are followed (a FIFO would block the copy, a
    device never ends) or a link loop is a problem, found before any output is
    written.
    """
    files: list[tuple[str, Path]] = []
    problems: list[str] = []
    seen_dirs: set[Path] = set()

    def walk(directory: Path, prefix: str) -> None:
        real = directory.resolve()
        if real in seen_dirs:
            problems.append(f"{directory}: directory link loop in the base model directory")
            return
        seen_dirs.add(real)
        for p in sorted(directory.iterdir()):
            name = p.name
            if name.startswith(".") or (not prefix and (name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")
                                                        or name in ("README.md", RECORD_NAME))):
                continue
            try:
                st = p.stat()
            except OSError as exc:
                problems.append(f"{p}: cannot be read ({exc.strerror or exc})")
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(p, f"{prefix}{name}/")
            elif stat.S_ISREG(st.st_mode):
                files.append((prefix + name, p))
            else:
                problems.append(f"{p}: not a regular file (a FIFO, socket or device); remove it from the base directory")

    walk(src, "")
    return files, problems


def copy_base_files(files: Sequence[tuple[str, Path]], dst: Path, dtype: str | None) -> list[str]:
    """Copy :func:`base_files`' list into ``dst``; returns the top-level names written."""
    from pvreg.registry.tensorio import dtype_name

    for rel, src in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    cfg = dst / "config.json"
    if dtype is not None and cfg.is_file():
        # The stored dtype changed: say so, or transformers would upcast/downcast on load.
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(cfg.read_text())
            key = "dtype" if "dtype" in data or "torch_dtype" not in data else "torch_dtype"
            data[key] = dtype_name(dtype)
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return sorted({rel.split("/", 1)[0] for rel, _ in files})


# --------------------------------------------------------------------------- #
# Staging: temp dir + pending marker that gc understands
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def staging(home: Path, out: Path) -> Iterator[tuple[Path, Callable[[dict[str, str]], None]]]:
    """A ``.pvreg-tmp-*`` dir beside ``out``, announced by a locked ``pending/<uuid>.json``.

    The marker is written under a non-matching name, locked, then renamed into
    place, so ``gc`` never sees it unlocked while we live.  Yields the temp dir
    and a function to rewrite the marker (the lock stays held).
    """
    pending = home / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    uid = uuid.uuid4().hex
    part = pending / f"{uid}.json.part"
    marker = pending / f"{uid}.json"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def rewrite(payload: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

        rewrite({"path": str(tmp)})
        os.replace(part, marker)
        tmp.mkdir()
        try:
            yield tmp, rewrite
        finally:
            remove_path(tmp)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        os.close(fd)


def publish_dir(tmp: Path, out: Path, rewrite: Callable[[dict[str, str]], None], *, force: bool) -> None:
    """Rename ``tmp`` to ``out``.

    Without ``force`` the rename must not replace anything: ``out`` was absent
    or an empty directory when the request was checked, and whatever appeared
    there since (another compose, a user's files) is left alone — the finished
    output is then discarded with :class:`OutputExistsError`.  With ``force``
    an existing ``out`` is moved aside first, and dropped once the new one is in.
    """
    if not force:
        if out.is_symlink():
            raise OutputExistsError(_appeared(out))
        try:
            os.rmdir(out)  # the empty directory seen at validation, if it is still there and empty
        except FileNotFoundError:
            pass
        except OSError:  # no longer empty, or no longer a directory
            raise OutputExistsError(_appeared(out)) from None
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise OutputExistsError(_appeared(out)) from None
    elif out.exists() or out.is_symlink():
        aside = temp_sibling(out, "-old")
        # Announce the swap first: if we die between the renames, gc puts the
        # old output back (or, once the new one is in place, drops the old).
        rewrite({"path": str(tmp), "aside": str(aside), "out": str(out)})
        os.replace(out, aside)
        os.replace(tmp, out)
        rewrite({"path": str(aside)})
        remove_path(aside)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)


def publish_file(tmp: Path, out: Path, *, force: bool) -> None:
    """Rename a finished file into place; without ``force`` never over anything that appeared."""
    if force:
        os.replace(tmp, out)
    else:
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise OutputExistsError(_appeared(out)) from None
    fsync_dir(out.parent)


def _appeared(out: Path) -> str:
    return (f"{out}: something was created there while the output was being written; it was left alone "
            "and the new output discarded (use --force to replace it)")


# --------------------------------------------------------------------------- #
# Phase 3: records
# --------------------------------------------------------------------------- #


def _pvreg_version() -> str:
    from pvreg import __version__

    return __version__


def composition_document(plan: Plan, fingerprint: str, written: Written, kind: str) -> dict[str, Any]:
    """``pvreg-composition.json``: everything needed to reproduce the output (no timestamps)."""
    return {
        "pvreg_version": _pvreg_version(),
        "output_kind": kind,
        "output_fingerprint": fingerprint,
        "base_fingerprint": plan.base_fingerprint,
        "method": plan.method.name,
        "params": plan.params,
        "seed": plan.spec.seed,
        "normalize": plan.spec.normalize,
        "accumulate": plan.spec.accumulate,
        "dtype": plan.spec.dtype,
        "inputs": [
            {
                "ref": i.term.ref,
                "resolved": i.meta.ref,
                "sha256": i.meta.sha256,
                "coefficient": i.term.coefficient,
                "sign": i.meta.sign,
                "norm": i.meta.norm,
                "weight": i.weight,
                "dataset": i.meta.dataset,
            }
            for i in plan.inputs
        ],
        "total_size": written.total_size,
        "spec": plan.spec.model_dump(mode="json"),
    }


def record_composition(reg: "Registry", plan: Plan, *, kind: str, out: Path | None, fingerprint: str,
                       version: VectorMeta | None) -> int:
    from pvreg.registry import catalog, db
    from pvreg.registry.models import Composition

    def work(s: Any) -> int:
        version_id = catalog.version_id(s.connection(), version.name, version.version) if version else None
        row = Composition(
            method=plan.method.name, spec=plan.spec.model_dump(mode="json"), base_fingerprint=plan.base_fingerprint,
            output_kind=kind, output_path=str(out.resolve()) if out is not None else None,
            output_fingerprint=fingerprint, result_version_id=version_id, pvreg_version=_pvreg_version(),
        )
        s.add(row)
        s.flush()
        return row.id

    return db.run_transaction(reg._sessions, work)


def list_compositions(reg: "Registry") -> list[CompositionRecord]:
    from pvreg.registry import catalog, db

    with db.read_connection(reg.engine) as conn:
        return catalog.compositions(conn)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def compose(
    reg: "Registry",
    spec: ComposeSpec | str | Sequence[str],
    *,
    base: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    method: str | None = None,
    density: float | None = None,
    seed: int | None = None,
    normalize: bool | None = None,
    accumulate: str | None = None,
    dtype: str | None = None,
    shard_size: str | int = "5GB",
    force: bool = False,
    vector_only: bool = False,
    register: str | None = None,
    progress: ComposeProgress | None = None,
) -> ComposeResult:
    """Merge registered vectors into a base model directory, or into one vector file.

    Options left at ``None`` come from ``spec`` when it is a :class:`ComposeSpec`
    (whose own defaults are ``linear``, no normalisation, ``float32``
    accumulation, output dtype of the base).  ``register`` (vector-only) stores
    the result as a new version with ``kind="compose"``; ``out`` may then be None.

    Raises:
        SpecError, NotFoundError, BaseMismatchError, OutputExistsError: before
        any tensor data is read, listing every problem found in one message.
    """
    full = build_spec(spec, method=method, density=density, seed=seed, normalize=normalize,
                      accumulate=accumulate, dtype=dtype)
    size = parse_size(shard_size)
    out_path = Path(out).expanduser() if out is not None else None
    if register is not None and not vector_only:
        raise SpecError("--register needs --vector-only (a composed model is not a vector)")
    if out_path is None and register is None:
        raise SpecError("--out is required" + (" (or --register NAME)" if vector_only else ""))
    plan = prepare(reg, full, base=base, need_base=not vector_only, out=out_path, vector_only=vector_only,
                   force=force, register=register)
    from pvreg.registry.fingerprint import combine

    try:
        staging_target = out_path if out_path is not None else reg.settings.home / "pending" / "vector.safetensors"
        with staging(reg.settings.home, staging_target) as (tmp, rewrite):
            if vector_only:
                file = tmp / (out_path.name if out_path is not None else "vector.safetensors")
                written = write_vector(plan, file, progress)
                fingerprint = combine(written.entries)
                registered = None
                if out_path is None:
                    assert register is not None  # checked above: one of out/register is given
                    registered = _register(reg, plan, file, register)
                else:
                    publish_file(file, out_path, force=force)
                    if register is not None:
                        try:
                            registered = _register(reg, plan, out_path, register)
                        except BaseException:
                            remove_path(out_path)  # ours: renamed into place just above
                            raise
            else:
                written = write_model(plan, tmp, size, progress, reg.fingerprint_cache)
                fingerprint = combine(written.entries)
                registered = None
                written.files.extend(copy_base_files(plan.base_files, tmp, plan.dtype_code))
                from pvreg.registry.modelcard import render_model_card

                info = reg.base_info(plan.base_fingerprint)
                (tmp / "README.md").write_text(render_model_card(plan, info, fingerprint))
                (tmp / RECORD_NAME).write_text(
                    json.dumps(composition_document(plan, fingerprint, written, "model"), indent=2) + "\n")
                written.files.extend(["README.md", RECORD_NAME])
                assert out_path is not None
                publish_dir(tmp, out_path, rewrite, force=force)
    finally:
        plan.close()
    kind = "vector" if vector_only else "model"
    cid = record_composition(reg, plan, kind=kind, out=out_path, fingerprint=fingerprint, version=registered)
    return ComposeResult(
        out=str(out_path) if out_path is not None else None, output_kind=kind, output_fingerprint=fingerprint,
        files=sorted(written.files), composition_id=cid, registered=registered, spec=plan.spec,
    )


def _register(reg: "Registry", plan: Plan, file: Path, name: str) -> VectorMeta:
    """Store the composed vector as a new version of ``name`` with its lineage."""
    from pvreg.registry.api import NewVersion, ResolvedBase
    from pvreg.registry.ingest import CheckpointSource
    from pvreg.registry.tensorio import open_checkpoint

    with open_checkpoint(file) as ckpt:
        return reg._store(
            CheckpointSource(ckpt, f"composition for {name}"),
            NewVersion(
                name=name, stats=None,  # type: ignore[arg-type]
                base=ResolvedBase(plan.base_fingerprint), kind="compose",
                provenance=plan.spec.model_dump(mode="json"),
                parents=[ParentRef(ref=i.meta.ref, sha256=i.meta.sha256, coefficient=i.term.coefficient)
                         for i in plan.inputs],
                message=f"compose {' '.join(f'{i.meta.ref}:{i.term.coefficient:g}' for i in plan.inputs)}",
            ),
        )
