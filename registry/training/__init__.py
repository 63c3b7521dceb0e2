"""The training core of ``pvreg train``: preference pairs in, θ+ and θ− out.

Public surface (what ``Registry.train`` and the CLI wire together)::

    data = load_pairs("pairs.jsonl", label="helpful")          # validate every row, no model loaded
    train_idx, eval_idx = split_pairs(data, 0.1, seed=0)       # the held-out split train_pair uses
    options = build_options(method="lora", steps=200)          # TrainOptions, errors as TrainOptionsError
    result = train_pair(base_dir, data, options, work_dir)     # work_dir/positive, work_dir/negative
    result.provenance()                                         # JSON record for the registered vector

``train_pair`` needs the ``pvreg[train]`` extra (trl, datasets, peft) and says so
in one ``MissingExtraError`` line before importing anything heavy. Importing this
package imports none of torch, transformers, trl, peft or datasets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pvreg.registry.training.data import (
    PreferenceData,
    PreferencePair,
    load_pairs,
    split_contrastive,
    split_pairs,
)
from pvreg.registry.training.dpo import TrainProgress, train_pair, training_order
from pvreg.registry.training.extra import require_training

if TYPE_CHECKING:
    from pvreg.schemas.training import TrainOptions

__all__ = [
    "PreferenceData",
    "PreferencePair",
    "TrainProgress",
    "build_options",
    "load_pairs",
    "require_training",
    "split_contrastive",
    "split_pairs",
    "train_pair",
    "training_order",
]


def build_options(**values: Any) -> TrainOptions:
    """A validated :class:`~pvreg.schemas.training.TrainOptions`; ``None`` values mean "the default".

    Raises:
        TrainOptionsError: one line naming the first invalid option and why.
    """
    import re

    from pydantic import ValidationError

    from pvreg.registry.errors import TrainOptionsError, opt
    from pvreg.schemas.training import TrainOptions

    given = {k: v for k, v in values.items() if v is not None}
    if "steps" in given and "epochs" in given:  # named here, where options can be spelled as flags
        raise TrainOptionsError(f"give {opt('steps')} or {opt('epochs')}, not both")
    try:
        return TrainOptions.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "options"
        named = opt(where) if re.fullmatch(r"[a-z_]+", where) else where  # --lr on the command line
        message = str(first.get("msg")).removeprefix("Value error, ")
        raise TrainOptionsError(f"invalid train option {named}: {message}") from None
