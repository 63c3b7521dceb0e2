"""Measuring one loaded model on its eval sets, and what identifies a measurement.

Shared by ``pvreg eval`` and ``pvreg sweep``: a :class:`Measurer` holds the model,
its tokenizer, the scoring options and the base's reference log-probs (computed
once per text set per base, before any vector is applied), and turns the
current weights into metrics.  :func:`evaluation_key` is the one definition of
"the same measurement" (target, eval sets by sha256, options that change the
numbers), which is what lets a sweep re-run skip points it has already measured.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import DeviceUnavailableError, EvalError, opt

if TYPE_CHECKING:
    from pvreg.registry.evaluation.evalfiles import EvalSet
    from pvreg.schemas.evaluation import EvalTarget, MetricValue


@dataclass(frozen=True)
class ScoreOptions:
    """Options of one measurement.  ``batch_size`` and ``device`` do not change what is measured
    (batched scores equal unbatched ones up to float rounding), so they stay out of the key."""

    limit: int | None = None
    batch_size: int = 8
    device: str | None = None
    seed: int = 0
    n_bootstrap: int = 1000
    kl_top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EvalError(f"{opt(name)} must be a positive integer, got {value!r}")
        if self.kl_top_k is not None and (not isinstance(self.kl_top_k, int) or self.kl_top_k < 1):
            raise EvalError(f"{opt('kl_top_k')} must be a positive integer, got {self.kl_top_k!r}")

    def record(self) -> dict[str, Any]:
        """What is stored with the evaluation."""
        return {
            "limit": self.limit,
            "batch_size": self.batch_size,
            "device": self.device or "cpu",
            "seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "kl_top_k": self.kl_top_k,
        }

    def keyed(self) -> dict[str, Any]:
        """The options that change the numbers."""
        return {"limit": self.limit, "seed": self.seed, "n_bootstrap": self.n_bootstrap, "kl_top_k": self.kl_top_k}


def evaluation_key(
    target: EvalTarget, sets: Sequence[EvalSet], options: ScoreOptions, *, kl: bool, lm_eval: Sequence[str] = ()
) -> str:
    """sha256 over what determines a measurement's numbers (canonical JSON)."""
    doc = {
        "target": target.model_dump(mode="json"),
        "sets": [[s.label, s.kind, s.sha256, len(s.items)] for s in sets],
        "options": options.keyed(),
        "kl": kl,
        "lm_eval": list(lm_eval),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_device(device: str | None) -> None:
    """Refuse a CUDA/MPS device this machine does not have, before any model loads (exit 1)."""
    if device is None or device == "cpu":
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"{opt('device')} {device}: CUDA is not available on this machine")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"{opt('device')} {device}: MPS is not available on this machine")


def load_model(path: Path, device: str | None, what: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local model directory, in eval mode on ``device``; one line on failure."""
    from pvreg.registry.training.runtime import first_line

    if not path.is_dir() or not (path / "config.json").is_file():
        raise EvalError(f"{opt(what)} {os.fspath(path)}: not a model directory (no config.json)")
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tlog = transformers.utils.logging
    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()  # no "loading weights" bars or info lines on the user's terminal
    tlog.disable_progress_bar()
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise EvalError(f"{opt(what)} {os.fspath(path)}: cannot load its tokenizer ({first_line(exc)})") from None
        from pvreg.registry import gcpause

        gcpause.resume()  # scoring allocates per batch for as long as it runs: the collector is needed again
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise EvalError(f"{opt(what)} {os.fspath(path)}: cannot load the model ({first_line(exc)})") from None
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


@dataclass
class Measurer:
    """A loaded model plus everything needed to measure its current weights on the eval sets."""

    model: Any
    tokenizer: Any
    sets: Sequence[EvalSet]
    options: ScoreOptions
    references: dict[str, Any] = field(default_factory=dict)  # text set label -> the base's ReferenceLogprobs
    _items: dict[str, tuple[list[Any], bool | None]] = field(default_factory=dict)

    def compute_references(self, base_model: Any | None = None) -> None:
        """The base's next-token distributions on every text set (for KL); call while the model *is* the base."""
        from pvreg.registry.evaluation.texts import reference_logprobs

        model = base_model if base_model is not None else self.model
        for s in self.sets:
            if s.kind == "text":
                self.references[s.label] = reference_logprobs(
                    model,
                    self.tokenizer,
                    list(s.items),
                    top_k=self.options.kl_top_k,
                    batch_size=self.options.batch_size,
                    device=self.options.device,
                    labels=_labels(s),
                )

    def _pairs(self, s: EvalSet) -> tuple[list[Any], bool | None]:
        """The set's pairs as scoring items (chat conversations rendered once with the tokenizer's template)."""
        if s.label not in self._items:
            from pvreg.registry.evaluation.evalsets import PreferencePair

            pairs = []
            for p in s.items:
                where = f"{s.path}:{p.row}"
                if s.conversational:
                    prompt = self.tokenizer.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True)
                    chosen = "".join(m["content"] for m in p.chosen)
                    rejected = "".join(m["content"] for m in p.rejected)
                    pairs.append(PreferencePair(prompt, chosen, rejected, source=where))
                else:
                    pairs.append(PreferencePair(p.prompt, p.chosen, p.rejected, source=where))
            # Rendered conversations already hold the template; plain prompts get it when the tokenizer has one.
            self._items[s.label] = (pairs, False if s.conversational else None)
        return self._items[s.label]

    def measure(self) -> dict[str, dict[str, MetricValue]]:
        """Metrics of the model's current weights on every set, by label."""
        from pvreg.registry.evaluation.metrics import choice_metrics, preference_metrics, text_metrics

        o = self.options
        common: dict[str, Any] = {
            "seed": o.seed,
            "n_boot": o.n_bootstrap,
            "batch_size": o.batch_size,
            "device": o.device,
        }
        out: dict[str, dict[str, MetricValue]] = {}
        for s in self.sets:
            if s.kind == "pairs":
                pairs, chat = self._pairs(s)
                out[s.label] = preference_metrics(self.model, self.tokenizer, pairs, chat_template=chat, **common)
            elif s.kind == "text":
                out[s.label] = text_metrics(
                    self.model,
                    self.tokenizer,
                    list(s.items),
                    reference=self.references.get(s.label),
                    labels=_labels(s),
                    **common,
                )
            else:
                out[s.label] = choice_metrics(self.model, self.tokenizer, list(s.items), **common)
        return out


def _labels(s: EvalSet) -> list[str]:
    return [f"{s.path} (text {i + 1})" for i in range(len(s.items))]


def lm_eval_metrics(model: Any, tokenizer: Any, tasks: Sequence[str], options: ScoreOptions) -> dict[str, float]:
    """lm-evaluation-harness tasks on the model in memory: ``task/metric`` -> value (needs its extra)."""
    if not tasks:
        return {}
    from pvreg.registry.evaluation.lmeval import run_tasks

    results = run_tasks(
        model,
        tokenizer,
        list(tasks),
        limit=options.limit,
        batch_size=options.batch_size,
        device=options.device or "cpu",
    )
    return {f"{task}/{metric}": float(value) for task, metrics in results.items() for metric, value in metrics.items()}
