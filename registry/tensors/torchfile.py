"""PyTorch pickle checkpoints (``.bin``, ``.pt``): loaded without code execution, and never misread.

Two hazards, two rules.  A pickle can run code, so only ``torch.load(weights_only=True)``
reads one.  And ``torch.load(mmap=True)`` is not a faster ``torch.load``: it slices each
storage straight out of the file at its zip record's offset, for the length the pickle
declares, without looking at the record.  A DEFLATE-compressed record (a checkpoint
re-zipped with ``zipfile.ZIP_DEFLATED``) is then reinterpreted as tensor bytes, and a
record shorter than its storage runs on into the next one; neither is an error, the
values are simply garbage.  So a memory-mapped load is kept only when every storage is
proven to sit exactly on a stored (uncompressed) record of its own length; anything else
(compressed or encrypted records, zips the two readers disagree on, legacy non-zip files)
is loaded without mmap, through torch's zip reader, exactly as plain ``torch.load`` does.
"""

from __future__ import annotations

import mmap
import pickle
import struct
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import InvalidTensorFileError, UnsafeCheckpointError
from pvreg.registry.tensors.dtypes import TORCH_NAME_TO_CODE
from pvreg.registry.tensors.inputfile import check_regular, open_regular
from pvreg.registry.tensors.safetensors import (
    MAX_RANK,
    TensorInfo,
    shown,
    tensor_bytes,
    tensor_name_problem,
)

if TYPE_CHECKING:
    import torch

_LOCAL_HEADER = b"PK\x03\x04"  # torch only treats a file as a zip checkpoint when it starts with this


class TorchFile:
    """A PyTorch pickle checkpoint, its tensors held (memory-mapped where that is faithful)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tensors = load_torch_weights_only(path)
        self.infos = {
            name: TensorInfo(
                name,
                TORCH_NAME_TO_CODE[str(t.dtype).removeprefix("torch.")],
                tuple(t.shape),
                t.numel() * t.element_size(),
            )
            for name, t in self._tensors.items()
        }

    def tensor(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def raw(self, name: str) -> memoryview:
        return tensor_bytes(self._tensors[name])

    def close(self) -> None:
        self._tensors = {}


def load_torch_weights_only(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.bin``/``.pt`` file, checked name by name and tensor by tensor.

    Raises:
        NotFoundError: no such file.
        InvalidTensorFileError: not a regular file, not loadable, or not a mapping of
            valid names to dense CPU tensors of a supported dtype.
        UnsafeCheckpointError: the pickle needs code execution (it is never run).
    """
    check_regular(path, InvalidTensorFileError)
    records = _stored_records(path)
    if records is not None:
        try:
            tensors = _state_dict(path, _torch_load(path, mmap=True))
        except UnsafeCheckpointError:
            raise
        except InvalidTensorFileError:
            tensors = None  # let the reference path (no mmap) decide what is wrong
        if tensors is not None and _mapped_faithfully(tensors.values(), records):
            return tensors
        del tensors  # unmap before reading the file again
    return _state_dict(path, _torch_load(path, mmap=False))


def _torch_load(path: Path, *, mmap: bool) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns on stderr about pickle protocols, storages, ...: one error line, or nothing.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message is a multi-line essay with ANSI codes; keep the line that names the global.
        text = str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "").strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["forbidden content"]
        first = next(
            (ln[ln.index("Unsupported") :].split(" was not", 1)[0] for ln in lines if "Unsupported" in ln), lines[0]
        )
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle needs code execution or unsupported objects ({first[:160]})"
        ) from None
    except Exception as exc:  # torch raises RuntimeError/KeyError/EOFError/RecursionError for junk
        # The first line only: torch appends C++ stack traces to some messages.
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InvalidTensorFileError(
            f"{path}: not a loadable PyTorch checkpoint ({exc.__class__.__name__}{': ' + first if first else ''})"
        ) from None


def _stored_records(path: Path) -> dict[int, int] | None:
    """File offset -> length of each data record that torch's mmap path reads verbatim.

    None when memory-mapping is off the table: not a zip checkpoint, a data record
    that is compressed or encrypted, or any disagreement between Python's zip reader
    and torch's (duplicate names, a different offset or size for a record).
    """
    import torch

    try:
        with open_regular(path, InvalidTensorFileError) as f:
            if f.read(4) != _LOCAL_HEADER:
                return None
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
            names = [i.filename for i in infos]
            if not names or len({n.lower() for n in names}) != len(names):
                return None
            reader = torch._C.PyTorchFileReader(str(path))
            prefix = names[0].split("/", 1)[0] + "/"  # torch's archive folder: the first entry's
            records: dict[int, int] = {}
            for info in infos:
                name = info.filename.removeprefix(prefix)
                if not info.filename.startswith(prefix) or not name.startswith("data/"):
                    continue
                if (
                    info.compress_type != zipfile.ZIP_STORED
                    or info.flag_bits & 1
                    or info.compress_size != info.file_size
                ):
                    return None
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != _LOCAL_HEADER:
                    return None
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + name_len + extra_len
                # torch's stub (torch/_C/__init__.pyi) lacks get_record_offset, which torch.load(mmap=True) itself calls.
                at = reader.get_record_offset(name)  # type: ignore[attr-defined]
                if at != offset or reader.get_record_size(name) != info.file_size:
                    return None
                if offset in records:
                    return None  # two records over the same bytes
                records[offset] = info.file_size
            return records
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        RuntimeError,
        OSError,
        ValueError,
        struct.error,
        EOFError,
        NotImplementedError,
        AttributeError,
    ):  # AttributeError: a torch without these reader methods
        return None  # the reference path reports what is wrong


def _mapped_faithfully(tensors: Iterable[torch.Tensor], records: Mapping[int, int]) -> bool:
    """Whether every storage of a ``mmap=True`` load is exactly one stored record.

    Every storage is a slice of one private mapping of the whole file, so its address
    is the mapping's (page-aligned) base plus its record's offset.  The base is the one
    page-aligned shift that puts every storage on a record start; when exactly one
    exists, each storage must span exactly its record (a shorter record would make it
    read the bytes that follow).  Anything unproven counts as unfaithful.
    """
    spans: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        size = storage.nbytes()
        if size == 0:
            continue  # nothing is read
        ptr = storage.data_ptr()
        if spans.setdefault(ptr, size) != size:
            return False
    if not spans:
        return True
    ptrs = sorted(spans)
    bases = {ptrs[0] - off for off in records if (ptrs[0] - off) % mmap.PAGESIZE == 0}
    for ptr in ptrs[1:]:
        bases = {b for b in bases if ptr - b in records}
        if not bases:
            return False
    if len(bases) != 1:
        return False
    base = bases.pop()
    return all(records[ptr - base] == size for ptr, size in spans.items())


def _state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping in a loaded checkpoint, every key and tensor checked."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InvalidTensorFileError(
            f"{path}: checkpoint is not a mapping of names to tensors (it holds a value of type {type(obj).__name__})"
        )
    return {_checked_name(path, key): _checked_tensor(path, key, value) for key, value in obj.items()}


def _checked_name(path: Path, key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidTensorFileError(
            f"{path}: checkpoint is not a mapping of names to tensors (key {shown(key)} is of type {type(key).__name__})"
        )
    problem = tensor_name_problem(key)
    if problem:
        raise InvalidTensorFileError(f"{path}: tensor name {shown(key)} {problem}")
    return key


def _checked_tensor(path: Path, name: str, t: Any) -> torch.Tensor:
    """A dense CPU tensor of a supported dtype whose values are all really stored."""
    import torch

    where = f"{path}: tensor {shown(name)}"
    if not isinstance(t, torch.Tensor):
        raise InvalidTensorFileError(
            f"{path}: checkpoint is not a mapping of names to tensors ({shown(name)} is of type {type(t).__name__})"
        )
    if t.is_nested or t.layout != torch.strided:
        kind = "nested" if t.is_nested else str(t.layout).removeprefix("torch.")
        raise InvalidTensorFileError(f"{where} is a {kind} tensor; only dense tensors are supported")
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in TORCH_NAME_TO_CODE:
        raise InvalidTensorFileError(f"{where} has unsupported dtype {dtype}")
    if t.device.type != "cpu":
        raise InvalidTensorFileError(f"{where} is on device {t.device.type} and holds no data")
    if t.dim() > MAX_RANK:
        raise InvalidTensorFileError(f"{where} has {t.dim()} dimensions (at most {MAX_RANK})")
    dense = t.numel() * t.element_size()
    stored = t.untyped_storage().nbytes()
    if dense > stored:
        # An expanded (stride-0) view: a few stored bytes standing for any number of values.
        raise InvalidTensorFileError(
            f"{where} is an expanded view ({dense} bytes of values over {stored} stored bytes); "
            "save it with .contiguous()"
        )
    return t.resolve_neg() if t.is_neg() else t
