"""The ``Registry`` operation that exports vectors for serving engines: ``export_lora``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from pvreg.schemas.compose import ComposeSpec
    from pvreg.schemas.serving import LoraExportResult


class LoraExportOps(StoreFacade):
    """Part of ``Registry``: LoRA adapters from registered vectors (see :mod:`pvreg.registry.serving.export`)."""

    def export_lora(
        self,
        spec: ComposeSpec | str | Sequence[str],
        *,
        out: str | os.PathLike[str],
        base: str | os.PathLike[str] | None = None,
        rank: int | None = None,
        energy: float | None = None,
        max_rank: int | None = None,
        target: str = "peft",
        non_lora: str = "refuse",
        dtype: str | None = None,
        force: bool = False,
    ) -> LoraExportResult:
        """Write Σ η·s·φ as a PEFT LoRA adapter directory ``out``, with its measured error.

        Vectors registered from LoRA adapters export exactly (their stored factors, concatenated);
        dense vectors by a truncated SVD per 2-D module, ``rank`` R or the smallest rank keeping a
        fraction ``energy`` of each module's spectral energy.  ``max_rank`` re-factorises a module
        above it (``target`` vllm/sglang default to 256).  ``target`` is peft, vllm, sglang or lorax
        (which also writes one adapter per vector and LoRAX's merge payload).  ``non_lora``: what
        happens to 1-D tensors, embeddings and the output head — ``refuse`` (default), ``drop`` (their
        share of the norm is reported) or ``carry`` (peft only: full weights via modules_to_save).
        Every export is recorded in ``compositions()`` (kind ``lora``).

        Raises:
            SpecError, NotFoundError, BaseMismatchError, OutputExistsError, UnsafeOutputError,
            InvalidOptionError, LoraExportError: before anything is written.
        """
        from pvreg.registry.serving.export import export_lora

        return export_lora(
            self.store,
            spec,
            out=out,
            base=base,
            rank=rank,
            energy=energy,
            max_rank=max_rank,
            target=target,
            non_lora=non_lora,
            dtype=dtype,
            force=force,
        )
