"""The ``Registry`` operations that merge vectors: compose to disk, apply in memory, list compositions."""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pvreg.registry.storage import catalog
from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from pvreg.registry.merge.apply import AppliedComposition
    from pvreg.registry.merge.writer import ComposeProgress
    from pvreg.schemas.compose import ComposeResult, ComposeSpec, CompositionRecord


class MergeOps(StoreFacade):
    """Part of ``Registry``: composing (see :mod:`pvreg.registry.merge.compose`)."""

    def compose(
        self,
        spec: ComposeSpec | str | Sequence[str],
        *,
        base: str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        method: str | None = None,
        density: float | None = None,
        seed: int | None = None,
        normalize: bool | None = None,
        accumulate: str | None = None,
        dtype: str | None = None,
        shard_size: str | int = "5GB",
        force: bool = False,
        vector_only: bool = False,
        register: str | None = None,
        progress: ComposeProgress | None = None,
        device: str = "cpu",
    ) -> ComposeResult:
        """Merge registered vectors into a base model directory, or into one vector file.

        θ = θ_base + Σ η_i·s_i·φ_i (``method="linear"``) or a TIES/DARE variant.
        Options left at ``None`` come from ``spec`` when it is a ``ComposeSpec``.
        ``register`` (with ``vector_only``) stores the result as a new version;
        ``out`` may then be None.  ``device="cuda"`` combines a model's tensors
        (``linear``) on the GPU, streaming the inputs through pinned buffers.

        Raises:
            SpecError, NotFoundError, BaseMismatchError, OutputExistsError,
            UnsafeOutputError: before any tensor data is read, every problem in one
            error (a ``ProblemsError`` that is also an instance of each problem's class).
            OutputExistsError: something appeared at ``out`` while writing (without ``force``).
            DeviceUnavailableError: ``device="cuda"`` and torch sees no usable GPU.
            SpecError: an output tensor would hold Inf/NaN in its dtype.
        """
        from pvreg.registry.merge.compose import compose

        return compose(
            self.store,
            spec,
            base=base,
            out=out,
            method=method,
            density=density,
            seed=seed,
            normalize=normalize,
            accumulate=accumulate,
            dtype=dtype,
            shard_size=shard_size,
            force=force,
            vector_only=vector_only,
            register=register,
            progress=progress,
            device=device,
        )

    def compositions(self) -> builtins.list[CompositionRecord]:
        """Every recorded compose run, oldest first."""
        with self.store.read() as conn:
            return catalog.compositions(conn)

    def apply(
        self,
        model: Any,
        spec: ComposeSpec | str | Sequence[str],
        *,
        method: str | None = None,
        density: float | None = None,
        seed: int | None = None,
        normalize: bool | None = None,
        accumulate: str | None = None,
    ) -> AppliedComposition:
        """Add a composed delta into a loaded ``torch.nn.Module`` in place.

        The return value is also a context manager that restores the original
        parameters bit-exactly on exit.  See :mod:`pvreg.registry.merge.apply`.

        Raises:
            SpecError, NotFoundError, BaseMismatchError: before any parameter changes.
        """
        from pvreg.registry.merge.apply import apply

        return apply(
            self.store,
            model,
            spec,
            method=method,
            density=density,
            seed=seed,
            normalize=normalize,
            accumulate=accumulate,
        )
