"""The evaluation core of ``pvreg eval`` / ``pvreg sweep`` (issue #15).

- :mod:`.scoring` — batched log-likelihood scoring of completions;
- :mod:`.texts` — perplexity and the reference distributions for KL;
- :mod:`.metrics` — preference, text (perplexity, KL from the base) and
  multiple-choice metrics with bootstrap confidence intervals;
- :mod:`.evalsets` — reading ``--text``, ``--pairs`` and ``--choices`` files;
- :mod:`.grid` — sweep grids (``helpful=-1:2:0.5``) and their product;
- :mod:`.plots` — metric-vs-η lines and two-vector heatmaps;
- :mod:`.similarity` — streaming cosine/norm/sign statistics and ``diff`` of vectors.

Names load on first use (PEP 562), so importing this package costs nothing;
torch, transformers, numpy and matplotlib are imported inside the functions
that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ScoredItem": "scoring",
    "TextScore": "scoring",
    "ReferenceLogprobs": "scoring",
    "score_completions": "scoring",
    "score_texts": "texts",
    "reference_logprobs": "texts",
    "text_windows": "texts",
    "tokenize_items": "scoring",
    "bootstrap_ci": "metrics",
    "score_pairs": "metrics",
    "preference_metrics": "metrics",
    "preference_metrics_from_scores": "metrics",
    "text_metrics": "metrics",
    "choice_metrics": "metrics",
    "choice_predictions": "metrics",
    "PreferencePair": "evalsets",
    "ChoiceItem": "evalsets",
    "read_pairs": "evalsets",
    "read_texts": "evalsets",
    "read_choices": "evalsets",
    "GridAxis": "grid",
    "parse_values": "grid",
    "parse_axis": "grid",
    "parse_grid": "grid",
    "grid_points": "grid",
    "plot_line": "plots",
    "plot_heatmap": "plots",
    "diff": "similarity",
    "layer_of": "similarity",
    "module_type_of": "similarity",
}

# A literal (not ``sorted(_WHERE)``) so static tools see the names; it lists exactly _WHERE's keys.
__all__ = [
    "ChoiceItem",
    "GridAxis",
    "PreferencePair",
    "ReferenceLogprobs",
    "ScoredItem",
    "TextScore",
    "bootstrap_ci",
    "choice_metrics",
    "choice_predictions",
    "diff",
    "grid_points",
    "layer_of",
    "module_type_of",
    "parse_axis",
    "parse_grid",
    "parse_values",
    "plot_heatmap",
    "plot_line",
    "preference_metrics",
    "preference_metrics_from_scores",
    "read_choices",
    "read_pairs",
    "read_texts",
    "reference_logprobs",
    "score_completions",
    "score_pairs",
    "score_texts",
    "text_metrics",
    "text_windows",
    "tokenize_items",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pvreg.registry.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pvreg.registry.evaluation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
