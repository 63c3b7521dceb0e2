"""Composing preference vectors: θ = θ_base + Σ_i η_i·s_i·φ_i (paper Eq. 5/6).

Three phases, in this order, so a bad request costs nothing:

1. :func:`~pvreg.registry.merge.plan.prepare` checks everything that needs no
   tensor data and raises every problem at once.
2. The output is written into a staged ``.pvreg-tmp-*`` sibling
   (:mod:`pvreg.registry.storage.staging`), streaming one tensor at a time
   (:mod:`~pvreg.registry.merge.writer`, :mod:`~pvreg.registry.merge.engine`).
3. It is published (never over something that appeared, without ``force``)
   and the run is recorded in the ``compositions`` table.

The per-tensor combination itself is :mod:`pvreg.registry.merge.methods`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvreg.registry.errors import SpecError, opt
from pvreg.registry.files import remove_path
from pvreg.registry.merge.basefiles import copy_base_files
from pvreg.registry.merge.cuda import compose_device
from pvreg.registry.merge.modelcard import render_model_card
from pvreg.registry.merge.plan import Plan, parse_size, prepare
from pvreg.registry.merge.spec import build_spec
from pvreg.registry.merge.writer import (
    ComposeProgress,
    Written,
    write_model,
    write_vector,
)
from pvreg.registry.storage import writes
from pvreg.registry.storage.bases import ResolvedBase
from pvreg.registry.storage.staging import publish_dir, publish_file, staging
from pvreg.registry.storage.store import Store
from pvreg.registry.tensors.hfnames import COMPOSITION_RECORD, MODEL_CARD
from pvreg.registry.version import __version__
from pvreg.schemas.compose import ComposeResult, ComposeSpec, OutputKind
from pvreg.schemas.vector import ParentRef, VectorMeta

#: The staged file name of a vector that is only registered (no ``out``).
_UNNAMED_VECTOR = "vector.safetensors"


def composition_document(plan: Plan, fingerprint: str, written: Written, kind: OutputKind) -> dict[str, Any]:
    """``pvreg-composition.json``: everything needed to reproduce the output (no timestamps)."""
    return {
        "pvreg_version": __version__,
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


def compose(
    store: Store,
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
    device: str = "cpu",
) -> ComposeResult:
    """Merge registered vectors into a base model directory, or into one vector file.

    See :meth:`pvreg.Registry.compose` for the options and what it raises.
    """
    from pvreg.registry.tensors.fingerprint import combine

    full = build_spec(
        spec, method=method, density=density, seed=seed, normalize=normalize, accumulate=accumulate, dtype=dtype
    )
    size = parse_size(shard_size)
    on = compose_device(device)  # an unknown name or a missing GPU fails before anything is read
    out_path = Path(out).expanduser() if out is not None else None
    if register is not None and not vector_only:
        raise SpecError(f"{opt('register')} needs {opt('vector_only', True)} (a composed model is not a vector)")
    if out_path is None and register is None:
        raise SpecError(f"{opt('out')} is required" + (f" (or {opt('register')} NAME)" if vector_only else ""))
    plan = prepare(
        store,
        full,
        base=base,
        need_base=not vector_only,
        out=out_path,
        vector_only=vector_only,
        force=force,
        register=register,
    )
    registered: VectorMeta | None = None
    try:
        target = out_path if out_path is not None else store.settings.pending_dir / _UNNAMED_VECTOR
        with staging(store.settings.pending_dir, target) as (tmp, rewrite):
            if vector_only:
                file = tmp / (out_path.name if out_path is not None else _UNNAMED_VECTOR)
                written = write_vector(plan, file, progress)
                fingerprint = combine(written.entries)
                if out_path is None:
                    assert register is not None  # checked above: one of out/register is given
                    registered = _register(store, plan, file, register)
                else:
                    publish_file(file, out_path, force=force)
                    if register is not None:
                        try:
                            registered = _register(store, plan, out_path, register)
                        except BaseException:
                            remove_path(out_path)  # ours: renamed into place just above
                            raise
            else:
                assert out_path is not None
                written = write_model(plan, tmp, size, progress, store.fingerprint_cache, device=on)
                fingerprint = combine(written.entries)
                written.files.extend(copy_base_files(plan.base_files, tmp, plan.dtype_code))
                info = store.base_info(plan.base_fingerprint)
                (tmp / MODEL_CARD).write_text(render_model_card(plan, info, fingerprint))
                (tmp / COMPOSITION_RECORD).write_text(
                    json.dumps(composition_document(plan, fingerprint, written, "model"), indent=2) + "\n"
                )
                written.files.extend([MODEL_CARD, COMPOSITION_RECORD])
                publish_dir(tmp, out_path, rewrite, force=force)
    finally:
        plan.close()
    kind: OutputKind = "vector" if vector_only else "model"
    cid = store.transaction(
        lambda s: writes.add_composition(
            s,
            method=plan.method.name,
            spec=plan.spec.model_dump(mode="json"),
            base_fingerprint=plan.base_fingerprint,
            output_kind=kind,
            output_path=out_path,
            output_fingerprint=fingerprint,
            result=registered,
            pvreg_version=__version__,
        )
    )
    return ComposeResult(
        out=str(out_path) if out_path is not None else None,
        output_kind=kind,
        output_fingerprint=fingerprint,
        files=sorted(written.files),
        composition_id=cid,
        registered=registered,
        spec=plan.spec,
    )


def _register(store: Store, plan: Plan, file: Path, name: str) -> VectorMeta:
    """Store the composed vector as a new version of ``name`` with its lineage."""
    from pvreg.registry.sources.ingest import CheckpointSource
    from pvreg.registry.tensors.checkpoint import open_checkpoint

    with open_checkpoint(file) as ckpt:
        return store.store_blob(
            CheckpointSource(ckpt, f"composition for {name}"),
            writes.NewVersion(
                name=name,
                stats=None,
                base=ResolvedBase(plan.base_fingerprint),
                kind="compose",
                provenance=plan.spec.model_dump(mode="json"),
                parents=[
                    ParentRef(ref=i.meta.ref, sha256=i.meta.sha256, coefficient=i.term.coefficient) for i in plan.inputs
                ],
                message=f"compose {' '.join(f'{i.meta.ref}:{i.term.coefficient:g}' for i in plan.inputs)}",
            ),
        )
