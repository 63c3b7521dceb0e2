"""How pvreg lays vectors out in a Hub model repo: ``<name>/vector.safetensors`` + ``<name>/pvreg.json``, and the card.

What is published never carries the publisher's machine: :func:`published`
takes the provenance through :func:`pvreg.registry.sources.public.public_meta` (the one
owner of that rule), and the card is rendered from what :func:`published` returns.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import IntegrityError
from pvreg.registry.sources.public import public_meta
from pvreg.schemas.hub import HubBaseInfo, HubVectorFile
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store


BLOB_FILE = "vector.safetensors"


META_FILE = "pvreg.json"


#: LoRA-sourced vectors: their exact factors blob, as stored (see pvreg.registry.serving.factors).
FACTORS_FILE = "lora-factors.safetensors"


CARD_FILE = "README.md"


# Fields of pvreg.json that must agree with the metadata embedded in the blob.
MUST_AGREE = (
    "name",
    "version",
    "sha256",
    "size_bytes",
    "base_fingerprint",
    "dataset",
    "sign",
    "dtype",
    "kind",
    "factors_sha256",
)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def json_bytes(model: HubVectorFile) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def published(store: Store, meta: VectorMeta) -> tuple[VectorMeta, HubVectorFile]:
    """The metadata as published: local aliases dropped; provenance and base facts without local paths."""
    public = public_meta(meta).model_copy(update={"aliases": []})
    info = store.base_info(meta.base_fingerprint)
    base = HubBaseInfo(
        fingerprint=meta.base_fingerprint,
        hub_id=info.hub_id if info else None,
        label=info.label if info else None,
        architecture=info.architecture if info else None,
    )
    return public, HubVectorFile(**public.model_dump(), base=base)


def factors_path(store: Store, meta: VectorMeta) -> Path | None:
    """The stored factors blob of a LoRA-sourced version (None for other vectors)."""
    from pvreg.registry.errors import NotFoundError

    if meta.factors_sha256 is None:
        return None
    path = store.blobs.path(meta.factors_sha256)
    if not path.is_file():
        raise NotFoundError(
            f"{meta.ref}: LoRA factors blob sha256:{meta.factors_sha256[:12]} is missing from the store (run pvreg verify)"
        )
    return path


def parse_vector_file(data: bytes, label: str) -> HubVectorFile:
    from pydantic import ValidationError

    try:
        return HubVectorFile.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
        raise IntegrityError(f"{label}: not valid pvreg metadata at {where}: {first.get('msg')}") from None


def vector_dirs(root: Path) -> dict[str, Path]:
    """name -> pvreg.json path for every ``<name>/pvreg.json`` in a snapshot folder."""
    out: dict[str, Path] = {}
    if root.is_dir():
        for p in sorted(root.glob(f"*/{META_FILE}")):
            out[p.parent.name] = p
    return out
