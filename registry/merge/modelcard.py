"""The ``README.md`` model card of a composed model.

Hugging Face reads the YAML front matter (``base_model``, ``tags``,
``library_name``) to link the model to its base and index it; the body tells
a human which vectors went in with which coefficients.  No timestamps, so the
same composition gives the same card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from pvreg.registry.merge.compose import Plan
    from pvreg.schemas.vector import BaseModelInfo


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_model_card(plan: Plan, base: BaseModelInfo | None, fingerprint: str) -> str:
    front: dict[str, object] = {}
    if base is not None and base.hub_id:
        front["base_model"] = base.hub_id
    front["tags"] = ["pvreg", "preference-vector", "merge"]
    front["library_name"] = "transformers"
    label = (base.hub_id or base.label) if base is not None else None
    params = ", ".join(f"{k}={v}" for k, v in plan.params.items() if v is not None)
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# Composed model (pvreg)",
        "",
        "Built by [pvreg](https://arxiv.org/abs/2504.20106) as "
        "θ = θ_base + Σ ηᵢ·sᵢ·φᵢ from registered preference vectors.",
        "",
        f"- Base model: {label or 'unknown'} (fingerprint `{plan.base_fingerprint}`)",
        f"- Method: `{plan.method.name}`" + (f" ({params})" if params else ""),
        f"- Normalize: {'yes (each vector scaled to unit L2 norm)' if plan.spec.normalize else 'no'}",
        f"- Accumulation: {plan.spec.accumulate}; output dtype: {plan.spec.dtype or 'as the base'}",
        f"- Output fingerprint: `{fingerprint}`",
        "",
        "## Composition",
        "",
        "| ref | version | sha256 | coefficient | sign | dataset |",
        "|---|---|---|---|---|---|",
    ]
    for i in plan.inputs:
        lines.append(
            f"| {_cell(i.term.ref)} | {i.meta.ref} | `{i.meta.sha256[:12]}` | {i.term.coefficient:g} "
            f"| {i.meta.sign:+d} | {_cell(i.meta.dataset or '-')} |"
        )
    lines += ["", "Full provenance: `pvreg-composition.json`.", ""]
    return "\n".join(lines)
