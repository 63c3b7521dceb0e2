"""Compose specs, results and records: what ``pvreg compose`` reads, returns and stores.

A :class:`ComposeSpec` is both the input format of ``--spec FILE`` and the
provenance pvreg records: the recorded copy has every ``ref`` resolved to
``name@version`` and its ``sha256`` filled in, so it replays exactly.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pvreg.schemas.vector import VectorMeta

Accumulate = Literal["float32", "float64"]
#: What a compose run wrote: a whole model directory, or one vector file.
OutputKind = Literal["model", "vector"]


class ComposeTerm(BaseModel):
    """One ``REF:COEF`` term: η·s·φ with η = ``coefficient``."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(min_length=1, description="NAME, NAME@N, NAME@ALIAS or sha256:HEX")
    coefficient: float = 1.0
    sha256: str | None = Field(
        default=None, description="Expected blob sha256; set in recorded specs, checked when given"
    )

    @field_validator("coefficient")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"coefficient must be finite, got {v}")
        return v


class ComposeSpec(BaseModel):
    """A full composition: terms plus merge options (YAML/JSON ``--spec`` file)."""

    model_config = ConfigDict(extra="forbid")

    terms: list[ComposeTerm] = Field(min_length=1)
    method: str = "linear"
    density: float | None = None
    seed: int | None = None
    normalize: bool = False
    accumulate: Accumulate = "float32"
    dtype: str | None = None


class ComposeResult(BaseModel):
    """What one compose run produced."""

    out: str | None = Field(description="Output directory (model) or file (vector); None if only registered")
    output_kind: OutputKind
    output_fingerprint: str
    files: list[str] = Field(default_factory=list, description="Files written, relative to out for a model")
    composition_id: int
    registered: VectorMeta | None = None
    spec: ComposeSpec


class CompositionRecord(BaseModel):
    """One row of the ``compositions`` table."""

    id: int
    created_at: datetime
    method: str
    spec: dict[str, Any]
    base_fingerprint: str
    output_kind: str
    output_path: str | None = None
    output_fingerprint: str | None = None
    result_version_id: int | None = None
    pvreg_version: str
    kind: str = Field(default="compose", description='"compose", or "lora" for an export-lora run')
    report: dict[str, Any] | None = Field(default=None, description="an export's error report (kind lora)")
