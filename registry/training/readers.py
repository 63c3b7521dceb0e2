"""Read the records of a preference-data file, whatever its container, and hash what was read.

Each reader returns the raw records (one mapping per row, with its 1-based row
number) plus the sha256 of the bytes it parsed, so the hash recorded in provenance
is the hash of exactly the data trained on. Container problems — a file that is not
what its extension says, invalid JSON on some line, a directory that is not a
``datasets`` ``save_to_disk`` output — are :class:`PreferenceDataError` lines naming
the file (and the row where there is one). pyarrow and ``datasets`` are imported only
for the formats that need them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import NotFoundError, PreferenceDataError

if TYPE_CHECKING:
    from pvreg.schemas.training import DataFormat

__all__ = ["SUFFIXES", "Records", "read_records"]

#: File suffix -> format name; a directory is read as a ``datasets`` save.
SUFFIXES: dict[str, DataFormat] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Records:
    """Raw rows of one file: ``rows`` holds ``(row number, record)``; ``columns`` is set for columnar formats."""

    format: DataFormat
    sha256: str
    rows: list[tuple[int, Any]]
    columns: list[str] | None


def read_records(path: Path) -> Records:
    """The records of ``path``: JSON Lines, a JSON array, a parquet file or a ``datasets`` directory."""
    if not path.exists():
        raise NotFoundError(f"{path}: no such preference data file or directory")
    if path.is_dir():
        return _read_datasets_dir(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise PreferenceDataError(
            f"{path}: unsupported preference data file type {path.suffix or '(no suffix)'!r}; "
            "give .jsonl, .json, .parquet or a datasets save_to_disk directory"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PreferenceDataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if fmt == "parquet":
        return _read_parquet(path, data, digest)
    text = _utf8(path, data)
    return _read_jsonl(path, text, digest) if fmt == "jsonl" else _read_json(path, text, digest)


def _utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PreferenceDataError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); is it really a {path.suffix} file?"
        ) from None


def _read_jsonl(path: Path, text: str, digest: str) -> Records:
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except ValueError as exc:
            raise PreferenceDataError(
                f"{path}: row {number}: not valid JSON ({_json_reason(exc)}); is it really a JSON Lines file?"
            ) from None
    return Records("jsonl", digest, rows, None)


def _read_json(path: Path, text: str, digest: str) -> Records:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        hint = "; a file of one JSON object per line should be named .jsonl" if "Extra data" in str(exc) else ""
        raise PreferenceDataError(f"{path}: not a valid JSON document ({_json_reason(exc)}){hint}") from None
    if not isinstance(doc, list):
        raise PreferenceDataError(f"{path}: expected a JSON array of pair objects, got a JSON {_json_type(doc)}")
    return Records("json", digest, list(enumerate(doc, start=1)), None)


def _json_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def _json_type(value: Any) -> str:
    return {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _read_parquet(path: Path, data: bytes, digest: str) -> Records:
    if len(data) < 12 or data[:4] != _PARQUET_MAGIC or data[-4:] != _PARQUET_MAGIC:
        raise PreferenceDataError(f"{path}: not a parquet file (no PAR1 magic at its start and end)")
    from pvreg.registry.training.extra import require

    require("pyarrow", "reading parquet preference data")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PreferenceDataError(f"{path}: unreadable parquet file ({_first_line(exc)})") from None
    return Records("parquet", digest, list(enumerate(table.to_pylist(), start=1)), list(table.column_names))


def _read_datasets_dir(path: Path) -> Records:
    if (path / "dataset_dict.json").is_file():
        kind = "dict"
    elif (path / "state.json").is_file():
        kind = "dataset"
    else:
        raise PreferenceDataError(
            f"{path}: a directory, but not a datasets save_to_disk directory (no state.json or dataset_dict.json)"
        )
    from pvreg.registry.training.extra import require

    require("datasets", "reading a datasets directory")
    import datasets

    digest = _manifest_sha256(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ArrowInvalid, JSON errors)
        raise PreferenceDataError(f"{path}: unreadable datasets directory ({_first_line(exc)})") from None
    if kind == "dict":
        splits = list(loaded.keys())
        if "train" in splits:
            loaded = loaded["train"]
        elif len(splits) == 1:
            loaded = loaded[splits[0]]
        else:
            raise PreferenceDataError(
                f"{path}: a DatasetDict without a 'train' split; its splits are {', '.join(splits)} "
                "(save the split to train on by itself)"
            )
    rows = [(i, loaded[i - 1]) for i in range(1, loaded.num_rows + 1)]
    return Records("datasets", digest, rows, list(loaded.column_names))


def _manifest_sha256(root: Path) -> str:
    """sha256 over every file's relative path and sha256, in sorted order: the directory's content identity."""
    outer = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{file.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
