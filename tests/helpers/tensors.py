"""Byte-exact tensor comparison, torch zip re-packing, and a guard against calls that block.

The comparisons work on raw bytes, so NaN payloads, signed zeros and float8 values
count; ``rezip`` rewrites a ``torch.save`` checkpoint record by record the way other
tools do (compressed records, no 64-byte alignment), to test readers against layouts
``torch.save`` itself never writes.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert as_bytes(a) == as_bytes(b)  # bit-exact, NaN and float8 included


def rezip(src: Path, dst: Path, compress: Callable[[zipfile.ZipInfo], int],
          edit: Callable[[str, bytes], bytes] = lambda name, data: data) -> Path:
    """Copy a torch zip checkpoint record by record with Python's zipfile (no 64-byte alignment padding)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, edit(info.filename, zi.read(info)), compress_type=compress(info))
    return dst


def finishes(fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")
