"""Pydantic models that cross a boundary: files, JSON output, Hub metadata, specs.

These are public: ``VectorMeta`` is embedded in every exported blob and printed
by ``--json`` commands, so its keys only ever grow.
"""

from pvreg.schemas.compose import ComposeResult, ComposeSpec, ComposeTerm, CompositionRecord
from pvreg.schemas.vector import (
    BaseModelInfo,
    GcReport,
    ListEntry,
    ParentRef,
    VectorMeta,
    VerifyProblem,
    VerifyReport,
)
from pvreg.schemas.hub import (
    HubBaseInfo,
    HubVectorFile,
    PulledVector,
    PullResult,
    PushedVector,
    PushResult,
    RemoteListing,
    RemoteVector,
)

__all__ = [
    "BaseModelInfo",
    "ComposeResult",
    "ComposeSpec",
    "ComposeTerm",
    "CompositionRecord",
    "GcReport",
    "HubBaseInfo",
    "HubVectorFile",
    "ListEntry",
    "ParentRef",
    "PulledVector",
    "PullResult",
    "PushedVector",
    "PushResult",
    "RemoteListing",
    "RemoteVector",
    "VectorMeta",
    "VerifyProblem",
    "VerifyReport",
]
