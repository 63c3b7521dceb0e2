"""Base models: a base given as a path or a fingerprint, resolved to what the registry knows of it."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import AmbiguousReferenceError, NotFoundError
from pvreg.registry.refs import HEX64_RE
from pvreg.registry.storage import catalog

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store
    from pvreg.registry.tensors.safetensors import TensorInfo

FP_PREFIX_RE = re.compile(r"[0-9a-f]{8,64}")


@dataclass
class ResolvedBase:
    """A base model as given by the caller, resolved to a fingerprint.

    ``infos`` and ``path`` are known when the weights are at hand (a path was
    given, or the registry's recorded local copy still has the fingerprint).
    """

    fingerprint: str
    infos: Mapping[str, TensorInfo] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def resolve_base(store: Store, base: str | os.PathLike[str]) -> ResolvedBase:
    """A base given as a path (fingerprinted, shapes known) or a fingerprint (prefix).

    Raises:
        NotFoundError: neither an existing path nor a known fingerprint.
        AmbiguousReferenceError: a fingerprint prefix matches several bases.
    """
    from pvreg.registry.tensors.checkpoint import base_config_facts, open_checkpoint
    from pvreg.registry.tensors.fingerprint import fingerprint_checkpoint

    text = os.fspath(base)
    path = Path(text).expanduser()
    if path.exists():
        with open_checkpoint(path) as ckpt:
            fp = fingerprint_checkpoint(ckpt, store.fingerprint_cache)
            directory = ckpt.directory
            facts: dict[str, Any] = {
                "label": (directory or path).name,
                "num_tensors": len(ckpt.infos),
                "num_params": ckpt.num_params,
                "local_path": str(path.resolve()),
                **base_config_facts(directory),
            }
            return ResolvedBase(fp, dict(ckpt.infos), facts, path.resolve())
    lowered = text.lower().removeprefix("sha256:")
    if FP_PREFIX_RE.fullmatch(lowered):
        with store.read() as conn:
            rows = catalog.bases(conn, prefix=lowered)
        if len(rows) > 1:
            raise AmbiguousReferenceError(f"base fingerprint prefix {text!r} matches {len(rows)} bases")
        if rows:
            row = rows[0]
            if row.local_path and Path(row.local_path).exists():
                resolved = resolve_base(store, row.local_path)
                if resolved.fingerprint == row.fingerprint:
                    return resolved
            return ResolvedBase(row.fingerprint)
        if HEX64_RE.fullmatch(lowered):
            return ResolvedBase(lowered)
        raise NotFoundError(f"base {text!r}: no such path, and no known base fingerprint starts with it")
    raise NotFoundError(f"base {text!r}: no such file or directory")
