"""``export-lora``: a composition Σ η·s·φ as a LoRA adapter directory, with its measured error.

Phases, like compose (:mod:`pvreg.registry.merge.compose`), so a bad request costs nothing:

1. :func:`~pvreg.registry.merge.plan.prepare` resolves and checks the terms, the base and the
   output path; then the options, the rank policy and the tensors LoRA cannot express
   (:mod:`~pvreg.registry.serving.targets`) are checked before any tensor data is read.
2. One module at a time: the combined delta Δ = Σ w·φ that compose would add (float32, from the
   stored blobs), the adapter's factors (:func:`~pvreg.registry.serving.factors.combine_module`:
   stored LoRA factors concatenated exactly, dense terms by truncated SVD of their sum), and the
   error ‖Δ − B·A‖/‖Δ‖ measured on the factors as written (after the dtype cast).  Only the
   factors (the adapter's own size) are kept until the end.
3. The directory (:mod:`~pvreg.registry.serving.peftdir`, ``export_report.json``, and for LoRAX
   one adapter per vector plus ``lorax-request.json``) is staged, published atomically, and the
   run recorded in the compositions table (``kind = "lora"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import (
    IntegrityError,
    InvalidOptionError,
    LoraExportError,
    PvregError,
    SpecError,
    opt,
    raise_problems,
)
from pvreg.registry.merge.plan import Plan, prepare
from pvreg.registry.merge.spec import build_spec
from pvreg.registry.serving.build import REPORT_FILE, Job, build
from pvreg.registry.serving.targets import Profile, conv1d, non_lora_reason, profile
from pvreg.registry.storage import writes
from pvreg.registry.storage.staging import publish_dir, staging
from pvreg.registry.storage.store import Store
from pvreg.registry.tensors.dtypes import parse_dtype
from pvreg.registry.version import __version__
from pvreg.schemas.compose import ComposeSpec
from pvreg.schemas.serving import LoraExportResult

if TYPE_CHECKING:
    from pvreg.registry.serving.factors import StoredFactors

#: How many tensor names a refusal lists before counting the rest.
SHOWN = 8


def export_lora(
    store: Store,
    spec: ComposeSpec | str | Sequence[str],
    *,
    out: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    rank: int | None = None,
    energy: float | None = None,
    max_rank: int | None = None,
    target: str = "peft",
    non_lora: str = "refuse",
    dtype: str | None = None,
    force: bool = False,
) -> LoraExportResult:
    """Write a LoRA adapter for a composition (see :meth:`pvreg.Registry.export_lora`)."""
    from pvreg.registry.serving.lowrank import check_policy

    prof = profile(target, non_lora)
    full = build_spec(spec)
    if full.method != "linear":
        raise SpecError(
            f"export-lora writes Σ η·s·φ (method linear); {full.method} is not a sum of the vectors' "
            f"factors (compose it with {opt('vector_only', True)} {opt('register')} NAME, then export that)"
        )
    if rank is not None or energy is not None:
        check_policy(rank=rank, energy=energy, max_rank=max_rank)
    elif max_rank is not None:
        check_policy(rank=1, energy=None, max_rank=max_rank)
    code = parse_dtype(dtype) if dtype is not None else "F32"
    out_path = Path(out).expanduser()
    plan = prepare(store, full, base=base, need_base=non_lora == "carry", out=out_path, force=force)
    stack = ExitStack()
    stack.callback(plan.close)
    with stack:
        job = _validate(store, plan, prof, non_lora, rank, energy, max_rank, code, base)
        stack.callback(job.close)
        with staging(store.settings.pending_dir, out_path) as (tmp, rewrite):
            report, digest, files = build(job, tmp)
            (tmp / REPORT_FILE).write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
            files.append(REPORT_FILE)
            publish_dir(tmp, out_path, rewrite, force=force)
    cid = store.transaction(
        lambda s: writes.add_composition(
            s,
            method="linear",
            spec=plan.spec.model_dump(mode="json"),
            base_fingerprint=plan.base_fingerprint,
            output_kind="lora",
            output_path=out_path,
            output_fingerprint=digest,
            result=None,
            pvreg_version=__version__,
            kind="lora",
            report=report.model_dump(mode="json", exclude={"modules"}),
        )
    )
    return LoraExportResult(
        out=str(out_path),
        target=prof.name,  # type: ignore[arg-type]  # a key of PROFILES, checked
        files=sorted(files),
        output_fingerprint=digest,
        composition_id=cid,
        spec=plan.spec,
        report=report,
    )


def _validate(
    store: Store,
    plan: Plan,
    prof: Profile,
    non_lora: str,
    rank: int | None,
    energy: float | None,
    max_rank: int | None,
    code: str,
    base: str | os.PathLike[str] | None,
) -> Job:
    """Everything that needs no tensor data: exact inputs, rank policy, what each tensor becomes."""
    from pvreg.registry.serving.factors import StoredFactors

    factors: dict[str, StoredFactors] = {}
    job = Job(plan, prof, non_lora, rank, energy, max_rank or prof.default_limit, code, factors, [], {}, None)
    try:
        dense = []
        for i in plan.inputs:
            sha = i.meta.factors_sha256
            if sha is None:
                dense.append(i.meta.ref)
                continue
            path = store.blobs.path(sha)
            if not path.is_file():
                raise IntegrityError(f"{i.meta.ref}: LoRA factors blob sha256:{sha[:12]} is missing (run pvreg verify)")
            label = f"{i.meta.ref}: LoRA factors blob sha256:{sha[:12]}"
            try:
                f = StoredFactors(path, label)
            except PvregError as exc:  # the store's own file: damage is an integrity failure, not bad input
                raise IntegrityError(f"{label} is damaged (run pvreg verify): {exc}") from None
            factors[i.meta.sha256] = f
            if set(f.names()) != set(i.file.infos):
                raise IntegrityError(f"{f.label}: covers other tensors than the vector's blob (run pvreg verify)")
        for i in plan.inputs:
            for name, info in i.file.infos.items():
                job.shapes.setdefault(name, info.shape)
        why = {n: non_lora_reason(n, s) for n, s in sorted(job.shapes.items())}
        other = {n: w for n, w in why.items() if w is not None}
        if non_lora == "carry":
            # A module that carries any full tensor is carried whole (PEFT cannot LoRA a module it also saves).
            carried = {n.rsplit(".", 1)[0] for n in other}
            for n, reason in why.items():
                if reason is None and n.rsplit(".", 1)[0] in carried:
                    other[n] = "part of a carried module"
        job.other = other
        job.lora = [n for n in why if n not in other]
        problems: list[PvregError] = []
        lora = set(job.lora)
        needs_svd = [i.meta.ref for i in plan.inputs if i.meta.ref in dense and lora.intersection(i.file.infos)]
        if needs_svd and rank is None and energy is None:
            problems.append(
                InvalidOptionError(
                    f"{', '.join(needs_svd[:SHOWN])}: stored dense, so its adapter is a truncated SVD; "
                    f"give {opt('rank')} R or {opt('energy')} E (only LoRA-sourced vectors export exactly)",
                    option="rank",
                )
            )
        if other and non_lora == "refuse":
            listed = ", ".join(f"{n} ({w})" for n, w in list(other.items())[:SHOWN])
            more = f" and {len(other) - SHOWN} more" if len(other) > SHOWN else ""
            fixes = f"{opt('non_lora')} drop leaves them out and reports their share of the norm" + (
                f"; {opt('non_lora')} carry writes them as full weights (modules_to_save)" if prof.carry else ""
            )
            problems.append(
                LoraExportError(
                    f"{len(other)} tensor(s) cannot be LoRA modules for {prof.name} and would be lost: "
                    f"{listed}{more}; {fixes}"
                )
            )
        raise_problems(problems)
        job.base_model = _base_model(store, plan, base)
        known = store.base_info(plan.base_fingerprint)
        job.conv1d = conv1d(known.architecture if known is not None else None)
        if not job.lora and non_lora == "drop":
            raise LoraExportError("no tensor of the composition can be a LoRA module: the adapter would be empty")
    except BaseException:
        job.close()
        raise
    return job


def _base_model(store: Store, plan: Plan, base: str | os.PathLike[str] | None) -> str | None:
    """``base_model_name_or_path``: the base's Hub id when known, else its directory name — never a local path."""
    info = store.base_info(plan.base_fingerprint)
    if info is not None and info.hub_id:
        return info.hub_id
    if base is not None and Path(base).expanduser().exists():
        return Path(base).expanduser().resolve().name
    return info.label if info is not None and info.label and os.sep not in info.label else None
