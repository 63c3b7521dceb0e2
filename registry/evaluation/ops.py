"""The ``Registry`` operations that measure what vectors do: evaluate, sweep, list stored evaluations."""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from pvreg.registry.evaluation.sweep import SweepProgress
    from pvreg.schemas.compose import ComposeSpec
    from pvreg.schemas.evaluation import EvaluationRecord, SweepResult

PathLike = str | os.PathLike[str]


class EvaluationOps(StoreFacade):
    """Part of ``Registry``: evaluation (see :mod:`pvreg.registry.evaluation.evaluate` and ``.sweep``)."""

    def evaluate(
        self,
        terms: ComposeSpec | str | Sequence[str] | None = None,
        *,
        model: PathLike | None = None,
        base: PathLike | None = None,
        pairs: Sequence[PathLike] = (),
        text: Sequence[PathLike] = (),
        choices: Sequence[PathLike] = (),
        limit: int | None = None,
        batch_size: int = 8,
        device: str | None = None,
        seed: int = 0,
        n_bootstrap: int = 1000,
        kl_top_k: int | None = None,
        lm_eval_tasks: Sequence[str] = (),
        method: str | None = None,
        density: float | None = None,
        normalize: bool | None = None,
    ) -> EvaluationRecord:
        """Measure a model directory (``model``), or ``terms`` applied in memory on ``base``, and store the result.

        Eval sets are ``[LABEL=]PATH``: ``pairs`` (every format ``train`` reads) give
        accuracy, margin and their length-normalised forms; ``text`` gives perplexity
        and, for a composition (or ``model`` with ``base``), the mean per-token KL from
        the base; ``choices`` (JSONL question/choices/answer) gives accuracy. Every
        metric carries a bootstrap 95% interval (``seed``, ``n_bootstrap`` resamples).
        ``lm_eval_tasks`` runs lm-evaluation-harness tasks too (its own extra).

        Raises:
            EvalError: no target, both targets, no eval set, bad options.
            EvalSetError, PreferenceDataError, NotFoundError: a missing or malformed eval file (row named).
            SpecError, NotFoundError, BaseMismatchError: the composition (before any model loads).
            DeviceUnavailableError: ``device`` is not available here.
        """
        from pvreg.registry.evaluation.evaluate import evaluate
        from pvreg.registry.evaluation.measure import ScoreOptions

        options = ScoreOptions(
            limit=limit, batch_size=batch_size, device=device, seed=seed, n_bootstrap=n_bootstrap, kl_top_k=kl_top_k
        )
        return evaluate(
            self.store,
            terms,
            model=model,
            base=base,
            pairs=pairs,
            text=text,
            choices=choices,
            lm_eval_tasks=lm_eval_tasks,
            options=options,
            method={"method": method, "density": density, "normalize": normalize},
        )

    def sweep(
        self,
        axes: Sequence[str],
        *,
        out: PathLike,
        base: PathLike | None = None,
        pairs: Sequence[PathLike] = (),
        text: Sequence[PathLike] = (),
        choices: Sequence[PathLike] = (),
        fixed: Sequence[str] = (),
        limit: int | None = None,
        batch_size: int = 8,
        device: str | None = None,
        seed: int = 0,
        n_bootstrap: int = 1000,
        kl_top_k: int | None = None,
        method: str | None = None,
        density: float | None = None,
        normalize: bool | None = None,
        force: bool = False,
        progress: SweepProgress | None = None,
    ) -> SweepResult:
        """Evaluate the cartesian product of ``axes`` (``NAME=GRID``: ``start:stop:step`` or a comma list).

        ``fixed`` terms (``REF:COEF``) are held constant. One base load; each point is
        apply -> score -> exact revert, stored as an evaluation as soon as it is measured;
        points already stored with the same spec, base, eval sets (sha256) and options are
        reused. Writes ``sweep.csv``, ``sweep.json`` and PNG plots to ``out`` atomically.

        Raises:
            GridError: an empty or malformed grid (``start:stop:0``), an axis that is not a reference.
            EvalError, EvalSetError, SpecError, NotFoundError, BaseMismatchError: as :meth:`evaluate`.
            UnsafeOutputError, OutputExistsError: ``out`` is protected, or not empty without ``force``.
            SweepInterruptedError: Ctrl-C; the measured points are stored, partial files written.
        """
        from pvreg.registry.evaluation.measure import ScoreOptions
        from pvreg.registry.evaluation.sweep import sweep

        options = ScoreOptions(
            limit=limit, batch_size=batch_size, device=device, seed=seed, n_bootstrap=n_bootstrap, kl_top_k=kl_top_k
        )
        return sweep(
            self.store,
            axes,
            base=base,
            out=out,
            pairs=pairs,
            text=text,
            choices=choices,
            fixed=fixed,
            options=options,
            method={"method": method, "density": density, "normalize": normalize},
            force=force,
            progress=progress,
        )

    def evaluations(self, ref: str | None = None) -> builtins.list[EvaluationRecord]:
        """Stored evaluations, oldest first; with ``ref``, those whose composition contains that version.

        Raises:
            InvalidReferenceError, NotFoundError, AmbiguousReferenceError: for ``ref``.
        """
        from pvreg.registry.evaluation.evaluate import evaluations

        return evaluations(self.store, ref)
