"""The non-weight files of a base directory (config, tokenizer, ...) that a merged model carries."""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from pvreg.registry.tensors.hfnames import (
    COMPOSITION_RECORD,
    MODEL_CARD,
    WEIGHT_SUFFIXES,
)


def base_files(src: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The non-weight files of a base dir to copy (config, tokenizer, ...), and the problems found.

    Returns ``(relative name, file to read)`` pairs, recursing into
    sub-directories, without the weights, indexes, hidden files, the base's own
    README.md and composition record.  Symbolic links are followed (a Hub cache
    snapshot is made of them) and their *content* is copied; anything that is
    not a regular file once links are followed (a FIFO would block the copy, a
    device never ends) or a link loop is a problem, found before any output is
    written.
    """
    files: list[tuple[str, Path]] = []
    problems: list[str] = []
    seen_dirs: set[Path] = set()

    def walk(directory: Path, prefix: str) -> None:
        real = directory.resolve()
        if real in seen_dirs:
            problems.append(f"{directory}: directory link loop in the base model directory")
            return
        seen_dirs.add(real)
        for p in sorted(directory.iterdir()):
            name = p.name
            if name.startswith(".") or (
                not prefix
                and (name.endswith((*WEIGHT_SUFFIXES, ".index.json")) or name in (MODEL_CARD, COMPOSITION_RECORD))
            ):
                continue
            try:
                st = p.stat()
            except OSError as exc:
                problems.append(f"{p}: cannot be read ({exc.strerror or exc})")
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(p, f"{prefix}{name}/")
            elif stat.S_ISREG(st.st_mode):
                files.append((prefix + name, p))
            else:
                problems.append(
                    f"{p}: not a regular file (a FIFO, socket or device); remove it from the base directory"
                )

    walk(src, "")
    return files, problems


def copy_base_files(files: Sequence[tuple[str, Path]], dst: Path, dtype: str | None) -> list[str]:
    """Copy :func:`base_files`' list into ``dst``; returns the top-level names written."""
    from pvreg.registry.tensors.dtypes import dtype_name

    for rel, src in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    cfg = dst / "config.json"
    if dtype is not None and cfg.is_file():
        # The stored dtype changed: say so, or transformers would upcast/downcast on load.
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(cfg.read_text())
            key = "dtype" if "dtype" in data or "torch_dtype" not in data else "torch_dtype"
            data[key] = dtype_name(dtype)
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return sorted({rel.split("/", 1)[0] for rel, _ in files})
