"""Self-describing export: the canonical blob with its metadata embedded.

The data section is copied unchanged from the blob, so re-adding an exported
file canonicalises back to the same sha256 and restores the metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pvreg.registry.fsutil import AtomicFile
from pvreg.registry.tensorio import SafetensorsFile, build_header
from pvreg.schemas import VectorMeta


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
