"""Validating a composition before any tensor data is read: the :class:`Plan`.

:func:`prepare` resolves every reference and checks everything that needs no
tensor data (one base fingerprint, the base matches it, tensor names and
shapes, duplicates, coefficients, options, the output path, the base
directory's files) and raises every problem found at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import (
    BaseMismatchError,
    NotFoundError,
    OutputExistsError,
    PvregError,
    SpecError,
    UnsafeOutputError,
    UserError,
    opt,
    raise_problems,
)
from pvreg.registry.merge.basefiles import base_files
from pvreg.registry.storage.outputs import Protected, output_problems, registry_paths
from pvreg.registry.tensors.dtypes import parse_dtype
from pvreg.registry.tensors.fit import fit_problems, misfit_error
from pvreg.schemas.compose import ComposeSpec, ComposeTerm
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.merge.methods import MergeMethod
    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.storage.store import Store
    from pvreg.registry.tensors.safetensors import SafetensorsFile, TensorInfo


#: Largest finite value of each accumulation dtype: a larger coefficient can only produce Inf.
_ACCUMULATOR_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


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


class Problems:
    """Collects every validation problem, then raises them together (see :func:`raise_problems`).

    Each problem keeps its own class and fields, so a caller can still catch
    ``NotFoundError`` from a mix of problems, and the CLI can spell its options.
    """

    def __init__(self) -> None:
        self.items: list[PvregError] = []

    def add(self, cls: type[PvregError], message: str, **fields: Any) -> None:
        self.items.append(cls(message, **fields))

    def add_error(self, exc: PvregError) -> None:
        self.items.append(exc)

    def raise_if_any(self) -> None:
        raise_problems(self.items)


@dataclass
class Input:
    """One resolved term: the version, its blob (mapped lazily) and its final weight."""

    term: ComposeTerm
    meta: VectorMeta
    file: SafetensorsFile
    weight: float = 1.0


@dataclass
class Plan:
    """A validated composition, ready to run."""

    spec: ComposeSpec  # resolved: name@version refs with sha256
    given: ComposeSpec  # as the user wrote it
    inputs: list[Input]
    method: MergeMethod
    base_fingerprint: str
    base: ResolvedBase | None
    dtype_code: str | None
    params: dict[str, Any] = field(default_factory=dict)
    base_files: list[tuple[str, Path]] = field(default_factory=list)  # copied into a model output

    def close(self) -> None:
        for i in self.inputs:
            i.file.close()


def _shape_problems(
    label: str, infos: Mapping[str, TensorInfo], base: Mapping[str, TensorInfo], problems: Problems, *, limit: int = 3
) -> None:
    misfits = fit_problems(
        {n: i.shape for n, i in infos.items()},
        {n: b.shape for n, b in base.items()},
        base_dtypes={n: b.dtype for n, b in base.items()},
    )
    if misfits:
        problems.add_error(misfit_error(label, misfits, limit=limit))


def _protected(store: Store, base: ResolvedBase | None, inputs: Sequence[Input]) -> list[Protected]:
    """What this compose must not write over: the registry, the base's files, the vectors' blobs."""
    from pvreg.registry.tensors.checkpoint import checkpoint_files

    items = registry_paths(store.settings)
    if base is not None and base.path is not None:
        items.append(Protected(base.path, "the base model"))
        with contextlib.suppress(PvregError):
            items.extend(Protected(f, "a file of the base model") for f in checkpoint_files(base.path))
    items.extend(Protected(i.file.path, f"the blob of {i.meta.ref}") for i in inputs)
    return items


def _check_output(out: Path, *, vector_only: bool, force: bool, problems: Problems) -> None:
    if out.is_symlink() and not force:
        problems.add(
            OutputExistsError, f"{out}: already exists (a symbolic link; use {opt('force', True)} to replace it)"
        )
    elif vector_only:
        if out.is_dir():
            problems.add(
                OutputExistsError, f"{out}: is a directory; {opt('vector_only', True)} writes a .safetensors file"
            )
        elif out.exists() and not force:
            problems.add(OutputExistsError, f"{out}: already exists (use {opt('force', True)} to overwrite)")
    elif out.exists() and not force:
        if out.is_dir() and not any(out.iterdir()):
            return
        problems.add(
            OutputExistsError, f"{out}: already exists and is not empty (use {opt('force', True)} to replace it)"
        )


def prepare(
    store: Store,
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
    from pvreg.registry.merge.methods import get_method
    from pvreg.registry.refs import check_name
    from pvreg.registry.tensors.safetensors import SafetensorsFile

    problems = Problems()
    method = None
    try:
        method = get_method(spec.method, density=spec.density, seed=spec.seed)
    except PvregError as exc:
        problems.add_error(exc)
    dtype_code = None
    if spec.dtype is not None:
        try:
            dtype_code = parse_dtype(spec.dtype)
        except PvregError as exc:
            problems.add_error(exc)
    if register is not None:
        try:
            check_name(register)
        except PvregError as exc:
            problems.add_error(exc)

    inputs: list[Input] = []
    by_ref: dict[str, str] = {}
    by_sha: dict[str, tuple[str, str]] = {}
    for term, meta in zip(spec.terms, store.resolve_many([t.ref for t in spec.terms]), strict=True):
        if isinstance(meta, PvregError):
            problems.add_error(meta)
            continue
        if term.sha256 is not None and not meta.sha256.startswith(term.sha256.lower().removeprefix("sha256:")):
            problems.add(
                SpecError,
                f"{term.ref!r} resolves to {meta.ref} (sha256 {meta.sha256[:12]}) "
                f"but the spec expects sha256 {term.sha256[:12]}",
            )
        if meta.ref in by_ref:
            problems.add(
                SpecError, f"duplicate vector: {by_ref[meta.ref]!r} and {term.ref!r} both resolve to {meta.ref}"
            )
            continue
        if meta.sha256 in by_sha:
            first_ref, first_meta = by_sha[meta.sha256]
            problems.add(
                SpecError,
                f"duplicate vector: {first_ref!r} ({first_meta}) and {term.ref!r} ({meta.ref}) "
                f"have the same sha256 {meta.sha256[:12]}",
            )
            continue
        by_ref[meta.ref] = term.ref
        by_sha[meta.sha256] = (term.ref, meta.ref)
        if not math.isfinite(term.coefficient):
            problems.add(SpecError, f"{term.ref!r}: coefficient {term.coefficient} is not finite")
        elif abs(term.coefficient) > _ACCUMULATOR_MAX[spec.accumulate]:
            problems.add(
                SpecError, f"{term.ref!r}: coefficient {term.coefficient:g} overflows the {spec.accumulate} accumulator"
            )
        if spec.normalize and not meta.norm > 0:
            problems.add(SpecError, f"{term.ref!r}: cannot {opt('normalize', True)} {meta.ref}, its norm is 0")
        path = store.blobs.path(meta.sha256)
        try:
            file = SafetensorsFile(path)
        except PvregError:
            problems.add(
                NotFoundError, f"{meta.ref}: blob sha256:{meta.sha256[:12]} is missing or damaged (run pvreg verify)"
            )
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
            resolved = store.resolve_base(base)
        except PvregError as exc:
            problems.add_error(exc)
        else:
            if expected is not None and resolved.fingerprint != expected:
                origins = ", ".join(f"{i.term.ref} -> {i.meta.ref}" for i in inputs)
                problems.add(
                    BaseMismatchError,
                    f"base mismatch: {opt('base')} {os.fspath(base)} has fingerprint "
                    f"{resolved.fingerprint[:16]} but the vectors expect {expected[:16]} ({origins})",
                    expected=expected,
                    actual=resolved.fingerprint,
                )
                resolved = None
            elif need_base and resolved.infos is None:
                problems.add(
                    NotFoundError,
                    f"{opt('base')} {os.fspath(base)}: no local copy of this base is known; give the model directory",
                )
    elif expected is not None and (need_base or lookup_base):
        info = store.base_info(expected)
        if info is not None and info.local_path and Path(info.local_path).exists():
            try:
                candidate = store.resolve_base(info.local_path)
            except PvregError:
                candidate = None
            if candidate is not None and candidate.fingerprint == expected:
                resolved = candidate
            elif need_base:
                problems.add(
                    BaseMismatchError,
                    f"no {opt('base')} given and the registry's copy of base {expected[:16]} "
                    f"at {info.local_path} no longer has that fingerprint",
                )
        elif need_base:
            problems.add(
                NotFoundError,
                f"no {opt('base')} given and the registry knows no local path for base "
                f"{expected[:16]}; pass {opt('base')} DIR",
            )

    if resolved is not None and resolved.infos is not None:
        for i in inputs:
            _shape_problems(f"{i.meta.ref}", i.file.infos, resolved.infos, problems)
    else:
        shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
        for i in inputs:
            for name, tensor in i.file.infos.items():
                seen = shapes.setdefault(name, (i.meta.ref, tensor.shape))
                if seen[1] != tensor.shape:
                    problems.add(
                        BaseMismatchError,
                        f"tensor {name!r} has shape {list(seen[1])} in {seen[0]} "
                        f"but {list(tensor.shape)} in {i.meta.ref}",
                    )
    extra_files: list[tuple[str, Path]] = []
    if need_base and resolved is not None and resolved.path is not None and resolved.path.is_dir():
        extra_files, found = base_files(resolved.path)
        for message in found:
            problems.add(UserError, message)
    if out is not None:
        unsafe = output_problems(out, _protected(store, resolved, inputs))
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
    return Plan(
        resolved_spec,
        spec,
        inputs,
        method,
        expected,
        resolved,
        dtype_code,
        {k: v for k, v in record.items() if k != "method"},
        extra_files,
    )
