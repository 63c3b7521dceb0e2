"""Self-describing export: the canonical blob with its metadata embedded.

The data section is copied unchanged from the blob, so re-adding an exported
file canonicalises back to the same sha256 and restores the metadata.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import InvalidVectorError, OutputExistsError, PvregError, opt
from pvreg.registry.files import AtomicFile
from pvreg.registry.tensors.safetensors import SafetensorsFile, build_header
from pvreg.schemas.vector import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store


def exported_metadata(meta: VectorMeta) -> dict[str, str]:
    return {"format": "pt", "pvreg": meta.model_dump_json()}


def write_exported(blob: Path, meta: VectorMeta, out: Path, *, overwrite: bool = True) -> None:
    """Write ``out`` atomically; with ``overwrite=False`` an ``out`` that exists by then raises FileExistsError."""
    src = SafetensorsFile(blob)
    infos = src.infos
    names = sorted(infos)
    header = build_header([(n, infos[n].dtype, infos[n].shape) for n in names], exported_metadata(meta))
    data_start = src.size - sum(i.nbytes for i in infos.values())
    src.close()
    with AtomicFile(out, overwrite=overwrite) as dst, open(blob, "rb") as f:
        dst.write(header)
        f.seek(data_start)
        shutil.copyfileobj(f, dst.handle, 16 * 1024 * 1024)
        dst.commit()


def embedded_meta(label: str, metadata: Mapping[str, str]) -> VectorMeta | None:
    """The ``VectorMeta`` a pvreg export carries in its header, or None for a plain file.

    It comes from outside (a file anyone can forge), so besides the schema every text
    field is held to the same rules as local input before any of it is used; errors
    name ``label`` (the file, or the Hub path it was downloaded from).
    """
    raw = metadata.get("pvreg")
    if raw is None:
        return None
    from pydantic import ValidationError

    from pvreg.registry.refs import check_version_text

    try:
        meta = VectorMeta.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidVectorError(
            f"{label}: embedded pvreg metadata is invalid at {where or 'top level'}: {first.get('msg')}"
        ) from None
    try:
        check_version_text(
            meta.name,
            dataset=meta.dataset,
            tags=meta.tags,
            description=meta.description,
            message=meta.message,
            parents=meta.parents,
            aliases=meta.aliases,
        )
    except PvregError as exc:
        raise type(exc)(f"{label}: embedded pvreg metadata: {exc}") from None
    return meta


def export(store: Store, ref: str, out: Path, *, force: bool) -> Path:
    """Write ``ref``'s blob to ``out`` with its ``VectorMeta`` embedded (see :meth:`pvreg.Registry.export`)."""
    from pvreg.registry.storage.outputs import check_output, registry_paths

    meta = store.resolve(ref)
    blob = store.blob_path(meta.ref)
    check_output(out, registry_paths(store.settings))
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(f"{out}: already exists (use {opt('force', True)} to overwrite)")
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory")
    from pvreg.registry.sources.public import public_meta

    try:  # an export may leave this machine: no local paths in its provenance
        write_exported(blob, public_meta(meta), out, overwrite=force)
    except FileExistsError:
        raise OutputExistsError(
            f"{out}: was created while the export was written; left alone (use {opt('force', True)} to overwrite)"
        ) from None
    return out
