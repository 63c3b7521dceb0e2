"""``train``: preference pairs in, a registered preference vector φ = θ+ − θ− out.

The two DPO runs write θ+ and θ− into a staged ``.pvreg-tmp-*`` directory
inside the registry (announced by a pending marker, so ``gc`` removes it after
a crash), or into ``keep_checkpoints``; φ is then built by the same exact path
as ``pvreg add --positive/--negative`` (dense, or ΔW+ − ΔW− for LoRA) and
registered with the whole training record in its provenance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pvreg.registry.refs import check_name, check_version_text
from pvreg.registry.storage.outputs import Protected, check_output, registry_paths
from pvreg.registry.storage.staging import staging
from pvreg.registry.storage.store import Store
from pvreg.registry.training import build_options, load_pairs
from pvreg.registry.training.extra import require_training
from pvreg.schemas import VectorMeta

if TYPE_CHECKING:
    from pvreg.registry.training.dpo import TrainProgress

#: The staged work directory's name stem inside the registry home.
_WORK = "training"


def train(
    store: Store,
    name: str,
    *,
    base: str | os.PathLike[str],
    data: str | os.PathLike[str],
    dataset_label: str | None = None,
    keep_checkpoints: str | os.PathLike[str] | None = None,
    message: str | None = None,
    tags: Mapping[str, str] | None = None,
    progress: TrainProgress | None = None,
    **options: object,
) -> VectorMeta:
    """Train θ+ and θ− from ``base`` on ``data`` and register φ = θ+ − θ− as the next version of ``name``.

    Everything that needs no model is checked first (name, text, data rows, options,
    the extra, the output path), so bad input costs nothing.
    """
    from pvreg.registry.sources.adding import add_checkpoints

    check_name(name)
    tag_map = dict(tags or {})
    label = dataset_label if dataset_label is not None else Path(data).stem
    check_version_text(name, dataset=label, tags=tag_map, message=message)
    pairs = load_pairs(Path(data), label=label)
    opts = build_options(**options)
    require_training(opts.method)
    base_dir = Path(base)
    keep = Path(keep_checkpoints) if keep_checkpoints is not None else None
    if keep is not None:
        check_output(keep, [*registry_paths(store.settings), Protected(base_dir, "the base model")])
    from pvreg.registry.training.dpo import check_inputs, train_pair

    check_inputs(base_dir, pairs, opts)  # base, tokenizer, chat template, prompt lengths: before anything is staged

    def run(work: Path, *, staged: bool) -> VectorMeta:
        result = train_pair(base_dir, pairs, opts, work, progress)
        record = result.provenance()
        if staged:  # θ+/θ− lived in a work directory that is gone once registered: record no path to it
            record |= {side: {"path": None, "kept": False} for side in ("positive", "negative")}
        return add_checkpoints(
            store,
            name,
            base=base_dir,
            positive=work / "positive",
            negative=work / "negative",
            lora=None,
            finetuned=None,
            dtype=None,
            dataset=label,
            sign=1,
            description=None,
            message=message,
            tags=tag_map,
            progress=None,
            provenance=record,
        )

    if keep is not None:
        return run(keep, staged=False)
    with staging(store.settings.pending_dir, store.settings.home / _WORK) as (tmp, _rewrite):
        return run(tmp, staged=True)  # staging removes the work directory (θ+, θ−) on the way out
