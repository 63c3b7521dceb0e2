"""The ``Registry`` operation that makes a vector from preference data with DPO."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from pvreg.registry.training.dpo import TrainProgress
    from pvreg.schemas.training import TrainOptionsKwargs
    from pvreg.schemas.vector import VectorMeta


class TrainingOps(StoreFacade):
    """Part of ``Registry``: training (needs the ``pvreg[train]`` extra at call time)."""

    def train(
        self,
        name: str,
        *,
        base: str | os.PathLike[str],
        data: str | os.PathLike[str],
        dataset_label: str | None = None,
        keep_checkpoints: str | os.PathLike[str] | None = None,
        message: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: TrainProgress | None = None,
        **options: Unpack[TrainOptionsKwargs],
    ) -> VectorMeta:
        """Train θ+ and θ− with DPO from ``base`` on preference ``data`` and register φ = θ+ − θ−.

        θ− sees the same pairs, in the same order, with chosen and rejected swapped;
        both start from ``base`` with the same seed, and the frozen DPO reference is
        the base. ``options`` are :class:`~pvreg.schemas.training.TrainOptions`' fields
        (``method``, ``steps``, ``lr``, ``seed``, ...). Needs the ``pvreg[train]`` extra.

        Raises:
            PreferenceDataError: a bad data file or row (before any model loads).
            TrainOptionsError, InvalidNameError, InvalidTextError, UnsafeOutputError: bad options.
            MissingExtraError: trl, datasets or peft are not installed.
            TrainingDivergedError, DeviceUnavailableError: the runs themselves failed.
        """
        from pvreg.registry.training.register import train

        return train(
            self.store,
            name,
            base=base,
            data=data,
            dataset_label=dataset_label,
            keep_checkpoints=keep_checkpoints,
            message=message,
            tags=tags,
            progress=progress,
            **options,
        )
