"""PyTorch checkpoints (``load_torch_weights_only``) read exactly as ``torch.load(weights_only=True)`` reads them.

The reference is torch itself, without mmap; checkpoints are real ``torch.save`` files, some
re-packed record by record (compressed, misaligned, big-endian) as other tools write them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tensors import as_bytes, assert_same, rezip
from pvreg.registry.errors import InvalidTensorFileError
from pvreg.registry.tensors.safetensors import tensor_bytes
from pvreg.registry.tensors.torchfile import load_torch_weights_only

# --- PyTorch checkpoints against torch.load ----------------------------------------------------------------------------


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(6, 8, generator=g)
    return {
        "a.weight": torch.randn(32, 16, generator=g),
        "b.bias": torch.randn(7, generator=g, dtype=torch.float64),
        "c.half": torch.randn(5, 3, generator=g).half(),
        "d.bf16": torch.randn(9, generator=g).bfloat16(),
        "e.tied": shared,                      # two names, one storage
        "f.view": shared[2:4],                 # a view at an offset into it
        "g.transposed": torch.randn(4, 6, generator=g).t(),
        "h.scalar": torch.tensor(2.5),
        "i.empty": torch.zeros(0, 3),
        "j.int": torch.arange(10, dtype=torch.int32),
    }


def _big_endian(name: str, data: bytes) -> bytes:
    if name.endswith("/byteorder"):
        return b"big"
    if name.endswith("/data/0"):
        return np.frombuffer(data, "<f4").byteswap().tobytes()
    return data


def _make(kind: str, tmp: Path) -> Path:
    src = tmp / "src.bin"
    state = _state() if kind != "big-endian" else {"a.weight": torch.randn(32, 16)}
    torch.save(state, src)
    stored, deflated = (lambda i: zipfile.ZIP_STORED), (lambda i: zipfile.ZIP_DEFLATED)
    if kind == "stored":
        return src
    if kind == "deflated":
        return rezip(src, tmp / "deflated.bin", deflated)
    if kind == "mixed-data-deflated":
        return rezip(src, tmp / "mixed.bin", lambda i: zipfile.ZIP_DEFLATED if i.filename.endswith(("/data/0", "/data/2")) else zipfile.ZIP_STORED)
    if kind == "mixed-pickle-deflated":
        return rezip(src, tmp / "mixed2.bin", lambda i: zipfile.ZIP_DEFLATED if i.filename.endswith("data.pkl") else zipfile.ZIP_STORED)
    if kind == "stored-misaligned":
        return rezip(src, tmp / "misaligned.bin", stored)
    if kind == "big-endian":
        return rezip(src, tmp / "big-endian.bin", stored, _big_endian)
    if kind == "legacy":
        torch.save(state, tmp / "legacy.bin", _use_new_zipfile_serialization=False)
        return tmp / "legacy.bin"
    if kind == "wrapped-state-dict":
        torch.save({"state_dict": state, "epoch": 3}, tmp / "wrapped.bin")
        return tmp / "wrapped.bin"
    raise AssertionError(kind)


BIN_KINDS = ["stored", "deflated", "mixed-data-deflated", "mixed-pickle-deflated", "stored-misaligned", "big-endian",
             "legacy", "wrapped-state-dict"]


def _mapped(path: Path) -> bool:
    """Whether this process has ``path`` memory-mapped (observed by the kernel, not by pvreg)."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("kind", BIN_KINDS)
def test_bin_loads_exactly_as_torch_load(tmp_path: Path, kind: str) -> None:
    path = _make(kind, tmp_path)
    reference = torch.load(path, map_location="cpu", weights_only=True)  # the default: no mmap
    reference = reference.get("state_dict", reference)
    ours = load_torch_weights_only(path)
    assert sorted(ours) == sorted(reference)
    for name, ref in reference.items():
        assert_same(ours[name], ref)
        assert bytes(tensor_bytes(ours[name])) == as_bytes(ref)
    if Path("/proc/self/maps").exists():
        # Stored records stay memory-mapped (page cache, not heap); anything compressed is read through the zip.
        assert _mapped(path) == (kind in ("stored", "mixed-pickle-deflated", "stored-misaligned", "big-endian", "wrapped-state-dict")), kind


@pytest.mark.parametrize("cut", [16, -16], ids=["record-shorter", "record-longer"])
def test_bin_record_of_the_wrong_length_is_refused_not_misread(tmp_path: Path, cut: int) -> None:
    """torch's mmap path would read a short record's storage on into the next record's bytes."""
    src = tmp_path / "src.bin"
    torch.save({"a": torch.arange(8.0), "b": torch.arange(100.0, 108.0)}, src)

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("/data/0"):
            return data
        return data[:cut] if cut > 0 else data + b"\0" * -cut
    bad = rezip(src, tmp_path / "bad.bin", lambda i: zipfile.ZIP_STORED, edit)
    with pytest.raises(InvalidTensorFileError, match="record size .* does not match expected size"):
        load_torch_weights_only(bad)


def test_bin_negative_view_is_resolved(tmp_path: Path) -> None:
    path = tmp_path / "neg.bin"
    torch.save({"a": torch.arange(4.0)._neg_view()}, path)
    ours = load_torch_weights_only(path)
    assert not ours["a"].is_neg()
    assert bytes(tensor_bytes(ours["a"])) == as_bytes(-torch.arange(4.0))
