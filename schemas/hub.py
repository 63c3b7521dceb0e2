"""What pvreg publishes to, and reports about, a Hugging Face Hub model repo.

Repo layout: ``<name>/vector.safetensors`` (the exported blob, ``VectorMeta``
embedded), ``<name>/pvreg.json`` (a :class:`HubVectorFile`) and ``README.md``.
``HubVectorFile`` is a ``VectorMeta`` plus a format marker and public facts
about the base model, so older readers that parse it as ``VectorMeta`` still
work (unknown keys are ignored).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pvreg.schemas.vector import VectorMeta

HUB_FORMAT = 1


class HubBaseInfo(BaseModel):
    """Public facts about the base model (never a local path)."""

    model_config = ConfigDict(extra="ignore")

    fingerprint: str
    hub_id: str | None = None
    label: str | None = None
    architecture: str | None = None


class HubVectorFile(VectorMeta):
    """The content of ``<name>/pvreg.json``: the version's metadata as pushed."""

    pvreg_hub_format: int = HUB_FORMAT
    base: HubBaseInfo | None = None


class RemoteVector(BaseModel):
    """One vector available in a Hub repo (read from its ``pvreg.json``)."""

    name: str
    version: int = Field(description="the version number in the registry it was pushed from")
    sha256: str
    size_bytes: int
    base_fingerprint: str
    base_model: str | None = None
    dataset: str | None = None
    sign: Literal[1, -1] = 1
    norm: float
    dtype: str
    kind: str = "file"
    path: str = Field(description="path of the blob in the repo")
    local_refs: list[str] = Field(default_factory=list, description="local versions with the same sha256")


class RemoteListing(BaseModel):
    repo: str
    revision: str
    commit_sha: str
    vectors: list[RemoteVector] = Field(default_factory=list)


class PushedVector(BaseModel):
    ref: str
    sha256: str
    path: str
    changed: bool = Field(description="false when identical bytes were already at that path")


class PushResult(BaseModel):
    repo: str
    revision: str
    endpoint: str
    commit_sha: str
    committed: bool = Field(description="false when nothing changed and no commit was made")
    commit_url: str | None = None
    created_repo: bool = False
    vectors: list[PushedVector] = Field(default_factory=list)


class PulledVector(BaseModel):
    remote_name: str
    remote_version: int
    path: str
    meta: VectorMeta
    registered: bool = Field(description="false when that sha256 was already registered under the name")


class PullResult(BaseModel):
    repo: str
    revision: str
    endpoint: str
    commit_sha: str
    vectors: list[PulledVector] = Field(default_factory=list)
