"""``add``: a vector file, θ+/θ− checkpoints, a fine-tune or a LoRA adapter, stored as the next version.

A delta file is checked against the base and canonicalised; an exported pvreg
file restores its embedded metadata (name, base, dataset, tags, lineage) and
must still hash to its recorded sha256.  Checkpoint sources are turned into a
streaming difference by :mod:`pvreg.registry.sources.extract`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pvreg.registry.errors import BaseMismatchError, InvalidNameError, InvalidOptionError, UserError, opt
from pvreg.registry.refs import check_name
from pvreg.registry.sources.exported import embedded_meta
from pvreg.registry.storage.store import Store
from pvreg.registry.storage.writes import NewVersion
from pvreg.schemas.vector import VectorMeta


def add_file(
    store: Store,
    name: str | None,
    path: Path,
    *,
    base: str | os.PathLike[str] | None,
    dataset: str | None,
    sign: int | None,
    description: str | None,
    message: str | None,
    tags: dict[str, str],
    progress: Callable[[int], None] | None,
) -> VectorMeta:
    """Store a delta file (safetensors or ``.bin``) as the next version of ``name``."""
    from pvreg.registry.sources.ingest import CheckpointSource, check_plan
    from pvreg.registry.tensors.checkpoint import open_checkpoint

    with open_checkpoint(path) as ckpt:
        e = embedded_meta(str(path), ckpt.metadata)
        if name is None:
            if e is None:
                raise InvalidNameError("a vector name is required (the file carries no pvreg metadata)")
            name = e.name
        if base is None:
            if e is None:
                raise UserError(f"{opt('base')} is required (the file carries no pvreg metadata)")
            base = e.base_fingerprint
        resolved = store.resolve_base(base)
        if e is not None and e.base_fingerprint != resolved.fingerprint:
            raise BaseMismatchError(
                f"{path}: was made for base {e.base_fingerprint[:16]} "
                f"but {opt('base')} has fingerprint {resolved.fingerprint[:16]}",
                expected=e.base_fingerprint,
                actual=resolved.fingerprint,
            )
        source = CheckpointSource(ckpt, str(path))
        check_plan(source.plan(), str(path), resolved.infos)
        new = NewVersion(
            name=name,
            stats=None,
            base=resolved,
            kind=e.kind if e else "file",
            dataset=dataset if dataset is not None else (e.dataset if e else None),
            sign=sign if sign is not None else (e.sign if e else 1),
            description=description if description is not None else (e.description if e else None),
            message=message if message is not None else (e.message if e else None),
            tags={**(e.tags if e else {}), **tags},
            provenance=(
                {**e.provenance, "restored_from": {"ref": e.ref, "path": str(path.resolve())}}
                if e
                else {"source": "file", "path": str(path.resolve())}
            ),
            parents=list(e.parents) if e else [],
        )
        return store.store_blob(source, new, progress=progress, expect_sha256=e.sha256 if e else None)


def add_checkpoints(
    store: Store,
    name: str,
    *,
    base: str | os.PathLike[str],
    positive: str | os.PathLike[str] | None,
    negative: str | os.PathLike[str] | None,
    finetuned: str | os.PathLike[str] | None,
    lora: str | os.PathLike[str] | None,
    dtype: str | None,
    dataset: str | None,
    sign: int,
    description: str | None,
    message: str | None,
    tags: dict[str, str],
    progress: Callable[[int], None] | None,
    provenance: Mapping[str, Any] | None = None,
) -> VectorMeta:
    """Build φ from checkpoints (θ+ − θ−, θft − θbase, or LoRA ΔW) and store it.

    ``provenance``: what the caller knows beyond the inputs (``train`` adds its training record);
    a mapping under a key the inputs' record also has updates that entry rather than replacing it.
    """
    from pvreg.registry.sources import extract

    resolved = store.resolve_base(base)
    made = extract.build_source(
        resolved,
        positive=positive,
        negative=negative,
        finetuned=finetuned,
        lora=lora,
        dtype=dtype,
        cache=store.fingerprint_cache,
    )
    return store.store_blob(
        made.source,
        NewVersion(
            name=name,
            stats=None,
            base=resolved,
            kind=made.kind,
            dataset=dataset,
            sign=sign,
            description=description,
            message=message,
            tags=tags,
            provenance=_merged(made.provenance, provenance or {}),
        ),
        progress=progress,
        after=made.finish,
        factors=made.factors,
    )


def add(
    store: Store,
    name: str | None,
    vector: str | os.PathLike[str] | None,
    *,
    base: str | os.PathLike[str] | None,
    positive: str | os.PathLike[str] | None,
    negative: str | os.PathLike[str] | None,
    finetuned: str | os.PathLike[str] | None,
    lora: str | os.PathLike[str] | None,
    dataset: str | None,
    sign: int | None,
    description: str | None,
    message: str | None,
    tags: dict[str, str],
    dtype: str | None,
    progress: Callable[[int], None] | None,
) -> VectorMeta:
    """Exactly one source, checked, then stored (see :meth:`pvreg.Registry.add`)."""
    sources = {
        opt("vector"): vector is not None,
        f"{opt('positive')}/{opt('negative')}": positive is not None or negative is not None,
        opt("finetuned"): finetuned is not None,
        opt("lora"): lora is not None and positive is None,
    }
    chosen = [k for k, v in sources.items() if v]
    if len(chosen) != 1:
        raise UserError(
            f"give exactly one source: {opt('vector')} FILE, {opt('positive')} DIR {opt('negative')} DIR, "
            f"{opt('finetuned')} DIR or {opt('lora')} DIR" + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if name is not None:
        check_name(name)
    if sign is not None and sign not in (1, -1):
        raise InvalidOptionError(f"invalid sign {sign!r}: must be 1 or -1", option="sign", value=sign)
    if vector is not None:
        return add_file(
            store,
            name,
            Path(vector),
            base=base,
            dataset=dataset,
            sign=sign,
            description=description,
            message=message,
            tags=tags,
            progress=progress,
        )
    if name is None:
        raise InvalidNameError("a vector name is required")
    if base is None:
        raise UserError(f"{opt('base')} is required to build a vector from checkpoints")
    return add_checkpoints(
        store,
        name,
        base=base,
        positive=positive,
        negative=negative,
        finetuned=finetuned,
        lora=lora,
        dtype=dtype,
        dataset=dataset,
        sign=sign or 1,
        description=description,
        message=message,
        tags=tags,
        progress=progress,
    )


def _merged(made: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``made`` updated with ``extra``, one level deep for mappings present in both."""
    out = dict(made)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = {**old, **value} if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out
