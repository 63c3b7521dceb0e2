"""What ``pvreg export-lora`` returns and records: the adapter it wrote and how far it is from the vector mix.

Errors are relative Frobenius norms against the *dense* combined delta Δ = Σ η·s·φ that
``pvreg compose`` would add (computed from the stored blobs in float32), measured on the
factors as written (after the cast to the adapter's dtype).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pvreg.schemas.compose import ComposeSpec

Target = Literal["peft", "vllm", "sglang", "lorax"]
#: What to do with tensors LoRA cannot express (1-D norms and biases, embeddings, lm_head).
NonLora = Literal["refuse", "drop", "carry"]


class ExportTerm(BaseModel):
    """One input of the export."""

    ref: str
    sha256: str
    coefficient: float
    sign: int
    weight: float = Field(description="η·s (divided by ‖φ‖ with normalize): the factor applied to φ")
    exact: bool = Field(description="true when the vector's stored LoRA factors were used (no SVD)")


class ModuleReport(BaseModel):
    """One LoRA module of the adapter."""

    tensor: str = Field(description="the base tensor, e.g. model.layers.0.self_attn.q_proj.weight")
    rank: int = Field(description="rank written (before any zero padding to a uniform rank)")
    exact_rank: int = Field(description="rank coming from stored LoRA factors, concatenated")
    svd_rank: int = Field(description="rank of the truncated SVD of the dense terms' sum")
    recompressed: bool = Field(description="the concatenation exceeded the rank limit and was re-factorised by SVD")
    norm: float = Field(description="‖Δ‖ of the module's combined delta")
    error: float = Field(description="‖Δ − B·A‖ / ‖Δ‖ of the factors as written")


class DroppedTensor(BaseModel):
    tensor: str
    why: str
    norm: float
    share: float = Field(description="‖Δ_tensor‖ / ‖Δ‖ over the whole composition")


class LoraxAdapter(BaseModel):
    """One vector as its own adapter (``--target lorax``)."""

    id: str = Field(description="the adapter's directory, relative to the export")
    ref: str
    weight: float = Field(description="the LoRAX merge weight, sqrt(|η|): see the README")
    error: float = Field(description="overall relative error of this adapter against s·φ (its sign folded in)")


class LoraExportReport(BaseModel):
    """``export_report.json``: how the adapter was made and what it costs."""

    target: Target
    non_lora: NonLora
    rank: int | None = None
    energy: float | None = None
    max_rank: int | None = Field(default=None, description="rank limit applied (the target's default or --max-rank)")
    dtype: str
    base_model: str | None = Field(default=None, description="base_model_name_or_path written to adapter_config.json")
    terms: list[ExportTerm]
    modules: list[ModuleReport] = Field(default_factory=list)
    dropped: list[DroppedTensor] = Field(default_factory=list)
    carried: list[str] = Field(default_factory=list, description="tensors written as full weights (modules_to_save)")
    uniform_rank: int | None = Field(default=None, description="every module padded to this rank (engine targets)")
    total_norm: float = Field(description="‖Δ‖ of the whole composition")
    overall_error: float = Field(description="‖Δ − Δ_adapter‖ / ‖Δ‖ over every tensor, dropped ones included")
    lora_error: float = Field(description="the same over the LoRA modules only")
    dropped_share: float = Field(description="‖Δ_dropped‖ / ‖Δ‖")
    lorax: list[LoraxAdapter] = Field(default_factory=list)


class LoraExportResult(BaseModel):
    """What one ``export-lora`` run wrote."""

    out: str
    target: Target
    files: list[str] = Field(default_factory=list, description="files written, relative to out")
    output_fingerprint: str = Field(description="sha256 of adapter_model.safetensors")
    composition_id: int
    spec: ComposeSpec
    report: LoraExportReport
