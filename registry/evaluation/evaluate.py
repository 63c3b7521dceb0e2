"""``pvreg eval``: measure a model directory, or a composition applied in memory on its base, and store the result.

Order of work, cheapest first, so bad input fails before a model loads: the
arguments, then every eval file (read whole, rows validated), then the
composition (refs, bases, shapes: :func:`pvreg.registry.merge.compose.prepare`),
then the device; only then the model.  A composition is added into the loaded
base with :func:`pvreg.registry.merge.apply.apply` and reverted bit-exactly
afterwards: no model is written.  KL from the base needs the base's next-token
distributions: they are computed once per text set, on the base's own weights,
before the vectors are applied (with ``model=DIR``, when ``base=DIR`` is given too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import EvalError, NotFoundError, opt
from pvreg.registry.evaluation.evalfiles import EvalSet, load_eval_sets
from pvreg.registry.evaluation.measure import (
    Measurer,
    ScoreOptions,
    check_device,
    evaluation_key,
    lm_eval_metrics,
    load_model,
)
from pvreg.registry.storage import catalog, writes

if TYPE_CHECKING:
    from pvreg.registry.storage.store import Store
    from pvreg.schemas.compose import ComposeSpec
    from pvreg.schemas.evaluation import EvalTarget, EvaluationRecord, MetricValue


@dataclass
class Composition:
    """A validated composition: its resolved spec (name@version refs with sha256) and its base directory."""

    spec: ComposeSpec
    base_fingerprint: str
    base_path: Path

    @property
    def refs(self) -> list[str]:
        return [t.ref for t in self.spec.terms]


def resolve_composition(
    store: Store, spec: ComposeSpec | str | Sequence[str], base: str | os.PathLike[str] | None, **method: Any
) -> Composition:
    """Check a composition against the registry and the base without reading tensor data.

    Raises:
        SpecError, NotFoundError, BaseMismatchError: every problem at once (as ``compose`` reports them).
    """
    from pvreg.registry.merge.compose import prepare
    from pvreg.registry.merge.spec import build_spec

    full = build_spec(spec, **method)
    plan = prepare(store, full, base=base, need_base=False)
    try:
        if plan.base is None or plan.base.path is None or not plan.base.path.is_dir():
            raise NotFoundError(
                f"no local copy of base {plan.base_fingerprint[:16]} is known: pass {opt('base')} DIR "
                "(the base model directory the vectors were made from)"
            )
        return Composition(plan.spec, plan.base_fingerprint, plan.base.path)
    finally:
        plan.close()


def composition_target(comp: Composition, spec: ComposeSpec | None = None) -> EvalTarget:
    from pvreg.schemas.evaluation import EvalTarget

    return EvalTarget(
        kind="composition",
        base_fingerprint=comp.base_fingerprint,
        spec=(spec or comp.spec).model_dump(mode="json"),
    )


def make_record(
    key: str,
    target: EvalTarget,
    sets: Sequence[EvalSet],
    metrics: dict[str, dict[str, MetricValue]],
    options: ScoreOptions,
    *,
    refs: Sequence[str] = (),
    scalar: dict[str, float] | None = None,
    sweep: str | None = None,
    seconds: float | None = None,
) -> EvaluationRecord:
    from pvreg.registry.storage.tables import utcnow
    from pvreg.registry.version import __version__
    from pvreg.schemas.evaluation import EvaluationRecord

    return EvaluationRecord(
        created_at=utcnow(),
        key=key,
        target=target,
        eval_sets=[s.info() for s in sets],
        metrics=metrics,
        scalar_metrics=scalar or {},
        options=options.record(),
        refs=list(refs),
        sweep=sweep,
        pvreg_version=__version__,
        seconds=seconds,
    )


def require_writable(store: Store, op: str) -> None:
    """Refuse a read-only registry before minutes of scoring, not when the result is stored."""
    from pvreg.registry.errors import ReadOnlyRegistryError

    if store.read_only:
        raise ReadOnlyRegistryError(
            f"registry {store.settings.home} is read-only; {op} stores its results there and needs write access"
        )


def store_record(store: Store, record: EvaluationRecord) -> EvaluationRecord:
    """Insert ``record``; the stored copy (with its id)."""
    new_id = store.transaction(lambda s: writes.add_evaluation(s, record))
    return record.model_copy(update={"id": new_id})


def evaluate(
    store: Store,
    terms: ComposeSpec | str | Sequence[str] | None = None,
    *,
    model: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    pairs: Sequence[str | os.PathLike[str]] = (),
    text: Sequence[str | os.PathLike[str]] = (),
    choices: Sequence[str | os.PathLike[str]] = (),
    lm_eval_tasks: Sequence[str] = (),
    options: ScoreOptions | None = None,
    method: dict[str, Any] | None = None,
) -> EvaluationRecord:
    """Measure ``model`` (a directory) or ``terms`` applied on ``base``; store and return the evaluation."""
    import torch

    options = options or ScoreOptions()
    require_writable(store, "eval")
    has_terms = terms is not None and (not isinstance(terms, (list, tuple, str)) or len(terms) > 0)
    if model is not None and has_terms:
        raise EvalError(f"give either {opt('model')} DIR or composition terms (with {opt('base')}), not both")
    if model is None and not has_terms:
        raise EvalError(f"nothing to evaluate: give {opt('model')} DIR, or composition terms with {opt('base')} DIR")
    sets = load_eval_sets(pairs=pairs, text=text, choices=choices, limit=options.limit, required=not lm_eval_tasks)
    comp = None
    if has_terms:
        assert terms is not None
        comp = resolve_composition(store, terms, base, **(method or {}))
    check_device(options.device)
    if lm_eval_tasks:
        from pvreg.registry.evaluation.lmeval import require_harness

        require_harness()  # fail before the model loads, not after scoring

    started = time.perf_counter()
    kl = any(s.kind == "text" for s in sets) and (comp is not None or base is not None)
    if comp is not None:
        target = composition_target(comp)
        loaded, tokenizer = load_model(comp.base_path, options.device, "base")
        measurer = Measurer(loaded, tokenizer, sets, options)
        if kl:
            measurer.compute_references()
        from pvreg.registry.merge.apply import apply

        with apply(store, loaded, comp.spec):
            metrics = measurer.measure()
            scalar = lm_eval_metrics(loaded, tokenizer, lm_eval_tasks, options)
        refs = comp.refs
    else:
        from pvreg.schemas.evaluation import EvalTarget

        assert model is not None
        model_path = Path(model)
        if not model_path.exists():
            raise NotFoundError(f"{opt('model')} {os.fspath(model_path)}: no such model directory")
        base_fp = store.resolve_base(base).fingerprint if base is not None else None
        target = EvalTarget(
            kind="model",
            model_fingerprint=store.resolve_base(model_path).fingerprint,
            base_fingerprint=base_fp,
        )
        loaded, tokenizer = load_model(model_path, options.device, "model")
        measurer = Measurer(loaded, tokenizer, sets, options)
        if kl:
            assert base is not None
            base_model, _ = load_model(Path(base), options.device, "base")
            measurer.compute_references(base_model)
            del base_model
        metrics = measurer.measure()
        scalar = lm_eval_metrics(loaded, tokenizer, lm_eval_tasks, options)
        refs = []
    del loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    key = evaluation_key(target, sets, options, kl=kl, lm_eval=lm_eval_tasks)
    record = make_record(
        key, target, sets, metrics, options, refs=refs, scalar=scalar, seconds=time.perf_counter() - started
    )
    return store_record(store, record)


def evaluations(store: Store, ref: str | None = None) -> list[EvaluationRecord]:
    """Stored evaluations, oldest first; with ``ref``, those whose composition contains that version."""
    if ref is None:
        with store.read() as conn:
            return catalog.evaluations(conn)
    meta = store.resolve(ref)
    with store.read() as conn:
        version_id = catalog.version_id(conn, meta.name, meta.version)
        return catalog.evaluations(conn, version_id=version_id)
