"""Checkpoints: a model or vector as one name -> tensor mapping, whatever its files.

A path may be a ``.safetensors`` or ``.bin`` file, or a directory of shards
(named by an index when there is one).  Every file is checked to be a regular
file before it is opened (a FIFO would block, a device never ends).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from pvreg.registry.errors import (
    InvalidTensorFileError,
    NotFoundError,
    PvregError,
    UserError,
)
from pvreg.registry.tensors.hfnames import INDEXES, NOT_WEIGHTS, WEIGHT_SUFFIXES
from pvreg.registry.tensors.inputfile import file_kind, read_capped
from pvreg.registry.tensors.safetensors import SafetensorsFile, TensorInfo, shown
from pvreg.registry.text import LABEL_MAX

if TYPE_CHECKING:
    import torch

    from pvreg.registry.tensors.torchfile import TorchFile


def _open_reader(file: Path) -> SafetensorsFile | TorchFile:
    if file.suffix == ".safetensors":
        return SafetensorsFile(file)
    from pvreg.registry.tensors.torchfile import TorchFile

    return TorchFile(file)


class Checkpoint:
    """A model or vector checkpoint: one or many safetensors shards, or a ``.bin``.

    Presents a single name -> tensor mapping whatever the layout on disk.
    """

    def __init__(self, source: Path, files: list[Path]) -> None:
        self.source = source
        self.files = files
        self._owner: dict[str, SafetensorsFile | TorchFile] = {}
        self._readers: list[SafetensorsFile | TorchFile] = []
        for file in files:
            reader = _open_reader(file)
            self._readers.append(reader)
            for name in reader.infos:
                if name in self._owner:
                    raise InvalidTensorFileError(
                        f"{source}: tensor {name!r} appears in both {self._owner[name].path.name} and {file.name}"
                    )
                self._owner[name] = reader
        self.infos: dict[str, TensorInfo] = {n: info for r in self._readers for n, info in r.infos.items()}

    @property
    def directory(self) -> Path | None:
        return self.source if self.source.is_dir() else None

    @property
    def metadata(self) -> dict[str, str]:
        """``__metadata__`` of a single-file checkpoint (empty for shards/.bin)."""
        if len(self._readers) == 1 and isinstance(self._readers[0], SafetensorsFile):
            return self._readers[0].metadata
        return {}

    def names(self) -> list[str]:
        return sorted(self.infos)

    def tensor(self, name: str) -> torch.Tensor:
        return self._owner[name].tensor(name)

    def raw(self, name: str) -> memoryview:
        return self._owner[name].raw(name)

    def release(self, name: str) -> None:
        """See :meth:`SafetensorsFile.release`; a no-op for ``.bin`` checkpoints."""
        owner = self._owner[name]
        if isinstance(owner, SafetensorsFile):
            owner.release(name)

    def prefetch(self, name: str) -> None:
        """See :meth:`SafetensorsFile.prefetch`; a no-op for ``.bin`` checkpoints (loaded whole)."""
        owner = self._owner[name]
        if isinstance(owner, SafetensorsFile):
            owner.prefetch(name)

    def file_of(self, name: str) -> Path:
        return self._owner[name].path

    @property
    def num_params(self) -> int:
        return sum(i.numel for i in self.infos.values())

    def close(self) -> None:
        for r in self._readers:
            r.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Real indexes are a few hundred KB; reading a bigger "index" is a way to exhaust memory.
MAX_INDEX_BYTES = 64 * 2**20


def checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a model path: a file, or a directory's shards.

    In a directory, safetensors win over ``.bin``; an index file, when present,
    names the shards (so stray files are ignored).  Every file returned is a
    regular file, checked with ``stat`` before anything opens it: opening a FIFO
    blocks until a writer comes, and a device never ends.
    """
    mode = _mode(path)
    if mode is None:
        raise NotFoundError(f"{path}: no such file or directory")
    if stat.S_ISREG(mode):
        if path.suffix not in WEIGHT_SUFFIXES:
            raise InvalidTensorFileError(f"{path}: unsupported file type (expected .safetensors, .bin, .pt or .pth)")
        return [path]
    if not stat.S_ISDIR(mode):
        raise InvalidTensorFileError(f"{path}: is {file_kind(mode)}, not a weight file or a model directory")
    for index_name, suffix in INDEXES:
        index = path / index_name
        if _mode(index) is not None:
            return _indexed_shards(path, index, suffix)
    for pattern in ("*.safetensors", "*.bin"):
        files = []
        for p in sorted(path.glob(pattern)):
            if p.name.startswith(".") or p.name in NOT_WEIGHTS:
                continue
            mode = _mode(p)
            if mode is None or stat.S_ISDIR(mode):
                continue  # a dangling link or a directory named like a weight file is not a shard
            if not stat.S_ISREG(mode):
                raise InvalidTensorFileError(f"{p}: is {file_kind(mode)}, not a regular file")
            files.append(p)
        if files:
            return files
    raise NotFoundError(f"{path}: no .safetensors or .bin weight files in this directory")


def _mode(path: Path) -> int | None:
    """``st_mode`` following symlinks; None when nothing is there (dangling link, loop)."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise InvalidTensorFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _indexed_shards(directory: Path, index: Path, suffix: str) -> list[Path]:
    """The shard files an index's ``weight_map`` names, each a regular file in ``directory``."""
    raw = read_capped(index, MAX_INDEX_BYTES, InvalidTensorFileError, "checkpoint index")
    try:
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidTensorFileError(f"{index}: not a valid checkpoint index") from None
    if not names:
        raise InvalidTensorFileError(f"{index}: weight_map names no shard")
    files = []
    for name in names:
        # A shard is a file next to the index: "../x" or "/dev/zero" would read outside the model.
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise InvalidTensorFileError(f"{index}: shard name {shown(name)} is not a file name in {directory}")
        if not name.endswith(suffix):
            raise InvalidTensorFileError(f"{index}: shard {shown(name)} is not a {suffix} file")
        file = directory / name
        mode = _mode(file)
        if mode is None or stat.S_ISDIR(mode):
            raise NotFoundError(f"{index}: names missing shard {name}")
        if not stat.S_ISREG(mode):
            raise InvalidTensorFileError(f"{file}: is {file_kind(mode)}, not a regular file")
        files.append(file)
    return files


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    source = Path(path)
    return Checkpoint(source, checkpoint_files(source))


#: A model's config.json is a few KB; anything past this is not one.
MAX_CONFIG_BYTES = 16 * 2**20


def base_config_facts(directory: Path | None) -> dict[str, object]:
    """Architecture and Hub id from a model directory's ``config.json``, if any."""
    import json

    from pvreg.registry.tensors.inputfile import read_capped

    facts: dict[str, object] = {}
    if directory is None:
        return facts
    cfg = directory / "config.json"
    if cfg.is_file():
        try:
            # Best effort, but bounded: a multi-GB (or endless) "config" must not be slurped.
            data = json.loads(read_capped(cfg, MAX_CONFIG_BYTES, UserError, "config").decode("utf-8"))
        except (PvregError, ValueError, RecursionError):
            return facts
        if not isinstance(data, dict):
            return facts
        archs = data.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs else data.get("model_type")
        if _short_text(arch):  # it is shown in listings: one line, no escape sequences
            facts["architecture"] = arch
        name = data.get("_name_or_path")
        if _short_text(name) and name.count("/") == 1 and not Path(name).exists():
            facts["hub_id"] = name
    return facts


def _short_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= LABEL_MAX and value.isprintable()
