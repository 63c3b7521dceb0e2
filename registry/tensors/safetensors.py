"""Tensor I/O: a validating safetensors reader, checkpoints, and a streaming writer.

Why our own parser: a registry must reject malformed files with a precise
message before trusting any byte, must hash raw tensor bytes without creating
tensors, and must map files that are far larger than RAM.  Tensors are exposed
as zero-copy views on a private (copy-on-write) memory map, so reading a model
costs page cache, not heap.  PyTorch ``.bin`` checkpoints are read only through
``torch.load(weights_only=True)``: a pickle that needs code execution is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import InvalidTensorFileError
from pvreg.registry.files import AtomicFile
from pvreg.registry.tensors.dtypes import DTYPES, torch_dtype
from pvreg.registry.tensors.inputfile import open_regular

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Dimensions, offsets and byte sizes must stay below 2**63: torch sizes and strides are int64.
INT_LIMIT = 2**63
#: No real tensor comes close; a header with 10^5 dimensions is an attack on whoever reads it.
MAX_RANK = 64
#: The format's integers are u64 (at most 20 digits); longer literals are refused before Python converts them.
_MAX_INT_DIGITS = len(str(2**64 - 1))


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


# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: a name holding one
# breaks the one-line messages and listings that print it, and no model has such a name.
_BAD_NAME_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def tensor_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a tensor name, or None when it can.

    Applied to every input format alike (safetensors headers, ``.bin`` state
    dict keys): a name must be a non-empty string that UTF-8 can encode (JSON
    lets a header spell a lone surrogate, ``"\\ud800"``, which the reference
    reader then refuses in our blob) and that holds no control character.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate U+{ord(name[exc.start]):04X}, which UTF-8 cannot encode"
    bad = _BAD_NAME_CHAR.search(name)
    if bad:
        return f"contains the control character U+{ord(bad.group()):04X}"
    return None


def shown(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: names and values from a file may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it saw twice (``json`` keeps the last one silently).

    Every object the header decoder returns is one, so ``isinstance(x, _Object)``
    is the "is a JSON object" test that also tells the type checker about ``duplicates``.
    """

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice: list[str] = []
        for k, _ in pairs:
            if k in seen:
                twice.append(k)
            seen.add(k)
        obj.duplicates = tuple(twice)
    return obj


class _HeaderSyntax(Exception):
    """Raised from inside the JSON decoder's hooks; becomes an InvalidTensorFileError."""


def _int_literal(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        raise _HeaderSyntax(
            f"header holds a {digits}-digit integer (safetensors integers have at most {_MAX_INT_DIGITS})"
        )
    return int(text)


def _constant(text: str) -> Any:
    raise _HeaderSyntax(f"header holds {text}, which is not JSON")


def _decode_header(path: Path, raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded integers and nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"header is not JSON (invalid UTF-8 at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_object, parse_int=_int_literal, parse_constant=_constant)
    except _HeaderSyntax as exc:
        raise _fail(path, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"header is not JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise _fail(path, "header JSON is nested too deeply") from None
    except ValueError as exc:  # anything else the decoder refuses
        raise _fail(path, f"header is not JSON ({exc.__class__.__name__})") from None


def _read_header(path: Path) -> tuple[bytes, int]:
    """The raw JSON header bytes and the file size, read from a regular file only."""
    with open_regular(path, InvalidTensorFileError) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"file is {size} bytes, shorter than the 8-byte header length")
            (hlen,) = struct.unpack("<Q", prefix)
            if hlen > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {hlen} exceeds the 100 MB limit")
            if 8 + hlen > size:
                raise _fail(path, f"header length {hlen} runs past the end of the {size}-byte file")
            raw = f.read(hlen)
        except OSError as exc:
            raise InvalidTensorFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) != hlen:
        raise _fail(path, "the file shrank while its header was read")
    return raw, size


def parse_header(path: Path) -> tuple[dict[str, _Slot], dict[str, str], int]:
    """Read and validate a safetensors header without touching tensor data.

    Returns the tensor slots in file order, the ``__metadata__`` dict, and the
    file size.  Every field's type and range is checked here, not left to
    whatever later reads it (torch, the writer): a structural defect of any
    kind is an :class:`InvalidTensorFileError` naming the file and the tensor.
    """
    raw, size = _read_header(path)
    header = _decode_header(path, raw)
    if not isinstance(header, _Object):
        raise _fail(path, "header is not a JSON object")
    if header.duplicates:
        # json keeps the last entry; other readers may keep the first: the file means two things.
        twice = header.duplicates[0]
        what = "__metadata__" if twice == "__metadata__" else f"tensor {shown(twice)}"
        raise _fail(path, f"{what} appears twice in the header")
    metadata = _parse_metadata(path, header.pop("__metadata__", None))
    data_start = 8 + len(raw)
    data_len = size - data_start
    slots = [_parse_entry(path, name, entry, data_start) for name, entry in header.items()]
    # Zero-size tensors may share an offset with the next tensor: order by (begin, end), as the reference does.
    slots.sort(key=lambda s: (s.start, s.info.nbytes))
    cursor = data_start
    for slot in slots:
        if slot.start != cursor:
            why = "overlap" if slot.start < cursor else "leave a gap"
            raise _fail(path, f"tensor {shown(slot.info.name)} data offsets {why} with the previous tensor")
        cursor += slot.info.nbytes
    if cursor != size:
        raise _fail(path, f"tensor data covers {cursor - data_start} of {data_len} data bytes")
    return {s.info.name: s for s in slots}, metadata, size


def _parse_metadata(path: Path, metadata: Any) -> dict[str, str]:
    if metadata is None:  # absent or null, as the reference reader allows
        return {}
    if not isinstance(metadata, _Object):
        raise _fail(path, f"__metadata__ must map strings to strings, not be a JSON {_json_type(metadata)}")
    if metadata.duplicates:
        raise _fail(path, f"__metadata__ has the key {shown(metadata.duplicates[0])} twice")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _fail(
                path, f"__metadata__ must map strings to strings ({shown(key)} maps to a JSON {_json_type(value)})"
            )
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _fail(
                    path, f"__metadata__ entry {shown(key)} contains a lone surrogate, which UTF-8 cannot encode"
                ) from None
    return dict(metadata)


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    for kind, word in (
        (bool, "boolean"),
        (dict, "object"),
        (list, "array"),
        (str, "string"),
        (int, "integer"),
        (float, "number"),
    ):
        if isinstance(value, kind):
            return word
    return type(value).__name__


def _index(value: Any) -> bool:
    """A JSON unsigned integer pvreg accepts: a real int (``true`` is an int in Python), 0 <= v < 2**63."""
    return type(value) is int and 0 <= value < INT_LIMIT


def _shape_problem(shape: Any, itemsize: int) -> str | None:
    if not isinstance(shape, list):
        return f"it is a JSON {_json_type(shape)}, not an array"
    if len(shape) > MAX_RANK:
        return f"it has {len(shape)} dimensions (at most {MAX_RANK})"
    for i, d in enumerate(shape):
        if type(d) is not int:
            return f"dimension {i} is a JSON {_json_type(d)}, not an integer"
        if not 0 <= d < INT_LIMIT:
            return f"dimension {i} ({shown(d, 40)}) is outside 0 <= n < 2**63"
    # torch computes strides and storage sizes over every dimension, zero or not, in int64.
    extent = math.prod(max(d, 1) for d in shape) * itemsize
    if extent >= INT_LIMIT:
        return "its dimensions multiply to 2**63 bytes or more"
    return None


def _parse_entry(path: Path, name: str, entry: Any, data_start: int) -> _Slot:
    where = f"tensor {shown(name)}"
    problem = tensor_name_problem(name)
    if problem:
        raise _fail(path, f"tensor name {shown(name)} {problem}")
    if not isinstance(entry, _Object):
        raise _fail(path, f"entry for {where} is not an object")
    if entry.duplicates:
        raise _fail(path, f"entry for {where} has the key {shown(entry.duplicates[0])} twice")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _fail(path, f"{where} has no {key!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(path, f"{where} has unknown dtype {shown(dtype, 40)}")
    itemsize = DTYPES[dtype][0]
    problem = _shape_problem(shape, itemsize)
    if problem:
        raise _fail(path, f"{where} has an invalid shape {shown(shape, 60)}: {problem}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(_index(o) for o in offsets) and offsets[0] <= offsets[1]
    ):
        raise _fail(
            path,
            f"{where} has invalid data_offsets {shown(offsets, 60)}: "
            "expected [begin, end] with integers 0 <= begin <= end < 2**63",
        )
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise _fail(
            path,
            f"{where} spans {offsets[1] - offsets[0]} bytes but {dtype}{shown(shape, 60)} needs {expected}",
        )
    info = TensorInfo(name=name, dtype=dtype, shape=tuple(shape), nbytes=expected)
    return _Slot(info=info, start=data_start + offsets[0])


class SafetensorsFile:
    """One validated safetensors file, memory-mapped privately."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._slots, self.metadata, self.size = parse_header(path)
        self._mmap: mmap.mmap | None = None
        self._address: int | None = None  # of the mapping, for page-cache residency checks
        self._lock = threading.Lock()  # fingerprinting reads tensors from several threads

    @property
    def infos(self) -> dict[str, TensorInfo]:
        return {n: s.info for n, s in self._slots.items()}

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mmap is None:
                with open_regular(self.path, InvalidTensorFileError) as f:
                    if os.fstat(f.fileno()).st_size != self.size:
                        # Mapping a shorter file would turn a later read into SIGBUS, a longer one into
                        # bytes the header never described.
                        raise InvalidTensorFileError(f"{self.path}: the file changed size since its header was read")
                    # ACCESS_COPY gives a writable private view, which torch.frombuffer
                    # needs; pages are shared with the page cache until written.
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                    from pvreg.registry.tensors import pagecache  # ctypes: only once a tensor is read

                    self._address = pagecache.base_address(self._mmap)
            return self._mmap

    def raw(self, name: str) -> memoryview:
        slot = self._slots[name]
        return memoryview(self._map())[slot.start : slot.start + slot.info.nbytes]

    def tensor(self, name: str) -> torch.Tensor:
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

    def prefetch(self, name: str) -> None:
        """Start reading the tensor's pages into the page cache, without waiting (``MADV_WILLNEED``).

        The kernel reads ahead while the caller computes something else; the
        pages are not mapped into this process, so RSS does not grow.  A tensor
        already cached gets no advice (:mod:`pagecache`: the advice would still
        walk all its pages).
        """
        slot = self._slots[name]
        if slot.info.nbytes == 0:
            return
        mapping = self._map()
        from pvreg.registry.tensors import pagecache

        if self._address is not None and pagecache.cached(self._address, slot.start, slot.info.nbytes):
            return
        start = slot.start // mmap.PAGESIZE * mmap.PAGESIZE
        with contextlib.suppress(OSError):  # advice only: never a reason to fail
            mapping.madvise(mmap.MADV_WILLNEED, start, slot.start + slot.info.nbytes - start)

    def close(self) -> None:
        if self._mmap is not None:
            with contextlib.suppress(BufferError):  # a tensor view is still alive; the map goes with it
                self._mmap.close()
            self._mmap = None


# --- writing ---------------------------------------------------------------


def build_header(entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> bytes:
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


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when contiguous."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data  # the array's own buffer, as a memoryview


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
        header = build_header(entries, metadata)
        self.size = len(header) + sum(math.prod(s) * DTYPES[c][0] for _, c, s in entries)
        self._file = AtomicFile(target, overwrite=overwrite, size_hint=self.size)
        self._emit(header)

    def _emit(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._file.write(data)

    def write(self, name: str, data: torch.Tensor | memoryview | bytes) -> None:
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

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


#: Elements per reduction chunk (see :func:`iter_chunks`).
CHUNK_ELEMENTS = 1 << 18


def iter_chunks(t: torch.Tensor, elements: int = CHUNK_ELEMENTS) -> Iterator[torch.Tensor]:
    """Flat chunks of a tensor, to bound temporaries of reductions.

    2^18 elements keeps a float64 temporary (2 MiB) in cache: reductions over
    such chunks ran about 10x faster here than over 2^22-element ones, whose
    temporaries spill to memory.
    """
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), elements):
        yield flat[i : i + elements]
