"""The one dtype table: safetensors codes, item sizes, torch names and every spelling users may type.

Everything that reads, writes, stores or casts tensors asks this module, so
``compose --dtype fp16`` and ``add --dtype fp16`` mean the same thing and a
new dtype is added in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvreg.registry.errors import InvalidOptionError, InvalidTensorFileError

if TYPE_CHECKING:
    import torch

#: safetensors dtype code -> (item size in bytes, torch dtype attribute name).
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
#: The dtypes a preference vector (and a merged weight) may have.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
TORCH_NAME_TO_CODE = {name: code for code, (_, name) in DTYPES.items()}

#: What a user may type for a floating dtype (any case) -> safetensors code.
SPELLINGS: dict[str, str] = {
    "float32": "F32",
    "fp32": "F32",
    "f32": "F32",
    "float": "F32",
    "float16": "F16",
    "fp16": "F16",
    "f16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
    "fp64": "F64",
    "f64": "F64",
    "double": "F64",
}


def parse_dtype(name: str) -> str:
    """The safetensors code of a user-typed floating dtype (``bf16`` -> ``BF16``).

    Raises:
        InvalidOptionError: not a spelling of float32, bfloat16, float16 or float64.
    """
    code = SPELLINGS.get(str(name).strip().lower())
    if code is None:
        raise InvalidOptionError(
            f"invalid dtype {name!r} (expected float32, bfloat16, float16 or float64)", option="dtype", value=name
        )
    return code


def itemsize(code: str) -> int:
    return DTYPES[code][0]


def dtype_name(code: str) -> str:
    """Human/torch spelling of a safetensors dtype code (``BF16`` -> ``bfloat16``)."""
    return DTYPES[code][1]


def torch_dtype(code: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPES[code][1])


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype.

    Raises:
        InvalidTensorFileError: a dtype safetensors cannot store (complex, quantised, ...).
    """
    name = str(dtype).removeprefix("torch.")
    try:
        return TORCH_NAME_TO_CODE[name]
    except KeyError:
        raise InvalidTensorFileError(f"unsupported tensor dtype {name}") from None
