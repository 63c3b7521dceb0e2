"""Making preference vectors from checkpoints (``pvreg add --positive/--negative/--finetuned/--lora``).

Three sources, one shape of result (:class:`Made`):

* ``pair``: φ = θ+ − θ−, two full checkpoints trained from the same base with
  chosen/rejected swapped (arXiv:2504.20106).  Both must have exactly the
  base's tensor names and shapes.
* ``finetuned``: φ = θft − θbase.
* ``lora``: the dense ΔW of one PEFT LoRA adapter (only adapted tensors).

When ``--positive`` and ``--negative`` are both LoRA adapter directories the
vector is φ = ΔW+ − ΔW− (= θ+ − θ− of the merged models) and its kind is
``pair``: the kind says how φ relates to the preference, and
``provenance["input_format"] == "lora"`` records that the inputs were adapters.
The vector then covers the union of the tensors either adapter touches.

How it works: every structural check (tensor names, shapes, floating dtypes,
adapter configs) runs before any tensor data is read.  Then one hashing pass
(:func:`fingerprint.checkpoint_entries`, cached per file) gives the input
fingerprints for provenance *and* the per-tensor digests: equal dtype and equal
sha256 mean bit-identical tensors, i.e. an exactly zero delta.  Those tensors
are left out of the blob (whose header is written up front) and counted in the
provenance.  Finally :func:`ingest.write_blob` pulls one tensor at a time from
the returned source: the difference is computed in float32 (float64 if an
input is float64) from zero-copy views of the memory-mapped inputs, cast to the
stored dtype, and the input pages are dropped again after the tensor is written,
so memory stays at a few times the largest tensor.

Stored dtype: ``float32``, ``bfloat16`` or ``float16``; by default float32 when
every input tensor is float32 (or float64), bfloat16 otherwise.  The relative
error the cast introduced, ‖φstored − φexact‖ / ‖φexact‖ accumulated in float64
over all tensors, is recorded as ``storage_relative_error`` (0.0 when nothing
was rounded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import BaseMismatchError, InvalidVectorError, UserError
from pvreg.registry.sources.ingest import BlobStats, TensorSource
from pvreg.registry.tensors.checkpoint import Checkpoint, open_checkpoint
from pvreg.registry.tensors.dtypes import DTYPES, FLOAT_DTYPES, dtype_name, torch_dtype
from pvreg.registry.tensors.safetensors import TensorInfo, iter_chunks
from pvreg.registry.tensors.hfnames import ADAPTER_CONFIG
from pvreg.registry.errors import opt
from pvreg.registry.tensors.dtypes import parse_dtype

if TYPE_CHECKING:
    import torch
    from pvreg.registry.api import ResolvedBase
    from pvreg.registry.sources.lora import LoraAdapter
    from pvreg.registry.tensors.fingerprint import FingerprintCache

__all__ = ["Made", "build_source"]

#: How many omitted (zero-delta) tensor names the provenance lists.
OMITTED_NAMES_CAP = 50



@dataclass
class Made:
    """A vector ready to be written, and what to record about how it was made."""

    source: TensorSource
    kind: str  # "pair" | "finetuned" | "lora"
    provenance: dict[str, Any]
    finish: Callable[[BlobStats], None]


# --------------------------------------------------------------------------- entry point


def build_source(
    resolved: "ResolvedBase",
    *,
    positive: str | Path | None,
    negative: str | Path | None,
    finetuned: str | Path | None,
    lora: str | Path | None,
    dtype: str | None,
    cache: "FingerprintCache",
) -> Made:
    """Validate the inputs against the base and return a streaming source for φ.

    Raises:
        UserError: bad ``dtype``, missing base weights, incompatible source options.
        BaseMismatchError: an input's tensor names or shapes differ from the base.
        InvalidVectorError: a non-floating tensor, or every delta is exactly zero.
        InvalidTensorFileError / UnsafeCheckpointError / UnsupportedAdapterError:
            an input that cannot be read safely or exactly.
    """
    stored = _parse_dtype(dtype)
    pair_given = positive is not None or negative is not None
    given = [k for k, v in ((f"{opt('positive')}/{opt('negative')}", pair_given), (f"{opt('finetuned')}", finetuned is not None),
                            (f"{opt('lora')}", lora is not None)) if v]
    if len(given) != 1:
        raise UserError(
            f"give exactly one of {opt('positive')} DIR {opt('negative')} DIR, {opt('finetuned')} DIR or {opt('lora')} DIR"
            + (f" (got {', '.join(given)}); LoRA adapters may themselves be given as {opt('positive')}/{opt('negative')}"
               if given else "")
        )
    if pair_given:
        if positive is None or negative is None:
            missing = f"{opt('negative')}" if negative is None else f"{opt('positive')}"
            raise UserError(f"{opt('positive')} and {opt('negative')} go together: {missing} is missing")
        pos, neg = Path(positive), Path(negative)
        pos_lora, neg_lora = _is_adapter(pos), _is_adapter(neg)
        if pos_lora != neg_lora:
            which, other = (pos, neg) if pos_lora else (neg, pos)
            raise UserError(
                f"{which} is a LoRA adapter but {other} is a full checkpoint; give two adapters or two checkpoints"
            )
        if pos_lora:
            return _lora_vector(resolved, [("positive", pos, 1.0), ("negative", neg, -1.0)], stored, cache)
        return _dense_pair(resolved, pos, neg, stored, cache)
    if finetuned is not None:
        ft = Path(finetuned)
        if _is_adapter(ft):
            raise UserError(f"{ft} is a LoRA adapter directory; use {opt('lora')} {ft}")
        return _dense_finetuned(resolved, ft, stored, cache)
    assert lora is not None
    return _lora_vector(resolved, [("adapter", Path(lora), 1.0)], stored, cache)


# --------------------------------------------------------------------------- helpers


def _parse_dtype(dtype: str | None) -> str | None:
    return None if dtype is None else parse_dtype(dtype)


def _default_dtype(input_codes: set[str]) -> str:
    """float32 when every input is float32 (or float64), else bfloat16."""
    return "F32" if input_codes <= {"F32", "F64"} else "BF16"


def _is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def _abs(path: Path) -> str:
    return str(path.expanduser().resolve())


def _require_infos(resolved: "ResolvedBase", what: str) -> Mapping[str, TensorInfo]:
    if resolved.infos is None:
        raise UserError(
            f"{what} needs the base model's weights to check tensor names and shapes, but base "
            f"{resolved.fingerprint[:16]} is only known by its fingerprint; give {opt('base')} as a path"
        )
    return resolved.infos


def _shape(info: TensorInfo) -> list[int]:
    return list(info.shape)


def _check_layouts(sides: list[tuple[str, Mapping[str, TensorInfo]]], base: Mapping[str, TensorInfo]) -> None:
    """Every side must have exactly the base's names and shapes; report the first offence by name."""
    names = set(base)
    for _, infos in sides:
        names.update(infos)
    for name in sorted(names):
        b = base.get(name)
        for label, infos in sides:
            t = infos.get(name)
            if t is None:
                raise BaseMismatchError(
                    f"{label}: lacks tensor {name!r} (shape {_shape(b)} in the base)"  # type: ignore[arg-type]
                )
            if b is None:
                raise BaseMismatchError(
                    f"{label}: tensor {name!r} (shape {_shape(t)}) does not exist in the base"
                )
            if t.shape != b.shape:
                raise BaseMismatchError(
                    f"{label}: tensor {name!r} has shape {_shape(t)} but the base has {_shape(b)}"
                )


def _check_floating(sides: list[tuple[str, Mapping[str, TensorInfo]]]) -> None:
    for label, infos in sides:
        for name in sorted(infos):
            code = infos[name].dtype
            if code not in FLOAT_DTYPES:
                raise InvalidVectorError(
                    f"{label}: tensor {name!r} has dtype {dtype_name(code)}; a vector can only be made "
                    "from floating-point tensors (float32, float16, bfloat16, float64)"
                )


def _hash(ckpt: Checkpoint, cache: "FingerprintCache") -> tuple[str, dict[str, str]]:
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


# --------------------------------------------------------------------------- error meter


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

    def store(self, name: str, exact: "torch.Tensor") -> "torch.Tensor":
        """Cast the exact delta to the stored dtype, account for it, and return the stored tensor."""
        target = torch_dtype(self.stored_code)
        stored = exact if exact.dtype == target else exact.to(target)
        self.add(name, exact, stored)
        return stored

    def add(self, name: str, exact: "torch.Tensor", stored: "torch.Tensor") -> None:
        import torch

        if stored.dtype != exact.dtype:
            for e, s in zip(iter_chunks(exact), iter_chunks(stored)):
                e64 = e.to(torch.float64)
                d = s.to(torch.float64)
                d.sub_(e64)
                esq, dsq = float(torch.dot(e64, e64)), float(torch.dot(d, d))
                del e64, d
                if not math.isfinite(esq):
                    break  # NaN/Inf in the inputs: write_blob reports it
                if not math.isfinite(dsq):
                    limit = torch.finfo(stored.dtype).max
                    raise InvalidVectorError(
                        f"{self.label}: tensor {name!r} has delta values beyond the range of "
                        f"{dtype_name(self.stored_code)} (max {limit:g}); store it as float32 or bfloat16"
                    )
                self.exact_sq += esq
                self.error_sq += dsq
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


# --------------------------------------------------------------------------- dense sources


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

    def __post_init__(self) -> None:
        self._pending = {i.name for i in self.infos}

    def plan(self) -> list[TensorInfo]:
        return list(self.infos)

    def tensor(self, name: str) -> "torch.Tensor":
        import torch

        a = self.minuend.tensor(name)
        b = self.subtrahend.tensor(name)
        compute = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        exact = a.to(compute, copy=True)
        exact.sub_(b)  # b is upcast element-wise; exact for float32/bf16/f16 inputs
        del a, b
        return self.meter.store(name, exact)

    def raw(self, name: str) -> memoryview | None:
        return None

    def release(self, name: str) -> None:
        self.minuend.release(name)
        self.subtrahend.release(name)
        self._pending.discard(name)
        if not self._pending:
            self.close()

    def close(self) -> None:
        self.resources.close()


def _finish(meter: _Meter, close: Callable[[], None]) -> Callable[[BlobStats], None]:
    def finish(stats: BlobStats) -> None:
        close()
        stats.extra["storage_relative_error"] = meter.relative

    return finish


def _dense(
    resolved: "ResolvedBase",
    kind: str,
    minuend: tuple[str, Path],
    subtrahend: tuple[str, Path | None],
    stored: str | None,
    cache: "FingerprintCache",
) -> Made:
    base_infos = _require_infos(resolved, f"{opt('positive')}/{opt('negative')}" if kind == "pair" else f"{opt('finetuned')}")
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

        # One (cached) hashing pass: input fingerprints + which deltas are exactly zero.
        m_fp, m_dig = _hash(m_ckpt, cache)
        s_fp, s_dig = _hash(s_ckpt, cache)
        names = sorted(base_infos)
        zero = [
            n for n in names
            if m_ckpt.infos[n].dtype == s_ckpt.infos[n].dtype and m_dig[n] == s_dig[n]
        ]
        zero_set = set(zero)
        kept = [n for n in names if n not in zero_set]
        label = f"{m_path} - {s_path}"
        if not kept:
            raise _all_zero(label, len(names))
        item = DTYPES[code][0]
        infos = [
            TensorInfo(n, code, base_infos[n].shape, math.prod(base_infos[n].shape) * item) for n in kept
        ]
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
        provenance["base"] = {"fingerprint": resolved.fingerprint,
                              "path": str(resolved.path) if resolved.path else None}
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


def _dense_pair(resolved: "ResolvedBase", pos: Path, neg: Path, stored: str | None,
                cache: "FingerprintCache") -> Made:
    return _dense(resolved, "pair", ("positive", pos), ("negative", neg), stored, cache)


def _dense_finetuned(resolved: "ResolvedBase", ft: Path, stored: str | None, cache: "FingerprintCache") -> Made:
    return _dense(resolved, "finetuned", ("finetuned", ft), ("base", None), stored, cache)


# --------------------------------------------------------------------------- LoRA


@dataclass
class _Adapter:
    role: str
    path: Path
    coefficient: float
    adapter: "LoraAdapter"
    weights: Checkpoint
    fingerprint: str
    digests: dict[str, str]
    mapping: dict[str, str]  # base tensor name -> module
    zero: set[str]  # base tensor names whose ΔW is exactly zero (A or B all zero, or scaling 0)


def _open_adapter(role: str, path: Path, coefficient: float, base_shapes: Mapping[str, tuple[int, ...]],
                  cache: "FingerprintCache", stack: ExitStack) -> _Adapter:
    import torch
    from pvreg.registry.sources.lora import LoraAdapter

    adapter = LoraAdapter.open(path)  # config and key checks: no tensor data yet
    mapping = adapter.resolve(base_shapes)  # names and shapes against the base
    weights = stack.enter_context(open_checkpoint(adapter.weights_path))
    fingerprint, digests = _hash(weights, cache)
    zero: set[str] = set()
    for base_name, module in mapping.items():
        m = adapter._module(module)  # noqa: SLF001 - same package: the factor keys
        a, b = weights.tensor(m.key_a), weights.tensor(m.key_b)
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise InvalidVectorError(f"{adapter.weights_path}: LoRA factors of module {module!r} contain NaN or Inf")
        if m.scaling == 0 or not bool(a.any()) or not bool(b.any()):
            zero.add(base_name)
        del a, b
        weights.release(m.key_a)
        weights.release(m.key_b)
    return _Adapter(role, path, coefficient, adapter, weights, fingerprint, digests, mapping, zero)


def _same_delta(x: _Adapter, y: _Adapter, base_name: str) -> bool:
    """ΔW bit-identical in both adapters: same factor bytes and dtypes, same scaling and layout."""
    mx = x.adapter._module(x.mapping[base_name])  # noqa: SLF001
    my = y.adapter._module(y.mapping[base_name])  # noqa: SLF001
    return (
        mx.scaling == my.scaling
        and x.adapter._resolved[base_name][1] == y.adapter._resolved[base_name][1]  # noqa: SLF001 - transpose
        and all(
            x.weights.infos[kx].dtype == y.weights.infos[ky].dtype and x.digests[kx] == y.digests[ky]
            for kx, ky in ((mx.key_a, my.key_a), (mx.key_b, my.key_b))
        )
    )


@dataclass
class _LoraSource:
    """φ[name] = Σ coefficient · ΔW_adapter[name] over the adapters that touch ``name``."""

    label: str
    terms: dict[str, list[_Adapter]]  # base name -> adapters with a non-zero ΔW there
    infos: list[TensorInfo]
    meter: _Meter
    resources: ExitStack

    def plan(self) -> list[TensorInfo]:
        return list(self.infos)

    def tensor(self, name: str) -> "torch.Tensor":

        exact: torch.Tensor | None = None
        for term in self.terms[name]:
            d = term.adapter.delta(name)  # float32
            if exact is None:
                exact = d if term.coefficient == 1.0 else d.mul_(term.coefficient)
            else:
                exact.add_(d, alpha=term.coefficient)
            del d
        assert exact is not None
        return self.meter.store(name, exact)

    def raw(self, name: str) -> memoryview | None:
        return None

    def release(self, name: str) -> None:
        if name == self.infos[-1].name:
            self.close()

    def close(self) -> None:
        self.resources.close()


def _adapter_facts(a: _Adapter) -> dict[str, Any]:
    cfg = a.adapter.config
    facts: dict[str, Any] = {
        "path": _abs(a.path),
        "weights_file": a.adapter.weights_path.name,
        "fingerprint": a.fingerprint,
        "peft_type": cfg.get("peft_type"),
        "peft_version": cfg.get("peft_version"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "use_rslora": bool(cfg.get("use_rslora", False)),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out", False)),
        "target_modules": cfg.get("target_modules"),
        "num_modules": len(a.mapping),
        "factor_dtypes": sorted({dtype_name(i.dtype) for i in a.weights.infos.values()}),
    }
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            facts[key] = cfg[key]
    if isinstance(facts["target_modules"], (set, tuple)):
        facts["target_modules"] = sorted(facts["target_modules"])
    return facts


def _lora_vector(resolved: "ResolvedBase", inputs: list[tuple[str, Path, float]], stored: str | None,
                 cache: "FingerprintCache") -> Made:
    is_pair = len(inputs) == 2
    base_infos = _require_infos(resolved, f"{opt('positive')}/{opt('negative')}" if is_pair else f"{opt('lora')}")
    base_shapes = {n: i.shape for n, i in base_infos.items()}
    stack = ExitStack()
    try:
        adapters = [_open_adapter(role, path, coef, base_shapes, cache, stack) for role, path, coef in inputs]
        input_codes = {i.dtype for a in adapters for i in a.weights.infos.values()}
        code = stored or _default_dtype(input_codes)

        touched = sorted({n for a in adapters for n in a.mapping})
        terms: dict[str, list[_Adapter]] = {}
        zero: list[str] = []
        for name in touched:
            live = [a for a in adapters if name in a.mapping and name not in a.zero]
            if len(live) == 2 and _same_delta(live[0], live[1], name):
                live = []
            if live:
                terms[name] = live
            else:
                zero.append(name)
        label = " - ".join(str(p) for _, p, _ in inputs) if is_pair else str(inputs[0][1])
        if not terms:
            raise InvalidVectorError(
                f"{label}: all deltas are zero ({len(touched)} adapted tensors: a factor is all zero"
                + (" or both adapters are identical" if is_pair else "") + "); there is no vector to store"
            )
        item = DTYPES[code][0]
        infos = [
            TensorInfo(n, code, base_shapes[n], math.prod(base_shapes[n]) * item) for n in sorted(terms)
        ]
        meter = _Meter(label, code, len(infos))
        source = _LoraSource(label, terms, infos, meter, stack.pop_all())
    except BaseException:
        stack.close()
        raise

    provenance: dict[str, Any] = {
        "source": "pair" if is_pair else "lora",
        "input_format": "lora",
        **{a.role: _adapter_facts(a) for a in adapters},
        "base": {"fingerprint": resolved.fingerprint, "path": str(resolved.path) if resolved.path else None},
        "formula": "dW(positive) - dW(negative)" if is_pair else "dW = scaling * B @ A",
        "compute_dtype": "float32",
        "stored_dtype": dtype_name(code),
        "stored_dtype_source": "--dtype" if stored else "default",
        "num_adapted_tensors": len(touched),
        "omitted_zero_tensors": _omitted(zero),
    }
    return Made(source=source, kind="pair" if is_pair else "lora", provenance=provenance,
                finish=_finish(meter, source.close))
