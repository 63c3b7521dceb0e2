"""The ``Registry`` operations that compare registered vectors: similarity and diff."""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from pvreg.schemas.evaluation import DiffReport, SimilarityReport


class ComparisonOps(StoreFacade):
    """Part of ``Registry``: how vectors relate (see :mod:`pvreg.registry.evaluation.compare`).

    Both read the blobs one tensor at a time in float64 and never load a whole vector;
    each vector counts as its stored sign times its blob (what compose adds).
    """

    def similarity(
        self,
        refs: Sequence[str],
        *,
        by: str | None = None,
        plot: str | os.PathLike[str] | None = None,
        force: bool = False,
    ) -> SimilarityReport:
        """Cosine matrix, norms, sign agreement and touched share of two or more vectors.

        ``by`` adds the same statistics per ``"tensor"``, ``"layer"`` or ``"module-type"``
        group; ``plot`` writes a heatmap of the whole-vector cosine matrix (``.png``,
        ``.svg`` or ``.pdf``; needs matplotlib, ``pvreg[eval]``), replacing an existing
        file only with ``force``.

        Raises:
            EvalError: fewer than two vectors, an unknown ``by``, a bad plot suffix.
            NotFoundError, InvalidReferenceError, AmbiguousReferenceError: for a reference.
            BaseMismatchError: the vectors were made for different bases.
            UnsafeOutputError, OutputExistsError: where ``plot`` would be written.
            MissingDependencyError: ``plot`` without matplotlib.
        """
        from pvreg.registry.evaluation.compare import similarity

        return similarity(self.store, builtins.list(refs), by=by, plot=plot, force=force)

    def diff(self, a: str, b: str) -> DiffReport:
        """What changed from vector ``a`` to ``b``: per tensor ‖b−a‖/‖a‖, cosine, max|b−a|; tensors only in one.

        Raises:
            NotFoundError, InvalidReferenceError, AmbiguousReferenceError: for a reference.
            BaseMismatchError: the two vectors were made for different bases.
        """
        from pvreg.registry.evaluation.compare import diff

        return diff(self.store, a, b)
