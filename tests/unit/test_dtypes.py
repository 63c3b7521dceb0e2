"""The one dtype table (``pvreg.registry.tensors.dtypes``): every spelling a user may type, and every code on disk.

Spellings are checked against the list written out here (what the README promises for
``--dtype``); safetensors codes against what the reference writer, ``safetensors.torch``,
puts in a real file's header; item sizes against torch's own ``itemsize``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from pvreg.registry.errors import InvalidOptionError, InvalidTensorFileError, UserError
from pvreg.registry.tensors.dtypes import (
    DTYPES,
    FLOAT_DTYPES,
    dtype_code,
    dtype_name,
    itemsize,
    parse_dtype,
    torch_dtype,
)
from safetensors.torch import save_file

SPELLINGS = {
    "F32": ["float32", "fp32", "f32", "float"],
    "F16": ["float16", "fp16", "f16", "half"],
    "BF16": ["bfloat16", "bf16"],
    "F64": ["float64", "fp64", "f64", "double"],
}


@pytest.mark.parametrize("code,spelling", [(c, s) for c, ss in SPELLINGS.items() for s in ss])
def test_every_spelling_in_any_case_and_with_surrounding_blanks(code: str, spelling: str) -> None:
    for variant in (spelling, spelling.upper(), spelling.capitalize(), f"  {spelling}\t", spelling.swapcase()):
        assert parse_dtype(variant) == code, variant


@pytest.mark.parametrize("text", ["", " ", "int8", "uint8", "bool", "fp8", "float8_e4m3fn", "F8_E4M3", "bf-16",
                                  "float 32", "fp 16", "float128", "complex64", "32", "torch.float32", "f3 2",
                                  "half-precision", "single"])
def test_refusals_name_the_value_and_the_choices(text: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        parse_dtype(text)
    err = info.value
    assert str(err) == f"invalid dtype {text!r} (expected float32, bfloat16, float16 or float64)"
    assert err.option == "dtype" and err.value == text
    assert isinstance(err, UserError) and isinstance(err, ValueError) and err.exit_code == 2


def test_non_text_is_refused_like_any_other_wrong_value() -> None:
    with pytest.raises(InvalidOptionError, match=r"^invalid dtype 32 \(expected"):
        parse_dtype(32)  # type: ignore[arg-type]


def test_every_spelling_is_a_floating_dtype_a_vector_may_have() -> None:
    assert {parse_dtype(s) for ss in SPELLINGS.values() for s in ss} == FLOAT_DTYPES == set(SPELLINGS)
    for code in FLOAT_DTYPES:
        assert torch_dtype(code).is_floating_point and torch_dtype(code).itemsize >= 2


def _header_dtype(path: Path) -> str:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return header["t"]["dtype"]


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_codes_are_what_the_reference_writer_writes(tmp_path: Path, code: str) -> None:
    dt = torch_dtype(code)
    assert isinstance(dt, torch.dtype)
    path = tmp_path / "t.safetensors"
    save_file({"t": torch.zeros(3, dtype=dt)}, str(path))
    assert _header_dtype(path) == code  # the file format's own name for this dtype
    assert itemsize(code) == dt.itemsize
    assert dtype_name(code) == str(dt).removeprefix("torch.")
    assert dtype_code(dt) == code


@pytest.mark.parametrize("dt", [torch.complex64, torch.complex128, torch.quint8, torch.qint8])
def test_dtypes_safetensors_cannot_store_are_refused_by_name(dt: torch.dtype) -> None:
    name = str(dt).removeprefix("torch.")
    with pytest.raises(InvalidTensorFileError, match=rf"^unsupported tensor dtype {name}$"):
        dtype_code(dt)
