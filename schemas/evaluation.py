"""Results of ``pvreg eval`` / ``pvreg sweep`` and of the vector similarity and diff reports.

These cross a boundary (``--json`` output, rows the sweep stores), so their keys
only ever grow.  Floats that can be undefined (the cosine of a zero vector, a
relative change from a zero tensor) are ``None`` rather than NaN: JSON has no NaN.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EvalKind = Literal["pairs", "text", "choices"]
GroupBy = Literal["tensor", "layer", "module-type"]


class MetricValue(BaseModel):
    """A point estimate with its percentile-bootstrap confidence interval.

    ``n`` is the number of independent units the interval resamples (pairs,
    texts, questions), not the number of tokens; ``level`` is the interval's
    coverage (0.95 by default).
    """

    model_config = ConfigDict(extra="ignore")

    value: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=1)
    level: float = 0.95

    @field_validator("value", "ci_low", "ci_high")
    @classmethod
    def _finite(cls, v: float) -> float:
        # A NaN would not survive JSON, and an Inf metric means a bug upstream, not a measurement.
        if not math.isfinite(v):
            raise ValueError(f"metric values must be finite, got {v}")
        return v


class EvalResult(BaseModel):
    """The metrics of one model (a base plus a composition, or one sweep point) on one eval set."""

    model_config = ConfigDict(extra="ignore")

    kind: EvalKind
    eval_set: str = Field(description="the eval file as given")
    eval_set_sha256: str | None = Field(default=None, description="sha256 of the eval file's bytes")
    n_items: int = Field(ge=0, description="items evaluated (pairs, texts, questions)")
    metrics: dict[str, MetricValue]
    spec: str | None = Field(default=None, description="the composition evaluated, as compose tokens")
    coefficients: dict[str, float] = Field(
        default_factory=dict, description="η of each swept or applied vector at this point"
    )
    base_fingerprint: str | None = None
    seed: int = 0
    n_bootstrap: int = 1000


class GroupStats(BaseModel):
    """Similarity statistics of N vectors over one group of entries (all, one tensor, one layer, ...).

    Matrices are N×N in the order of :attr:`SimilarityReport.vectors`; a tensor a
    vector lacks counts as zeros (pvreg leaves all-zero tensors out of blobs).
    """

    model_config = ConfigDict(extra="ignore")

    group: str
    numel: int = Field(description="entries in the group (the union of the vectors' tensors)")
    norms: list[float] = Field(description="‖v‖₂ of each vector over the group")
    touched: list[float] = Field(description="share of the group's entries each vector changes (≠ 0)")
    cosine: list[list[float | None]] = Field(description="cos(vᵢ, vⱼ); None where a norm is 0")
    sign_agreement: list[list[float | None]] = Field(
        description="share of entries, among those both vectors touch, where their signs agree; None if none"
    )


class SimilarityReport(BaseModel):
    """Cosine similarity, norms, sign agreement and touched share between vectors."""

    model_config = ConfigDict(extra="ignore")

    vectors: list[str] = Field(description="labels of the vectors, in matrix order")
    whole: GroupStats
    group_by: GroupBy | None = None
    groups: list[GroupStats] = Field(default_factory=list)


class TensorDiff(BaseModel):
    """How one tensor changed from vector ``a`` to vector ``b``."""

    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[int]
    norm_a: float
    norm_b: float
    rel_change: float | None = Field(description="‖b−a‖/‖a‖; None when ‖a‖ = 0")
    cosine: float | None = Field(description="cos(a, b); None when either norm is 0")
    max_abs_diff: float
    identical: bool = Field(description="every entry equal (after conversion to float64)")


class ShapeChange(BaseModel):
    """A tensor present in both vectors with different shapes (not comparable entry-wise)."""

    name: str
    shape_a: list[int]
    shape_b: list[int]


class DiffSummary(BaseModel):
    """The whole-vector view of a diff; tensors only in one vector count as zeros in the other."""

    norm_a: float
    norm_b: float
    rel_change: float | None = Field(description="‖b−a‖/‖a‖ over all comparable entries; None when ‖a‖ = 0")
    cosine: float | None
    tensors_compared: int
    tensors_identical: int
    tensors_changed: int
    only_in_a: int
    only_in_b: int
    shape_changed: int


class DiffReport(BaseModel):
    """Semantic difference between two vectors, tensor by tensor."""

    model_config = ConfigDict(extra="ignore")

    a: str
    b: str
    tensors: list[TensorDiff] = Field(description="tensors in both with equal shapes, sorted by name")
    only_in_a: list[str]
    only_in_b: list[str]
    shape_changed: list[ShapeChange] = Field(default_factory=list)
    summary: DiffSummary


# --- stored evaluations (``pvreg eval``, ``pvreg evals``, ``pvreg sweep``) ----------------------------------------------

TargetKind = Literal["model", "composition"]


class EvalSetInfo(BaseModel):
    """One eval set as an evaluation saw it: what identifies it (label, kind, sha256) and how much was scored."""

    model_config = ConfigDict(extra="ignore")

    label: str = Field(description="the LABEL of --pairs/--text/--choices [LABEL=]PATH (default: the file name)")
    kind: EvalKind
    sha256: str = Field(description="sha256 of the file's bytes (a datasets directory: of its manifest)")
    n_items: int = Field(ge=0, description="items scored (after --limit)")
    path: str | None = Field(default=None, description="the path as given (local; never published)")


class EvalTarget(BaseModel):
    """What was evaluated: a model directory by fingerprint, or a composition applied on a base."""

    model_config = ConfigDict(extra="ignore")

    kind: TargetKind
    model_fingerprint: str | None = Field(default=None, description="the --model directory's fingerprint")
    base_fingerprint: str | None = Field(default=None, description="the base the composition was applied on")
    spec: dict[str, Any] | None = Field(
        default=None, description="the resolved ComposeSpec (name@version refs with sha256, coefficients, options)"
    )


class EvaluationRecord(BaseModel):
    """One stored evaluation: a target measured on one or more eval sets.

    ``metrics`` maps each eval set's label to its metrics (``accuracy``,
    ``perplexity``, ...); ``scalar_metrics`` holds lm-evaluation-harness results
    (``task/metric`` -> value, no interval).  ``key`` identifies what was
    measured (target, eval set sha256s, options that change numbers) so a sweep
    re-run finds points it has already measured.
    """

    model_config = ConfigDict(extra="ignore")

    id: int | None = None
    created_at: datetime | None = None
    key: str
    target: EvalTarget
    eval_sets: list[EvalSetInfo]
    metrics: dict[str, dict[str, MetricValue]]
    scalar_metrics: dict[str, float] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    refs: list[str] = Field(default_factory=list, description="name@version of each vector in the spec")
    sweep: str | None = Field(default=None, description="the sweep this point belongs to (its axes), if any")
    pvreg_version: str
    seconds: float | None = Field(default=None, description="wall time of the measurement")
    reused: bool = Field(default=False, description="a sweep point found already stored, not measured again")


class SweepPoint(BaseModel):
    """One point of a sweep: its coefficients and the evaluation that measured it."""

    coefficients: dict[str, float]
    evaluation: EvaluationRecord


class SweepResult(BaseModel):
    """What ``pvreg sweep`` did: every point (measured or reused) and the files it wrote."""

    axes: list[str] = Field(description="the swept vectors, name@version, in grid order")
    fixed: dict[str, float] = Field(default_factory=dict)
    points: list[SweepPoint]
    measured: int
    reused: int
    out: str | None = None
    files: list[str] = Field(default_factory=list)
    complete: bool = True
