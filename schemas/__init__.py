"""Pydantic models that cross a boundary: files, JSON output, Hub metadata, specs.

These are public: ``VectorMeta`` is embedded in every exported blob and printed
by ``--json`` commands, so its keys only ever grow.
"""

from pvreg.schemas.vector import (
    BaseModelInfo,
    GcReport,
    ListEntry,
    ParentRef,
    VectorMeta,
    VerifyProblem,
    VerifyReport,
)

__all__ = [
    "BaseModelInfo",
    "GcReport",
    "ListEntry",
    "ParentRef",
    "VectorMeta",
    "VerifyProblem",
    "VerifyReport",
]
