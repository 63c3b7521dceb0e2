"""What ``pvreg train`` reads and returns: options, per-run metrics, and the provenance shape.

A preference vector is trained as two DPO runs from one base — θ+ on the pairs and
θ− on the same pairs with chosen and rejected swapped — with identical options.
:class:`TrainOptions` is those options (validated here so the CLI, the Python API
and recorded provenance agree on one set of names and limits); :class:`PairResult`
is what :func:`pvreg.registry.training.train_pair` returns and what the registration
records as provenance (:meth:`PairResult.provenance`).
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pvreg.schemas.vector import VectorMeta

Method = Literal["lora", "full"]
#: The containers preference data is read from, and the three row layouts (pvreg.registry.training.data).
DataFormat = Literal["jsonl", "json", "parquet", "datasets"]
DataLayout = Literal["prompt/chosen/rejected", "chosen/rejected", "positive/negative"]
#: The two DPO runs of a pair: θ+ on the pairs, θ− on them with chosen and rejected swapped.
Run = Literal["positive", "negative"]
#: Learning rates used when ``lr`` is not given: LoRA adapters need ~10x the full fine-tune's rate.
DEFAULT_LR: dict[str, float] = {"full": 5e-6, "lora": 5e-5}


class TrainOptions(BaseModel):
    """Hyperparameters shared by the θ+ and θ− runs (both get exactly these).

    ``steps`` and ``epochs`` are exclusive; with neither, one epoch is trained.
    Epochs are rounded up to whole optimizer steps of ``batch_size * grad_accum``
    pairs, so every step sees a full batch. ``lr=None`` means the method's default
    (:data:`DEFAULT_LR`); :meth:`resolved` fills it in for provenance.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = "lora"
    steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0)
    beta: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=4, description="Tokens of prompt + completion; longer completions are cut")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of pairs held out for eval metrics")
    max_eval_pairs: int | None = Field(
        default=256,
        ge=1,
        description="Evaluate on at most this many of the held-out pairs (None: all); the rest stay unseen",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads during training (None: torch's default); 1 is fastest for tiny models "
        "and on a machine whose cores are busy",
    )
    chat_template: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="auto: use the tokenizer's chat template when it has one; plain-string pairs are then "
        "wrapped as one user turn (prompt) and one assistant turn (completion)",
    )
    precompute_ref: bool = Field(
        default=True,
        description="Compute the frozen reference's log-probs once up front instead of every step "
        "(full: no second model copy in memory during training)",
    )
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_targets: list[str] | None = Field(
        default=None, description="Module names for LoRA; None = every linear layer except the output head"
    )

    @field_validator("epochs", "lr", "beta", "lora_alpha")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one module name, or None for every linear layer")
            if any(not t.strip() for t in v):
                raise ValueError("module names must not be empty")
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainOptions:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self

    @property
    def effective_lr(self) -> float:
        """The learning rate the runs use: ``lr``, else the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def resolved(self) -> TrainOptions:
        """A copy with ``lr`` filled in (and ``epochs=1`` when neither steps nor epochs was given)."""
        update: dict[str, Any] = {"lr": self.effective_lr}
        if self.steps is None and self.epochs is None:
            update["epochs"] = 1.0
        return self.model_copy(update=update)


class TrainOptionsKwargs(TypedDict, total=False):
    """:class:`TrainOptions` as keyword arguments (``Registry.train(..., steps=30, lr=1e-3)``), typed for IDEs."""

    method: Method
    steps: int
    epochs: float
    lr: float
    beta: float
    batch_size: int
    grad_accum: int
    max_length: int
    seed: int
    eval_fraction: float
    max_eval_pairs: int
    device: Literal["cpu", "cuda"]
    threads: int
    chat_template: Literal["auto", "on", "off"]
    precompute_ref: bool
    lora_rank: int
    lora_alpha: float
    lora_targets: list[str]


class PreferenceDataInfo(BaseModel):
    """Which data a vector was trained on, as recorded in provenance."""

    path: str
    sha256: str = Field(description="Of the file's bytes; for a datasets directory, of its sorted file manifest")
    format: DataFormat
    layout: DataLayout = Field(
        description="prompt/chosen/rejected: explicit prompt; the other two are full texts or conversations "
        "split at their common prefix"
    )
    conversational: bool = Field(description="Pairs are chat-message lists rather than plain strings")
    rows: int = Field(description="Number of preference pairs read")
    label: str | None = None


class RunMetrics(BaseModel):
    """One DPO run (θ+ or θ−): how it went, measured by TRL on its own data."""

    run: Run
    steps: int
    train_loss: float = Field(description="DPO loss of the last optimizer step")
    mean_train_loss: float = Field(description="Mean DPO loss over all steps")
    eval_loss: float | None = Field(default=None, description="DPO loss on the held-out pairs after training")
    eval_reward_accuracy: float | None = Field(
        default=None, description="Share of held-out pairs whose implicit reward prefers this run's chosen side"
    )
    eval_reward_margin: float | None = None
    train_rows: int = Field(description="Pairs in the training split")
    seen_rows: int = Field(description="Distinct training pairs the steps consumed (all of them after an epoch)")
    eval_rows: int = Field(description="Held-out pairs evaluated")
    data_sha256: str = Field(
        description="sha256 of the (prompt, chosen, rejected) rows in the order the trainer consumed them"
    )
    train_seconds: float = Field(description="Time inside the optimizer loop")
    seconds_per_step: float
    wall_seconds: float = Field(description="Whole run: model load, data preparation, training, eval, save")


class PairResult(BaseModel):
    """What :func:`pvreg.registry.training.train_pair` produced: θ+ and θ− plus how they were made."""

    method: Method
    artifact: Literal["model", "lora"] = Field(
        description="model: HF model directories (safetensors); lora: PEFT adapter directories"
    )
    positive_dir: str
    negative_dir: str
    base: str
    options: TrainOptions = Field(description="Resolved options (lr filled in)")
    data: PreferenceDataInfo
    chat_template: bool = Field(description="Whether the tokenizer's chat template was applied")
    positive: RunMetrics
    negative: RunMetrics
    versions: dict[str, str] = Field(description="trl, transformers, torch, peft, datasets, accelerate")
    device: str
    wall_seconds: float

    def provenance(self) -> dict[str, Any]:
        """JSON-ready record for the vector's provenance (no temporary work paths)."""
        doc = self.model_dump(mode="json", exclude={"positive_dir", "negative_dir"})
        return {"training": doc}


class TrainResult(BaseModel):
    """``Registry.train``'s result: the registered vector plus the training record."""

    vector: VectorMeta
    training: PairResult
