"""Pydantic models that cross a boundary: files, JSON output, Hub metadata, specs.

These are public: ``VectorMeta`` is embedded in every exported blob and printed
by ``--json`` commands, so its keys only ever grow.

Names load on first use (PEP 562): building pydantic classes costs start-up
time, and ``pvreg list`` needs only the vector schemas, not the Hub or compose ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "BaseModelInfo": "vector",
    "GcReport": "vector",
    "ListEntry": "vector",
    "ParentRef": "vector",
    "VectorMeta": "vector",
    "VerifyProblem": "vector",
    "VerifyReport": "vector",
    "ComposeResult": "compose",
    "ComposeSpec": "compose",
    "ComposeTerm": "compose",
    "CompositionRecord": "compose",
    "HubBaseInfo": "hub",
    "HubVectorFile": "hub",
    "PulledVector": "hub",
    "PullResult": "hub",
    "PushedVector": "hub",
    "PushResult": "hub",
    "RemoteListing": "hub",
    "RemoteVector": "hub",
}

# A literal (not ``sorted(_WHERE)``) so static tools see the names; it lists exactly _WHERE's keys.
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
    "PullResult",
    "PulledVector",
    "PushResult",
    "PushedVector",
    "RemoteListing",
    "RemoteVector",
    "VectorMeta",
    "VerifyProblem",
    "VerifyReport",
]

if TYPE_CHECKING:
    from pvreg.schemas.compose import (
        ComposeResult,
        ComposeSpec,
        ComposeTerm,
        CompositionRecord,
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
    from pvreg.schemas.vector import (
        BaseModelInfo,
        GcReport,
        ListEntry,
        ParentRef,
        VectorMeta,
        VerifyProblem,
        VerifyReport,
    )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pvreg.schemas' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pvreg.schemas.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
