"""Train θ+ and θ− for one preference with TRL's DPOTrainer.

θ+ is trained on the pairs, θ− on the same pairs with chosen and rejected swapped,
both from the same base with the same options, seed and data order; the frozen
reference is the base (for LoRA: the base with the adapter disabled). φ = θ+ − θ−
is then extracted by pvreg's pair path (not here).

Why things are set the way they are:

- The data order is pvreg's, not the trainer's: a seeded sequence of permutations
  of the training rows fed through a fixed sampler, so both runs consume identical
  batches (θ−'s rows are θ+'s, swapped) and the order is recorded (``data_sha256``).
- CPU runs are deterministic: seeds, ``torch.use_deterministic_algorithms``, no
  dataloader workers, no dropout (TRL disables it; LoRA dropout is 0). The same base,
  data, options and seed give byte-identical weights. Global RNG and determinism
  settings are restored afterwards.
- Speed defaults: no gradient checkpointing, float32 weights (no bf16 autocast on
  CPU), reference log-probs computed once up front, evaluation only once at the end,
  no checkpoints, no reporting integrations, no progress bars or log printing (the
  caller's ``progress`` gets every step's loss instead).
- Everything heavy (torch, transformers, trl, peft, datasets) is imported inside
  :func:`train_pair`, after the ``pvreg[train]`` extra has been checked.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pvreg.registry.errors import (
    OutputExistsError,
    TrainingDivergedError,
    TrainOptionsError,
)
from pvreg.registry.training.data import PreferenceData, PreferencePair, split_pairs
from pvreg.registry.training.extra import require_training
from pvreg.registry.training.inputs import (
    check_base,
    check_prompt_lengths,
    load_tokenizer,
    rows_sha256,
    trainer_row,
    use_chat_template,
)
from pvreg.registry.training.runtime import deterministic, first_line, quiet, versions

if TYPE_CHECKING:
    from pvreg.schemas.training import PairResult, Run, RunMetrics, TrainOptions

__all__ = ["RUNS", "TrainProgress", "check_inputs", "train_pair", "training_order"]

#: (run name, swap chosen/rejected) for the two runs, in the order they are trained.
RUNS: tuple[tuple[Run, bool], ...] = (("positive", False), ("negative", True))


class TrainProgress(Protocol):
    """Progress sink: ``start`` once with the steps of both runs together, then ``step`` per optimizer step.

    ``n`` counts 1..total across the two runs (θ+'s steps first, then θ−'s).
    """

    def start(self, total_steps: int) -> None: ...

    def step(self, n: int, loss: float) -> None: ...


def training_order(n_train: int, options: TrainOptions) -> list[int]:
    """Row positions (0..n_train-1) in the order both runs consume them: whole optimizer steps of
    ``batch_size * grad_accum`` rows, taken from successive permutations seeded by ``options.seed``."""
    per_step = options.batch_size * options.grad_accum
    if options.steps is not None:
        n_rows = options.steps * per_step
    else:
        epochs = options.epochs if options.epochs is not None else 1.0
        n_rows = max(1, math.ceil(epochs * n_train / per_step - 1e-9)) * per_step
    rng = random.Random(f"pvreg-order:{options.seed}")
    order: list[int] = []
    while len(order) < n_rows:
        perm = list(range(n_train))
        rng.shuffle(perm)
        order.extend(perm)
    return order[:n_rows]


def check_inputs(base_dir: str | os.PathLike[str], data: PreferenceData, options: TrainOptions) -> None:
    """Everything :func:`train_pair` refuses before loading weights, without writing anything.

    The base is a model directory with a tokenizer, chat data meets a chat template, and
    every prompt leaves room for its completion within ``max_length``. ``Registry.train``
    calls this before it stages a work directory, so bad input leaves the registry as it was.
    """
    options = options.resolved()
    require_training(options.method)
    base = check_base(Path(base_dir))
    with quiet():
        tokenizer = load_tokenizer(base)
        use_chat = use_chat_template(tokenizer, data, base, options)
        check_prompt_lengths(tokenizer, data, list(data.pairs), use_chat, options.max_length)


def train_pair(
    base_dir: str | os.PathLike[str],
    data: PreferenceData,
    options: TrainOptions,
    work_dir: str | os.PathLike[str],
    progress: TrainProgress | None = None,
    *,
    on_trainer: Callable[[str, Any], None] | None = None,
) -> PairResult:
    """Train θ+ into ``work_dir/positive`` and θ− into ``work_dir/negative``; return metrics and versions.

    ``method="full"`` writes Hugging Face model directories (safetensors weights,
    config, tokenizer); ``method="lora"`` writes PEFT adapter directories as
    ``save_pretrained`` does. Each directory appears (by rename) only once complete.
    ``on_trainer(run, trainer)`` is called with each configured ``DPOTrainer`` just
    before it trains — for tests and diagnostics (its ``train_dataset`` holds the
    tokenized rows, ``_get_train_sampler()`` the order).

    Raises:
        MissingExtraError: trl/datasets/peft missing or too old (checked before anything heavy loads).
        NotFoundError / TrainOptionsError: the base is not a model directory with a tokenizer, or the
            options do not fit it (chat data without a chat template, ...).
        PreferenceDataError: a prompt leaves no room for its completion within ``max_length``.
        OutputExistsError: ``work_dir/positive`` or ``work_dir/negative`` already exists.
        DeviceUnavailableError: ``device="cuda"`` without a usable GPU.
        TrainingDivergedError: a run produced a non-finite loss or weights.
    """
    started = time.perf_counter()
    options = options.resolved()
    require_training(options.method)
    base = check_base(Path(base_dir))
    work = Path(work_dir)
    outputs = {run: work / run for run, _ in RUNS}
    for out in outputs.values():
        if out.exists() or out.is_symlink():
            raise OutputExistsError(f"{out}: already exists; train_pair writes a fresh θ+/θ− pair")
    train_idx, eval_idx = split_pairs(data, options.eval_fraction, options.seed)
    order = training_order(len(train_idx), options)
    steps = len(order) // (options.batch_size * options.grad_accum)
    # The trainer gets only the pairs the steps consume (TRL tokenizes and, with precompute_ref, scores
    # every row it is given), and the order re-indexed onto them.
    used = sorted(set(order))
    local = {position: i for i, position in enumerate(used)}
    order = [local[position] for position in order]
    if options.max_eval_pairs is not None:
        eval_idx = eval_idx[: options.max_eval_pairs]

    with quiet(), deterministic(options.device, options.threads):
        tokenizer = load_tokenizer(base)
        use_chat = use_chat_template(tokenizer, data, base, options)
        train_pairs = [data.pairs[train_idx[position]] for position in used]
        eval_pairs = [data.pairs[i] for i in eval_idx]
        check_prompt_lengths(tokenizer, data, train_pairs + eval_pairs, use_chat, options.max_length)
        work.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            progress.start(2 * steps)
        metrics: dict[Run, RunMetrics] = {}
        try:
            for number, (run, swap) in enumerate(RUNS):
                metrics[run] = _train_run(
                    _RunPlan(
                        run=run,
                        swap=swap,
                        base=base,
                        train=train_pairs,
                        eval=eval_pairs,
                        order=order,
                        steps=steps,
                        split_rows=len(train_idx),
                        chat=use_chat,
                        options=options,
                        out=outputs[run],
                        work=work,
                    ),
                    progress,
                    number * steps,
                    on_trainer,
                )
        except BaseException:
            for run in metrics:  # a θ+ without its θ− is no result: leave neither
                shutil.rmtree(outputs[run], ignore_errors=True)
            raise

    from pvreg.schemas.training import PairResult

    return PairResult(
        method=options.method,
        artifact="lora" if options.method == "lora" else "model",
        positive_dir=str(outputs["positive"]),
        negative_dir=str(outputs["negative"]),
        base=str(base),
        options=options,
        data=data.info(),
        chat_template=use_chat,
        positive=metrics["positive"],
        negative=metrics["negative"],
        versions=versions(),
        device=options.device,
        wall_seconds=time.perf_counter() - started,
    )


@dataclasses.dataclass(frozen=True)
class _RunPlan:
    run: Run
    swap: bool
    base: Path
    train: list[PreferencePair]
    eval: list[PreferencePair]
    order: list[int]
    steps: int
    split_rows: int
    chat: bool
    options: TrainOptions
    out: Path
    work: Path


def _train_run(
    plan: _RunPlan, progress: TrainProgress | None, offset: int, on_trainer: Callable[[str, Any], None] | None
) -> RunMetrics:
    """One DPO run from the base; writes ``plan.out`` and returns its metrics. Scratch goes, whatever happens."""
    import torch

    scratch = plan.work / f".trainer-{plan.run}"
    partial = plan.work / f".{plan.run}.partial"
    try:
        return _fit(plan, scratch, partial, progress, offset, on_trainer)
    finally:
        for leftover in (scratch, partial):
            shutil.rmtree(leftover, ignore_errors=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fit(
    plan: _RunPlan,
    scratch: Path,
    partial: Path,
    progress: TrainProgress | None,
    offset: int,
    on_trainer: Callable[[str, Any], None] | None,
) -> RunMetrics:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from pvreg.registry import gcpause
    from pvreg.schemas.training import RunMetrics

    started = time.perf_counter()
    options = plan.options
    rows = [trainer_row(p, swap=plan.swap, chat=plan.chat) for p in plan.train]
    eval_rows = [trainer_row(p, swap=plan.swap, chat=plan.chat) for p in plan.eval]
    tokenizer = load_tokenizer(plan.base)  # fresh per run: TRL sets a pad token on the one it gets
    gcpause.resume()  # a training loop allocates per step for as long as it runs: the collector is needed again
    try:
        model = AutoModelForCausalLM.from_pretrained(plan.base, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainOptionsError(f"{plan.base}: cannot load the base model ({first_line(exc)})") from None
    try:
        trainer = _trainer_class()(
            order=plan.order,
            model=model,
            args=_dpo_config(options, plan.steps, scratch),
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=_lora_config(options) if options.method == "lora" else None,
            callbacks=[_progress_callback(progress, offset)] if progress is not None else None,
        )
    except ValueError as exc:  # peft/trl refusing the set-up: unknown LoRA targets, an adapter on lm_head, ...
        raise TrainOptionsError(f"{plan.base}: cannot set up DPO training: {first_line(exc)}") from None
    if options.method == "lora":
        _check_lora_layers(trainer.model, plan.base)
    _silence_printing(trainer)
    if len(trainer.train_dataset) != len(rows):  # pragma: no cover - guarded by check_prompt_lengths
        raise TrainOptionsError(f"the trainer dropped {len(rows) - len(trainer.train_dataset)} pair(s) as too long")
    if on_trainer is not None:
        on_trainer(plan.run, trainer)
    output = trainer.train()
    evaluated = trainer.evaluate() if eval_rows else {}
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    _check_finite(plan.run, trainer.model, losses)
    trainer.model.save_pretrained(partial)
    if options.method == "full":
        load_tokenizer(plan.base).save_pretrained(partial)
    os.replace(partial, plan.out)  # the output appears complete or not at all
    steps = int(trainer.state.global_step)
    train_seconds = float(output.metrics.get("train_runtime", 0.0))
    return RunMetrics(
        run=plan.run,
        steps=steps,
        train_loss=losses[-1],
        mean_train_loss=float(output.training_loss),
        eval_loss=_maybe(evaluated, "eval_loss"),
        eval_reward_accuracy=_maybe(evaluated, "eval_rewards/accuracies"),
        eval_reward_margin=_maybe(evaluated, "eval_rewards/margins"),
        train_rows=plan.split_rows,
        seen_rows=len(rows),
        eval_rows=len(eval_rows),
        data_sha256=rows_sha256(rows[i] for i in plan.order),
        train_seconds=train_seconds,
        seconds_per_step=train_seconds / max(1, steps),
        wall_seconds=time.perf_counter() - started,
    )


def _trainer_class() -> type:
    """DPOTrainer whose training batches follow pvreg's order (the same for θ+ and θ−)."""
    from torch.utils.data import Sampler
    from trl import DPOTrainer

    class _FixedOrder(Sampler[int]):
        def __init__(self, order: Sequence[int]) -> None:
            self.order = list(order)

        def __iter__(self) -> Iterator[int]:
            return iter(self.order)

        def __len__(self) -> int:
            return len(self.order)

    class PvregDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, order: Sequence[int], **kwargs: Any) -> None:
            self.pvreg_order = list(order)
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return _FixedOrder(self.pvreg_order)

    return PvregDPOTrainer


def _dpo_config(options: TrainOptions, steps: int, scratch: Path) -> Any:
    from trl import DPOConfig

    wanted: dict[str, Any] = dict(
        output_dir=str(scratch),
        max_steps=steps,
        num_train_epochs=1,
        learning_rate=options.effective_lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        beta=options.beta,
        max_length=options.max_length,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        seed=options.seed,
        data_seed=options.seed,
        use_cpu=options.device == "cpu",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        precompute_ref_log_probs=options.precompute_ref,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        dataset_num_proc=None,
    )
    known = {f.name for f in dataclasses.fields(DPOConfig)}
    return DPOConfig(**{k: v for k, v in wanted.items() if k in known})


def _lora_config(options: TrainOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_rank,
        # peft annotates lora_alpha as int but only divides by it (scaling = alpha / r): a float alpha is honoured.
        lora_alpha=options.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=0.0,
        bias="none",
        target_modules=list(options.lora_targets) if options.lora_targets else "all-linear",
        task_type="CAUSAL_LM",
    )


def _check_lora_layers(model: Any, base: Path) -> None:
    """Refuse, before training, LoRA layers whose delta pvreg cannot register exactly (embeddings, convolutions)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not isinstance(module, LoraLinear):
            raise TrainOptionsError(
                f"{base}: LoRA on {name.removeprefix('base_model.model.')} ({type(module).__name__}) cannot be "
                "registered as a preference vector; target linear layers only (lora_targets)"
            )


def _progress_callback(progress: TrainProgress, offset: int) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                progress.step(offset + int(state.global_step), float(logs["loss"]))

    return _Progress()


def _silence_printing(trainer: Any) -> None:
    """Drop transformers' stdout log printer and tqdm bar: the caller's progress protocol replaces them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)


def _check_finite(run: str, model: Any, losses: list[float]) -> None:
    import torch

    bad_step = next((i for i, loss in enumerate(losses, start=1) if not math.isfinite(loss)), None)
    if bad_step is not None:
        raise TrainingDivergedError(
            f"{run} run: the DPO loss became {losses[bad_step - 1]} at step {bad_step}; lower lr"
        )
    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            raise TrainingDivergedError(f"{run} run: parameter {name} holds NaN/Inf after training; lower lr")
    if not losses:  # pragma: no cover - max_steps >= 1 always logs
        raise TrainingDivergedError(f"{run} run: no training step was logged")


def _maybe(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)
