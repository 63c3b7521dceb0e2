"""Tensor I/O: a validating safetensors reader, checkpoints, and a streaming writer.

Why our own parser: a registry must reject malformed files with a precise
message before trusting any byte, must hash raw tensor bytes without creating
tensors, and must map files that are far larger than RAM.  Tensors are exposed
as zero-copy views on a private (copy-on-write) memory map, so reading a model
costs page cache, not heap.  PyTorch ``.bin`` checkpoints are read only through
``torch.load(weights_only=True)``: a pickle that needs code execution is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import (
    InvalidTensorFileError,
    NotFoundError,
    UnsafeCheckpointError,
)
from pvreg.registry.fsutil import AtomicFile

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype code -> (item size in bytes, torch dtype attribute name)
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "U16": (2, "uint16"),
    "U32": (4, "uint32"),
    "U64": (8, "uint64"),
    "BOOL": (1, "bool"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
TORCH_NAME_TO_CODE = {name: code for code, (_, name) in DTYPES.items()}


def torch_dtype(code: str) -> "torch.dtype":
    import torch

    return getattr(torch, DTYPES[code][1])


def dtype_code(dtype: "torch.dtype") -> str:
    name = str(dtype).removeprefix("torch.")
    try:
        return TORCH_NAME_TO_CODE[name]
    except KeyError:
        raise InvalidTensorFileError(f"unsupported tensor dtype {name}") from None


def dtype_name(code: str) -> str:
    """Human/torch spelling of a safetensors dtype code (``BF16`` -> ``bfloat16``)."""
    return DTYPES[code][1]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are and what they mean."""

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Slot:
    info: TensorInfo
    start: int  # absolute file offset


def _fail(path: Path, why: str) -> InvalidTensorFileError:
    return InvalidTensorFileError(f"{path}: not a valid safetensors file: {why}")


def parse_header(path: Path) -> tuple[dict[str, _Slot], dict[str, str], int]:
    """Read and validate a safetensors header without touching tensor data.

    Returns the tensor slots in file order, the ``__metadata__`` dict, and the
    file size.  Every structural defect is reported with the file and reason.
    """
    if path.is_dir():
        raise InvalidTensorFileError(f"{path}: is a directory, expected a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"file is {size} bytes, shorter than the 8-byte header length")
            (hlen,) = struct.unpack("<Q", prefix)
            if hlen > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {hlen} exceeds the 100 MB limit")
            if 8 + hlen > size:
                raise _fail(path, f"header length {hlen} runs past the end of the {size}-byte file")
            raw = f.read(hlen)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidTensorFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings")
    data_start = 8 + hlen
    data_len = size - data_start
    slots: list[_Slot] = []
    for name, entry in header.items():
        slots.append(_parse_entry(path, name, entry, data_start))
    slots.sort(key=lambda s: s.start)
    cursor = data_start
    for slot in slots:
        if slot.start != cursor:
            why = "overlap" if slot.start < cursor else "leave a gap"
            raise _fail(path, f"tensor {slot.info.name!r} data offsets {why} with the previous tensor")
        cursor += slot.info.nbytes
    if cursor != size:
        raise _fail(path, f"tensor data covers {cursor - data_start} of {data_len} data bytes")
    return {s.info.name: s for s in slots}, metadata, size


def _parse_entry(path: Path, name: str, entry: Any, data_start: int) -> _Slot:
    if not isinstance(entry, dict):
        raise _fail(path, f"entry for tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPES[dtype][0]
    if offsets[1] - offsets[0] != expected:
        raise _fail(
            path,
            f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}",
        )
    info = TensorInfo(name=name, dtype=dtype, shape=tuple(shape), nbytes=expected)
    return _Slot(info=info, start=data_start + offsets[0])


class SafetensorsFile:
    """One validated safetensors file, memory-mapped privately."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._slots, self.metadata, self.size = parse_header(path)
        self._mmap: mmap.mmap | None = None

    @property
    def infos(self) -> dict[str, TensorInfo]:
        return {n: s.info for n, s in self._slots.items()}

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY gives a writable private view, which torch.frombuffer
                # needs; pages are shared with the page cache until written.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if self.size else None  # type: ignore[assignment]
        assert self._mmap is not None
        return self._mmap

    def raw(self, name: str) -> memoryview:
        slot = self._slots[name]
        return memoryview(self._map())[slot.start : slot.start + slot.info.nbytes]

    def tensor(self, name: str) -> "torch.Tensor":
        import torch

        slot = self._slots[name]
        if slot.info.nbytes == 0:
            return torch.empty(slot.info.shape, dtype=torch_dtype(slot.info.dtype))
        flat = torch.frombuffer(
            self._map(), dtype=torch_dtype(slot.info.dtype), count=slot.info.numel, offset=slot.start
        )
        return flat.view(slot.info.shape)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they stay in the page cache).

        File-backed pages count toward RSS once touched; releasing them after
        each tensor keeps a pass over a model far larger than RAM at a flat
        footprint.  Views of the tensor must not be used afterwards (a private
        mapping re-reads the file, so they would still see the file's bytes).
        """
        if self._mmap is None:
            return
        slot = self._slots[name]
        page = mmap.PAGESIZE
        start = -(-slot.start // page) * page
        end = (slot.start + slot.info.nbytes) // page * page
        if end > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a tensor view is still alive; the map goes with it
            self._mmap = None


class Checkpoint:
    """A model or vector checkpoint: one or many safetensors shards, or a ``.bin``.

    Presents a single name -> tensor mapping whatever the layout on disk.
    """

    def __init__(self, source: Path, files: list[Path]) -> None:
        self.source = source
        self.files = files
        self._owner: dict[str, SafetensorsFile | _TorchFile] = {}
        self._readers: list[SafetensorsFile | _TorchFile] = []
        for file in files:
            reader: SafetensorsFile | _TorchFile = (
                SafetensorsFile(file) if file.suffix == ".safetensors" else _TorchFile(file)
            )
            self._readers.append(reader)
            for name in reader.infos:
                if name in self._owner:
                    raise InvalidTensorFileError(
                        f"{source}: tensor {name!r} appears in both {self._owner[name].path.name} and {file.name}"
                    )
                self._owner[name] = reader
        self.infos: dict[str, TensorInfo] = {
            n: info for r in self._readers for n, info in r.infos.items()
        }

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

    def tensor(self, name: str) -> "torch.Tensor":
        return self._owner[name].tensor(name)

    def raw(self, name: str) -> memoryview:
        return self._owner[name].raw(name)

    def release(self, name: str) -> None:
        """See :meth:`SafetensorsFile.release`; a no-op for ``.bin`` checkpoints."""
        owner = self._owner[name]
        if isinstance(owner, SafetensorsFile):
            owner.release(name)

    def file_of(self, name: str) -> Path:
        return self._owner[name].path

    @property
    def num_params(self) -> int:
        return sum(i.numel for i in self.infos.values())

    def close(self) -> None:
        for r in self._readers:
            r.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TorchFile:
    """A PyTorch pickle checkpoint loaded without code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tensors = load_torch_weights_only(path)
        self.infos = {
            name: TensorInfo(name, dtype_code(t.dtype), tuple(t.shape), t.numel() * t.element_size())
            for name, t in self._tensors.items()
        }

    def tensor(self, name: str) -> "torch.Tensor":
        return self._tensors[name]

    def raw(self, name: str) -> memoryview:
        import torch

        t = self._tensors[name].contiguous().reshape(-1)
        return memoryview(t.view(torch.uint8).numpy())

    def close(self) -> None:
        self._tensors = {}


def load_torch_weights_only(path: Path) -> dict[str, "torch.Tensor"]:
    """``torch.load`` restricted to tensors and plain containers.

    The weights-only unpickler refuses any global that is not an allow-listed
    tensor type, so a ``__reduce__`` payload never runs.  Zip checkpoints are
    memory-mapped; legacy (pre-zip) files are read without mmap.
    """
    import pickle

    import torch

    if not path.is_file():
        raise NotFoundError(f"{path}: no such file")
    mmap_ok = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as exc:
        # torch's message is a multi-line essay with ANSI codes; keep the line that names the global.
        text = str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "").strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["forbidden content"]
        first = next((ln[ln.index("Unsupported"):].split(" was not", 1)[0] for ln in lines if "Unsupported" in ln), lines[0])
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle needs code execution or unsupported objects ({first[:160]})"
        ) from None
    except Exception as exc:  # torch raises RuntimeError/KeyError/EOFError for junk
        raise InvalidTensorFileError(
            f"{path}: not a loadable PyTorch checkpoint ({exc.__class__.__name__})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InvalidTensorFileError(f"{path}: checkpoint is not a mapping of names to tensors")
    return dict(obj)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a model path: a file, or a directory's shards.

    In a directory, safetensors win over ``.bin``; an index file, when present,
    names the shards (so stray files are ignored).
    """
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise InvalidTensorFileError(
                f"{path}: unsupported file type (expected .safetensors, .bin, .pt or .pth)"
            )
        return [path]
    for index_name, suffix in (
        ("model.safetensors.index.json", ".safetensors"),
        ("pytorch_model.bin.index.json", ".bin"),
    ):
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InvalidTensorFileError(f"{index}: not a valid checkpoint index") from None
            files = [path / n for n in names]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise NotFoundError(f"{index}: names missing shard {missing[0]}")
            return files
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
        if pattern == "*.bin":
            files = [f for f in files if f.name not in ("training_args.bin",)]
        if files:
            return files
    raise NotFoundError(f"{path}: no .safetensors or .bin weight files in this directory")


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    source = Path(path)
    return Checkpoint(source, checkpoint_files(source))


# --- writing ---------------------------------------------------------------


def build_header(
    entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> bytes:
    """Length prefix + JSON header, with data offsets in the order given.

    The JSON is compact and padded with spaces to an 8-byte boundary (as the
    reference implementation does), so tensor data stays aligned.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, code, shape in entries:
        nbytes = math.prod(shape) * DTYPES[code][0]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    body += b" " * (-(len(body) + 8) % 8)
    return struct.pack("<Q", len(body)) + body


def tensor_bytes(t: "torch.Tensor") -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when contiguous."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class StreamingWriter:
    """Writes a safetensors file tensor by tensor after a header fixed up front.

    Memory stays bounded by one tensor whatever the file size.  The file only
    appears at ``target`` on :meth:`commit`; it also returns the sha256 of every
    byte written, so callers never re-read what they wrote.
    """

    def __init__(
        self,
        target: Path,
        entries: list[tuple[str, str, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
        *,
        overwrite: bool = True,
        digest: bool = True,
    ) -> None:
        self._entries = entries
        self._next = 0
        # digest=False: the caller hashes what it needs itself; finish() then returns "".
        self._hash = hashlib.sha256() if digest else None
        self._file = AtomicFile(target, overwrite=overwrite)
        header = build_header(entries, metadata)
        self.size = len(header) + sum(math.prod(s) * DTYPES[c][0] for _, c, s in entries)
        self._emit(header)

    def _emit(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._file.write(data)

    def write(self, name: str, data: "torch.Tensor | memoryview | bytes") -> None:
        expected_name, code, shape = self._entries[self._next]
        if name != expected_name:
            raise AssertionError(f"tensor {name!r} written out of order; expected {expected_name!r}")
        buf = data if isinstance(data, (bytes, memoryview)) else tensor_bytes(data)
        if len(buf) != math.prod(shape) * DTYPES[code][0]:
            raise AssertionError(f"tensor {name!r}: {len(buf)} bytes for {code}{list(shape)}")
        self._emit(buf)
        self._next += 1

    def finish(self) -> str:
        """Check completeness and return the sha256, without publishing the file."""
        if self._next != len(self._entries):
            raise AssertionError(f"{len(self._entries) - self._next} tensors were never written")
        return self._hash.hexdigest() if self._hash is not None else ""

    def commit(self, target: Path | None = None) -> str:
        digest = self.finish()
        self._file.commit(target)
        return digest

    def abort(self) -> None:
        self._file.abort()

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def iter_chunks(t: "torch.Tensor", elements: int = 1 << 18) -> Iterator["torch.Tensor"]:
    """Flat chunks of a tensor, to bound temporaries of reductions.

    2^18 elements keeps a float64 temporary (2 MiB) in cache: reductions over
    such chunks ran about 10x faster here than over 2^22-element ones, whose
    temporaries spill to memory.
    """
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), elements):
        yield flat[i : i + elements]
