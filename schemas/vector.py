"""Metadata of stored vectors and of the registry's maintenance reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["file", "pair", "finetuned", "lora", "compose"]
State = Literal["active", "deprecated"]


class ParentRef(BaseModel):
    """A lineage edge: which version this one was made from, and with what weight."""

    model_config = ConfigDict(extra="ignore")

    ref: str = Field(description="name@version of the parent when it was used")
    sha256: str
    coefficient: float | None = None


class VectorMeta(BaseModel):
    """Everything pvreg knows about one stored version of a preference vector.

    ``sha256`` and ``size_bytes`` describe the canonical blob (tensors sorted
    by name, no file metadata), so they identify the tensor content whatever
    file it came from; ``sign`` is +1 when the delta points toward the named
    preference and -1 when it was trained in the opposite direction.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    version: int
    sha256: str
    size_bytes: int
    base_fingerprint: str
    dataset: str | None = None
    sign: Literal[1, -1] = 1
    norm: float
    tensor_norms: dict[str, float] = Field(default_factory=dict)
    dtype: str
    num_tensors: int
    num_params: int
    kind: Kind = "file"
    provenance: dict[str, Any] = Field(default_factory=dict)
    parents: list[ParentRef] = Field(default_factory=list)
    message: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime
    state: State = "active"
    description: str | None = None
    #: LoRA-sourced vectors: the blob holding the exact LoRA factors (A, B, scale per module), for export-lora.
    factors_sha256: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ListEntry(VectorMeta):
    """The latest version of a name, with how many versions it has."""

    versions: int
    base_label: str | None = None


class BaseModelInfo(BaseModel):
    fingerprint: str
    label: str | None = None
    hub_id: str | None = None
    architecture: str | None = None
    num_tensors: int | None = None
    num_params: int | None = None
    local_path: str | None = None


class VerifyProblem(BaseModel):
    ref: str
    problem: str


class VerifyReport(BaseModel):
    checked: int
    problems: list[VerifyProblem] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class GcReport(BaseModel):
    removed_blobs: list[str] = Field(default_factory=list)
    removed_temp: list[str] = Field(default_factory=list)
    freed_bytes: int = 0
    #: Pending markers that named paths pvreg does not create: reported, never acted on.
    ignored: list[str] = Field(default_factory=list)
    # A dry run on a database that lists no versions: removed_blobs is what only
    # ``gc --all-unreferenced`` would delete (a real run without it is refused).
    needs_all_unreferenced: bool = False
