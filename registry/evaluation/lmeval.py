"""lm-evaluation-harness tasks on a model already in memory (the optional ``pvreg[lmeval]`` extra).

:func:`run_tasks` hands a loaded ``transformers`` model — typically a base with a composition
applied by :meth:`pvreg.Registry.apply` — to the harness through its own model interface
(``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=...)``) and returns
task → metric → value.  No model is written or downloaded: the harness scores the object it is
given.  A task is a path to a local task YAML (its data typically a local JSON/CSV file, read
with ``datasets``' packaged loaders) or the name of a task the harness ships; a named task's
dataset comes through ``datasets`` and its cache (``HF_DATASETS_OFFLINE=1`` forbids downloads).

The harness is driven through ``lm_eval.evaluator.evaluate`` on tasks loaded by its
``TaskManager``, not through ``simple_evaluate``: that wrapper also looks the model up on the
Hub (a network request for an in-memory model) and runs ``git describe`` in the working
directory, which prints to stderr.  What ``simple_evaluate`` adds that matters is done here the
same way: zero few-shot examples unless a task sets them, the harness's default seeds — inside a
saved and restored RNG state, so a run leaves the caller's random streams as they were.

Failures are one line each: the extra missing (``pip install 'pvreg[lmeval]'``,
:class:`MissingExtraError`), an unknown task name, a YAML file that is missing, not YAML or not
a task, a task whose data cannot be loaded or used (:class:`LmEvalTaskError`, naming the task).
Task YAMLs are the harness's format, including its ``!function`` tag, which imports Python code
next to the YAML: run task files you trust.  Indexing the harness's own task catalogue (for a
task given by name) takes seconds; it is done once per process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pvreg.registry.errors import (
    DeviceUnavailableError,
    EvalError,
    LmEvalTaskError,
    MissingExtraError,
    PvregError,
    opt,
)

__all__ = ["INSTALL_HINT", "run_tasks"]

INSTALL_HINT = "pip install 'pvreg[lmeval]'"
#: Bootstrap resamples for the harness's standard errors (closed-form ones, like acc's, cost nothing).
BOOTSTRAP_ITERS = 1000
#: The seeds ``lm_eval.simple_evaluate`` uses by default (python, numpy, torch, few-shot sampler).
_SEEDS = (0, 1234, 1234, 1234)
_YAML_SUFFIXES = (".yaml", ".yml")
#: Longest cause quoted from a library error in a message.
_CAUSE_CHARS = 300


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    return text if len(text) <= _CAUSE_CHARS else text[: _CAUSE_CHARS - 1] + "…"


def _require_harness() -> None:
    """Raise :class:`MissingExtraError` unless the harness and its HF backend's imports are there (not importing them)."""
    for module, what in (("lm_eval", "lm-evaluation-harness"), ("accelerate", "accelerate")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtraError(f"lm-eval tasks need {what} ('{module}'), which is not installed: {INSTALL_HINT}")


def _check_options(tasks: Sequence[str], limit: int | None, batch_size: int) -> list[str]:
    specs = [tasks] if isinstance(tasks, str) else list(tasks)
    if not specs:
        raise LmEvalTaskError("no lm-eval task given")
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise LmEvalTaskError(f"an lm-eval task must be a task name or a YAML path, got {spec!r}")
    if len(set(specs)) != len(specs):
        twice = next(s for s in specs if specs.count(s) > 1)
        raise LmEvalTaskError(f"lm-eval task {twice!r} is given twice")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvalError(f"{opt('limit')} must be a positive integer (items per task), got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"{opt('batch_size')} must be a positive integer, got {batch_size!r}")
    return specs


def _check_device(model: Any, device: str) -> None:
    """The model must already sit on ``device``: the harness evaluates the object where it is."""
    import torch

    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise EvalError(f"{opt('device', device)} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"{opt('device', device)} was asked for, but torch sees no usable CUDA GPU here")
    try:
        actual = next(iter(model.parameters())).device
    except (AttributeError, StopIteration, TypeError):
        raise EvalError("lm-eval tasks need a transformers model with parameters") from None
    same_index = wanted.index is None or wanted.type == "cpu" or actual.index == wanted.index
    if actual.type != wanted.type or not same_index:
        raise EvalError(f"the model is on {actual}, not on {opt('device', device)}: load or move it there first")


def _is_path(spec: str) -> bool:
    return spec.lower().endswith(_YAML_SUFFIXES) or os.sep in spec or Path(spec).exists()


def _check_task_file(spec: str) -> None:
    from pvreg.registry.tensors.inputfile import check_regular

    path = Path(spec)
    if not path.exists():
        raise LmEvalTaskError(f"lm-eval task file {spec} does not exist")
    check_regular(path, LmEvalTaskError)
    if not os.access(path, os.R_OK):
        raise LmEvalTaskError(f"lm-eval task file {spec} is not readable")


@functools.cache
def _catalogue() -> Any:
    """The harness's TaskManager over its own task folders (seconds to build: once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _task_manager(named: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return _catalogue() if named else TaskManager(include_defaults=False)


def _load(manager: Any, spec: str, is_path: bool) -> dict[str, Any]:
    """One task, group or tag, with every failure the harness raises for it as one line naming it."""
    import yaml

    where = f"lm-eval task file {spec}" if is_path else f"lm-eval task {spec!r}"
    try:
        loaded: dict[str, Any] = manager.load([str(Path(spec).resolve()) if is_path else spec])
    except yaml.YAMLError as exc:
        raise LmEvalTaskError(f"{where} is not valid YAML: {_cause(exc)}") from None
    except KeyError as exc:
        if is_path:
            raise LmEvalTaskError(f"{where} is not an lm-eval task: {_cause(exc)}") from None
        raise LmEvalTaskError(
            f"unknown {where}: not a task, group or tag of lm-eval, nor an existing YAML file"
        ) from None
    except (PvregError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the harness and datasets raise many types for a bad config or data file
        raise LmEvalTaskError(f"{where} cannot be loaded: {type(exc).__name__}: {_cause(exc)}") from None
    if not loaded.get("tasks"):
        raise LmEvalTaskError(f"{where} holds no task to run")
    return loaded


def _merge(parts: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    group_map: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for spec, part in parts:
        for name, task in part["tasks"].items():
            if name in tasks:
                raise LmEvalTaskError(f"lm-eval task {name!r} comes from both {owner[name]!r} and {spec!r}")
            tasks[name] = task
            owner[name] = spec
        groups.update(part.get("groups") or {})
        group_map.update(part.get("group_map") or {})
    return {"tasks": tasks, "groups": groups, "group_map": group_map}


@contextlib.contextmanager
def _harness_state() -> Iterator[None]:
    """Quiet libraries, single-process bootstrap, the harness's seeds; the caller's RNG state and settings restored.

    The harness draws progress bars whatever the settings (tqdm reads ``TQDM_DISABLE`` only
    when it is imported) and may print; what it writes to ``sys.stdout``/``sys.stderr`` during
    the run is dropped, so ``--json`` output stays JSON and an error stays one line.
    """
    import io
    import logging
    import random

    import numpy as np
    import torch

    from pvreg.registry.training.runtime import quiet

    logger = logging.getLogger("lm_eval")
    level = logger.level
    multiproc = os.environ.get("DISABLE_MULTIPROC")
    py_state, np_state = random.getstate(), np.random.get_state()
    logger.setLevel(logging.ERROR)
    os.environ["DISABLE_MULTIPROC"] = "1"  # no process pool forked from a process holding a model
    try:
        with (
            quiet(),
            torch.random.fork_rng(devices=[]),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            random.seed(_SEEDS[0])
            np.random.seed(_SEEDS[1])
            torch.manual_seed(_SEEDS[2])
            yield
    finally:
        logger.setLevel(level)
        if multiproc is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = multiproc
        random.setstate(py_state)
        np.random.set_state(np_state)


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`` -> ``{"acc": 0.5, "acc_stderr": 0.1}``.

    A metric under a filter other than ``none`` keeps it (``exact_match,strict-match``); text
    fields, counts and non-finite or ``"N/A"`` values are left out.
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        if math.isfinite(value):
            out[metric if filt == "none" else key] = float(value)
    return out


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    limit: int | None,
    batch_size: int,
    device: str,
) -> dict[str, dict[str, float]]:
    """Run lm-evaluation-harness ``tasks`` on the in-memory ``model``; task (and group) → metric → value.

    Args:
        model: a loaded ``transformers`` causal LM (a composition may be applied to it), already on
            ``device``; it is evaluated as it is and not changed.
        tokenizer: its tokenizer (an object: nothing is looked up by name).
        tasks: paths to task YAML files, or names of tasks, groups or tags the harness ships.
        limit: at most this many documents per task (None: all).
        batch_size: requests per forward pass.
        device: where the model is (``cpu``, ``cuda``, ``cuda:1``); checked, not moved to.

    Metric names are the harness's (``acc``, ``acc_norm``, ``acc_stderr``, ...); under a filter
    other than ``none`` they keep it (``exact_match,strict-match``).

    Raises:
        MissingExtraError: lm-evaluation-harness (the ``pvreg[lmeval]`` extra) is not installed.
        LmEvalTaskError: an unknown task, a missing or invalid task YAML, data the task cannot use.
        EvalError: a bad ``limit``/``batch_size``/``device``, or the model is not on ``device``.
        DeviceUnavailableError: ``device`` is CUDA and there is none.
    """
    specs = _check_options(tasks, limit, batch_size)
    if tokenizer is None:
        raise EvalError("lm-eval tasks need the model's tokenizer (none was given)")
    paths = {spec: _is_path(spec) for spec in specs}
    for spec, is_path in paths.items():
        if is_path:
            _check_task_file(spec)
    _require_harness()
    _check_device(model, device)

    with _harness_state():
        try:
            from lm_eval.evaluator import evaluate
            from lm_eval.models.huggingface import HFLM
        except ImportError as exc:
            raise MissingExtraError(
                f"lm-eval tasks need lm-evaluation-harness, which failed to import ({_cause(exc)}): {INSTALL_HINT}"
            ) from None
        manager = _task_manager(named=not all(paths.values()))
        task_dict = _merge([(spec, _load(manager, spec, paths[spec])) for spec in specs])
        for task in task_dict["tasks"].values():
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=_SEEDS[3])
        names = ", ".join(task_dict["tasks"])
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=batch_size)
            results = evaluate(
                lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False
            )
        except (PvregError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a template naming a missing field, a target that is no choice, ...
            raise LmEvalTaskError(f"lm-eval run of {names} failed: {type(exc).__name__}: {_cause(exc)}") from None
    if not results:
        raise LmEvalTaskError(f"lm-eval run of {names} returned no results")
    return {name: _metrics(row) for name, row in results.get("results", {}).items()}
