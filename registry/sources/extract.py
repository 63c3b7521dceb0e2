"""Making preference vectors from checkpoints (``pvreg add --positive/--negative/--finetuned/--lora``).

Three sources, one shape of result (:class:`Made`):

* ``pair``: φ = θ+ − θ−, two full checkpoints trained from the same base with
  chosen/rejected swapped (arXiv:2504.20106).  Both must have exactly the
  base's tensor names and shapes.
* ``finetuned``: φ = θft − θbase.
* ``lora``: the dense ΔW of one PEFT LoRA adapter (only adapted tensors).

When ``--positive`` and ``--negative`` are both LoRA adapter directories the
vector is φ = ΔW+ − ΔW− (= θ+ − θ− of the merged models) and its kind is
``pair``: the kind says how φ relates to the preference, and
``provenance["input_format"] == "lora"`` records that the inputs were adapters.
The vector then covers the union of the tensors either adapter touches.

How it works: every structural check (tensor names, shapes, floating dtypes,
adapter configs) runs before any tensor data is read.  Then one hashing pass
(:func:`fingerprint.checkpoint_entries`, cached per file) gives the input
fingerprints for provenance *and* the per-tensor digests: equal dtype and equal
sha256 mean bit-identical tensors, i.e. an exactly zero delta.  Those tensors
are left out of the blob (whose header is written up front) and counted in the
provenance.  Finally :func:`ingest.write_blob` pulls one tensor at a time from
the returned source: the difference is computed in float32 (float64 if an
input is float64) from zero-copy views of the memory-mapped inputs, cast to the
stored dtype, and the input pages are dropped again after the tensor is written,
so memory stays at a few times the largest tensor.

Stored dtype: ``float32``, ``bfloat16`` or ``float16``; by default float32 when
every input tensor is float32 (or float64), bfloat16 otherwise.  The relative
error the cast introduced, ‖φstored − φexact‖ / ‖φexact‖ accumulated in float64
over all tensors, is recorded as ``storage_relative_error`` (0.0 when nothing
was rounded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.errors import UserError, opt
from pvreg.registry.sources.adapters import _lora_vector
from pvreg.registry.sources.dense import _dense_finetuned, _dense_pair
from pvreg.registry.sources.diffs import Made
from pvreg.registry.tensors.dtypes import parse_dtype
from pvreg.registry.tensors.hfnames import ADAPTER_CONFIG

if TYPE_CHECKING:
    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.tensors.fingerprint import FingerprintCache

__all__ = ["Made", "build_source"]


# --------------------------------------------------------------------------- entry point


def build_source(
    resolved: ResolvedBase,
    *,
    positive: str | os.PathLike[str] | None,
    negative: str | os.PathLike[str] | None,
    finetuned: str | os.PathLike[str] | None,
    lora: str | os.PathLike[str] | None,
    dtype: str | None,
    cache: FingerprintCache,
) -> Made:
    """Validate the inputs against the base and return a streaming source for φ.

    Raises:
        UserError: bad ``dtype``, missing base weights, incompatible source options.
        BaseMismatchError: an input's tensor names or shapes differ from the base.
        InvalidVectorError: a non-floating tensor, or every delta is exactly zero.
        InvalidTensorFileError / UnsafeCheckpointError / UnsupportedAdapterError:
            an input that cannot be read safely or exactly.
    """
    stored = _parse_dtype(dtype)
    pair_given = positive is not None or negative is not None
    given = [
        k
        for k, v in (
            (f"{opt('positive')}/{opt('negative')}", pair_given),
            (f"{opt('finetuned')}", finetuned is not None),
            (f"{opt('lora')}", lora is not None),
        )
        if v
    ]
    if len(given) != 1:
        raise UserError(
            f"give exactly one of {opt('positive')} DIR {opt('negative')} DIR, {opt('finetuned')} DIR or {opt('lora')} DIR"
            + (
                f" (got {', '.join(given)}); LoRA adapters may themselves be given as {opt('positive')}/{opt('negative')}"
                if given
                else ""
            )
        )
    if pair_given:
        if positive is None or negative is None:
            missing = f"{opt('negative')}" if negative is None else f"{opt('positive')}"
            raise UserError(f"{opt('positive')} and {opt('negative')} go together: {missing} is missing")
        pos, neg = Path(positive), Path(negative)
        pos_lora, neg_lora = _is_adapter(pos), _is_adapter(neg)
        if pos_lora != neg_lora:
            which, other = (pos, neg) if pos_lora else (neg, pos)
            raise UserError(
                f"{which} is a LoRA adapter but {other} is a full checkpoint; give two adapters or two checkpoints"
            )
        if pos_lora:
            return _lora_vector(resolved, [("positive", pos, 1.0), ("negative", neg, -1.0)], stored, cache)
        return _dense_pair(resolved, pos, neg, stored, cache)
    if finetuned is not None:
        ft = Path(finetuned)
        if _is_adapter(ft):
            raise UserError(f"{ft} is a LoRA adapter directory; use {opt('lora')} {ft}")
        return _dense_finetuned(resolved, ft, stored, cache)
    assert lora is not None
    return _lora_vector(resolved, [("adapter", Path(lora), 1.0)], stored, cache)


# --------------------------------------------------------------------------- helpers


def _parse_dtype(dtype: str | None) -> str | None:
    return None if dtype is None else parse_dtype(dtype)


def _is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()
