"""The tensor work of an export: one module at a time, factors made and their error measured.

:func:`build` is handed a validated :class:`Job` (see :mod:`pvreg.registry.serving.export`) and a
staging directory; it writes the adapter(s) there and returns the report.  Every error is
measured, not predicted: Δ is what compose would add (:func:`~pvreg.registry.merge.engine.combined_delta`
over the stored blobs) and the residual is ‖Δ − B·A‖ of the factors after the cast to the
adapter's dtype.

LoRAX (``--target lorax``): each vector also becomes its own adapter, laid out in disjoint rank
blocks of one common rank R (vector u's factors in rows/columns [o_u, o_u + r_u) of every module,
zeros elsewhere).  LoRAX's ``linear`` merge sums the weighted lora_A tensors and, separately, the
weighted lora_B tensors; with disjoint blocks that product is Σ_u w_u²·B_u·A_u, so the payload's
weights are w_u = sqrt(|W_u|) and the sign of W_u = η·s (÷‖φ‖ with normalize) is folded into the
vector's adapter: the merged adapter is then exactly Σ W_u·(B_u·A_u).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import LoraExportError, NonFiniteTensorError, opt
from pvreg.registry.merge.plan import Input, Plan
from pvreg.registry.serving.peftdir import AdapterContent, write_adapter
from pvreg.registry.serving.targets import Profile
from pvreg.registry.tensors.dtypes import torch_dtype
from pvreg.registry.tensors.hfnames import ADAPTER_CONFIG, ADAPTER_SAFETENSORS
from pvreg.schemas.serving import DroppedTensor, ExportTerm, LoraExportReport, LoraxAdapter, ModuleReport

if TYPE_CHECKING:
    import torch

    from pvreg.registry.serving.factors import StoredFactors

REPORT_FILE = "export_report.json"
LORAX_REQUEST = "lorax-request.json"
LORAX_DIR = "adapters"


@dataclass
class Job:
    """A validated export: the plan plus what each tensor becomes."""

    plan: Plan
    profile: Profile
    non_lora: str
    rank: int | None
    energy: float | None
    limit: int | None
    code: str
    factors: dict[str, StoredFactors]  # input sha256 -> its stored factors (exact inputs)
    lora: list[str]  # tensors exported as LoRA modules
    other: dict[str, str]  # tensor -> why it is not a LoRA module (dropped or carried)
    base_model: str | None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    conv1d: bool = False  # GPT-2 style weights (in, out): adapters need fan_in_fan_out

    def users(self, name: str) -> list[Input]:
        return [i for i in self.plan.inputs if name in i.file.infos]

    def close(self) -> None:
        for f in self.factors.values():
            f.close()


def module_of(tensor: str) -> str:
    return tensor.removesuffix(".weight")


def _norm(t: torch.Tensor) -> float:
    import torch

    return float(torch.linalg.vector_norm(t, dtype=torch.float64))


def _residual(delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    import torch

    if a.shape[0] == 0:
        return _norm(delta)
    return _norm(delta - b.to(torch.float32) @ a.to(torch.float32))


def _relative(parts: list[tuple[float, float]]) -> float:
    from pvreg.registry.serving.lowrank import overall_error

    return overall_error(parts)


def build(job: Job, tmp: Path) -> tuple[LoraExportReport, str, list[str]]:
    """Write the adapter (and LoRAX's per-vector adapters) into ``tmp``; (report, sha256, files)."""
    from pvreg.registry.merge.engine import combined_delta
    from pvreg.registry.serving.factors import combine_module

    dtype = torch_dtype(job.code)
    report = _new_report(job)
    content = AdapterContent()
    lorax = _Lorax(job) if job.profile.name == "lorax" else None
    parts: list[tuple[float, float]] = []
    lora_parts: list[tuple[float, float]] = []
    for name in job.lora:
        users = job.users(name)
        delta = combined_delta(job.plan, name, users)
        exact = [
            (u.weight, t) for u in users if u.meta.sha256 in job.factors for t in job.factors[u.meta.sha256].terms(name)
        ]
        dense_users = [u for u in users if u.meta.sha256 not in job.factors]
        dense = combined_delta(job.plan, name, dense_users).float() if dense_users else None
        try:
            mf = combine_module(exact, dense, rank=job.rank, energy=job.energy, limit=job.limit)
        except NonFiniteTensorError as exc:  # finite inputs whose weighted sum overflowed float32
            raise exc.named(name) from None
        a, b = mf.a.to(dtype), mf.b.to(dtype)
        norm, residual = _norm(delta), _residual(delta, a, b)
        report.modules.append(
            ModuleReport(
                tensor=name,
                rank=int(a.shape[0]),
                exact_rank=mf.exact_rank,
                svd_rank=mf.svd_rank,
                recompressed=mf.recompressed,
                norm=norm,
                error=residual / norm if norm > 0 else 0.0,
            )
        )
        parts.append((norm, residual))
        lora_parts.append((norm, residual))
        if a.shape[0]:
            content.factors[module_of(name)] = (a, b)
        if lorax is not None:
            lorax.add(name, users, dtype)
        _release(job, name, users)
    parts += _non_lora(job, content, report)
    report.total_norm = math.sqrt(sum(n * n for n, _ in parts))
    report.overall_error = _relative(parts)
    report.lora_error = _relative(lora_parts)
    dropped_sq = sum(d.norm**2 for d in report.dropped)
    report.dropped_share = math.sqrt(dropped_sq) / report.total_norm if report.total_norm > 0 else 0.0
    for d in report.dropped:
        d.share = d.norm / report.total_norm if report.total_norm > 0 else 0.0
    if not content.factors and not content.full:
        raise LoraExportError("the composition's delta is zero on every LoRA module: the adapter would be empty")
    uniform = not job.profile.patterns
    report.uniform_rank = content.max_rank() if uniform else None
    if job.limit is not None and content.max_rank() > job.limit:  # pragma: no cover - combine_module caps it
        raise LoraExportError(f"rank {content.max_rank()} exceeds {opt('max_rank')} {job.limit}")
    digest = write_adapter(tmp, content, base_model=job.base_model, uniform=uniform, fan_in_fan_out=job.conv1d)
    files = [ADAPTER_CONFIG, ADAPTER_SAFETENSORS]
    if lorax is not None:
        report.lorax, more = lorax.write(tmp)
        files += more
    return report, digest, files


def _new_report(job: Job) -> LoraExportReport:
    terms = [
        ExportTerm(
            ref=i.meta.ref,
            sha256=i.meta.sha256,
            coefficient=i.term.coefficient,
            sign=i.meta.sign,
            weight=i.weight,
            exact=i.meta.sha256 in job.factors,
        )
        for i in job.plan.inputs
    ]
    return LoraExportReport(
        target=job.profile.name,  # type: ignore[arg-type]  # a key of PROFILES
        non_lora=job.non_lora,  # type: ignore[arg-type]  # checked by targets.profile
        rank=job.rank,
        energy=job.energy,
        max_rank=job.limit,
        dtype=str(torch_dtype(job.code)).removeprefix("torch."),
        base_model=job.base_model,
        terms=terms,
        total_norm=0.0,
        overall_error=0.0,
        lora_error=0.0,
        dropped_share=0.0,
    )


def _release(job: Job, name: str, users: list[Input]) -> None:
    for u in users:
        u.file.release(name)
        f = job.factors.get(u.meta.sha256)
        if f is not None:
            f.release(name)


def _non_lora(job: Job, content: AdapterContent, report: LoraExportReport) -> list[tuple[float, float]]:
    """Dropped tensors (residual = their norm) or carried modules (full weights, exact); (norm, residual) pairs."""
    from pvreg.registry.merge.engine import combined_delta
    from pvreg.registry.tensors.checkpoint import open_checkpoint

    parts: list[tuple[float, float]] = []
    if job.non_lora == "drop":
        for name, why in job.other.items():
            users = job.users(name)
            norm = _norm(combined_delta(job.plan, name, users))
            report.dropped.append(DroppedTensor(tensor=name, why=why, norm=norm, share=0.0))
            parts.append((norm, norm))
            _release(job, name, users)
        return parts
    if not job.other:
        return parts
    base = job.plan.base
    assert base is not None and base.path is not None and base.infos is not None  # prepare(need_base=True)
    modules = sorted({n.rsplit(".", 1)[0] for n in job.other})
    with open_checkpoint(base.path) as ckpt:
        for module in modules:
            params = [n for n in sorted(base.infos) if n.rsplit(".", 1)[0] == module]
            for p in params:
                weight = ckpt.tensor(p)
                users = job.users(p)
                if users:
                    delta = combined_delta(job.plan, p, users)
                    parts.append((_norm(delta), 0.0))
                    weight = delta.add_(weight).to(weight.dtype)  # what compose writes for this tensor
                    report.carried.append(p)
                    _release(job, p, users)
                content.full[p] = weight.clone()
                ckpt.release(p)
            content.modules_to_save.append(module)
    return parts


class _Lorax:
    """Each vector as its own adapter, in disjoint rank blocks (see the module docstring)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.blocks: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}  # tensor -> (input, A, B)
        self.parts: dict[int, list[tuple[float, float]]] = {k: [] for k in range(len(job.plan.inputs))}

    def add(self, name: str, users: list[Input], dtype: torch.dtype) -> None:
        from pvreg.registry.serving.factors import combine_module

        job = self.job
        for u in users:
            k = job.plan.inputs.index(u)
            sign = -1.0 if u.weight < 0 else 1.0
            phi = u.file.tensor(name).float() * sign
            stored = job.factors.get(u.meta.sha256)
            if stored is not None:
                mf = combine_module([(sign, t) for t in stored.terms(name)], None, rank=None, energy=None, limit=None)
            else:
                mf = combine_module([], phi, rank=job.rank, energy=job.energy, limit=None)
            a, b = mf.a.to(dtype), mf.b.to(dtype)
            self.parts[k].append((_norm(phi), _residual(phi, a, b)))
            self.blocks.setdefault(name, []).append((k, a, b))

    def write(self, tmp: Path) -> tuple[list[LoraxAdapter], list[str]]:
        import torch

        job = self.job
        rank = max((sum(a.shape[0] for _, a, _ in blocks) for blocks in self.blocks.values()), default=0)
        if job.limit is not None and rank > job.limit:
            raise LoraExportError(
                f"--target lorax lays the {len(job.plan.inputs)} vectors out in disjoint rank blocks of total rank "
                f"{rank}, above {opt('max_rank')} {job.limit}; lower {opt('rank')} or {opt('energy')}"
            )
        contents = [AdapterContent() for _ in job.plan.inputs]
        for name, blocks in self.blocks.items():
            d0, d1 = job.shapes[name]
            start = 0
            placed: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
            for k, a, b in blocks:
                placed[k] = (start, a, b)
                start += a.shape[0]
            for k, content in enumerate(contents):
                big_a = torch.zeros((rank, d1), dtype=torch_dtype(job.code))
                big_b = torch.zeros((d0, rank), dtype=torch_dtype(job.code))
                if k in placed:
                    off, a, b = placed[k]
                    big_a[off : off + a.shape[0]] = a
                    big_b[:, off : off + a.shape[0]] = b
                content.factors[module_of(name)] = (big_a, big_b)
        adapters: list[LoraxAdapter] = []
        files: list[str] = []
        payload: dict[str, Any] = {"ids": [], "weights": [], "merge_strategy": "linear"}
        for k, (u, content) in enumerate(zip(job.plan.inputs, contents, strict=True)):
            ident = f"{LORAX_DIR}/{u.meta.name}-v{u.meta.version}"
            write_adapter(tmp / ident, content, base_model=job.base_model, uniform=True, fan_in_fan_out=job.conv1d)
            files += [f"{ident}/{ADAPTER_CONFIG}", f"{ident}/{ADAPTER_SAFETENSORS}"]
            weight = math.sqrt(abs(u.weight))
            payload["ids"].append(ident)
            payload["weights"].append(weight)
            adapters.append(LoraxAdapter(id=ident, ref=u.meta.ref, weight=weight, error=_relative(self.parts[k])))
        request = {"parameters": {"adapter_source": "local", "merged_adapters": payload}}
        (tmp / LORAX_REQUEST).write_text(json.dumps(request, indent=2) + "\n")
        files.append(LORAX_REQUEST)
        return adapters, files
