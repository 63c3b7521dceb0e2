"""LoRA sources: the dense ΔW of one adapter, or ΔW+ − ΔW− of two (exact, through :mod:`pvreg.registry.sources.lora`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import InvalidVectorError, opt
from pvreg.registry.sources.diffs import (
    Made,
    _abs,
    _default_dtype,
    _finish,
    _hash,
    _Meter,
    _omitted,
    _require_infos,
)
from pvreg.registry.tensors.checkpoint import Checkpoint, open_checkpoint
from pvreg.registry.tensors.dtypes import DTYPES, dtype_name
from pvreg.registry.tensors.safetensors import TensorInfo

if TYPE_CHECKING:
    import torch

    from pvreg.registry.sources.lora import LoraAdapter
    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.tensors.fingerprint import FingerprintCache


@dataclass
class _Adapter:
    role: str
    path: Path
    coefficient: float
    adapter: LoraAdapter
    weights: Checkpoint
    fingerprint: str
    digests: dict[str, str]
    mapping: dict[str, str]  # base tensor name -> module
    zero: set[str]  # base tensor names whose ΔW is exactly zero (A or B all zero, or scaling 0)


def _open_adapter(
    role: str,
    path: Path,
    coefficient: float,
    base_shapes: Mapping[str, tuple[int, ...]],
    cache: FingerprintCache,
    stack: ExitStack,
) -> _Adapter:
    import torch

    from pvreg.registry.sources.lora import LoraAdapter

    adapter = LoraAdapter.open(path)  # config and key checks: no tensor data yet
    mapping = adapter.resolve(base_shapes)  # names and shapes against the base
    weights = stack.enter_context(open_checkpoint(adapter.weights_path))
    fingerprint, digests = _hash(weights, cache)
    zero: set[str] = set()
    for base_name, module in mapping.items():
        m = adapter._module(module)
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
    mx = x.adapter._module(x.mapping[base_name])
    my = y.adapter._module(y.mapping[base_name])
    return (
        mx.scaling == my.scaling
        and x.adapter._resolved[base_name][1] == y.adapter._resolved[base_name][1]
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

    def tensor(self, name: str) -> torch.Tensor:

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


def _lora_vector(
    resolved: ResolvedBase, inputs: list[tuple[str, Path, float]], stored: str | None, cache: FingerprintCache
) -> Made:
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
                + (" or both adapters are identical" if is_pair else "")
                + "); there is no vector to store"
            )
        item = DTYPES[code][0]
        infos = [TensorInfo(n, code, base_shapes[n], math.prod(base_shapes[n]) * item) for n in sorted(terms)]
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
    return Made(
        source=source,
        kind="pair" if is_pair else "lora",
        provenance=provenance,
        finish=_finish(meter, source.close),
        factors=lambda: _factor_source(label, terms, base_shapes),
    )


def _factor_source(label: str, terms: dict[str, list[_Adapter]], base_shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """The exact factors of every stored tensor, in the base's layout (see :mod:`pvreg.registry.serving.factors`)."""
    from pvreg.registry.serving.factors import FactorPlan, FactorSource

    def loader(term: _Adapter, name: str) -> Any:
        def load() -> tuple[torch.Tensor, torch.Tensor]:
            m = term.adapter._module(term.mapping[name])
            a, b = term.adapter._load_pair(m)  # float32, finite (checked)
            if term.adapter._resolved[name][1]:  # Conv1D: ΔW = (B·A)ᵀ = Aᵀ·Bᵀ
                return b.T.contiguous(), a.T.contiguous()
            return a, b

        return load

    plans = []
    for name in sorted(terms):
        d0, d1 = base_shapes[name]
        for term in terms[name]:
            m = term.adapter._module(term.mapping[name])
            scale = m.scaling * term.coefficient
            plans.append(FactorPlan(name, term.role, m.rank, (d0, d1), scale, loader(term, name)))
    return FactorSource(label, plans)
