"""The process settings a training run needs, applied for its duration only.

:func:`quiet` silences the libraries' progress bars, info logs and deprecation
chatter (the caller's progress protocol replaces them); :func:`deterministic` turns
on deterministic kernels, sets the thread count asked for, and puts the caller's RNG
state, flags and thread count back afterwards, so training leaves no global trace.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import random
import warnings
from collections.abc import Iterator

from pvreg.registry.errors import DeviceUnavailableError

__all__ = ["deterministic", "first_line", "quiet", "versions"]

_VERSIONED = ("trl", "transformers", "torch", "peft", "datasets", "accelerate")


def versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on (for provenance)."""
    found = {}
    for dist in _VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars, info logs or deprecation chatter from the libraries; restored on exit."""
    import datasets
    import datasets.utils as ds_tqdm
    import transformers

    tlog = transformers.utils.logging
    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    ds_verbosity, ds_bars_off = datasets.logging.get_verbosity(), ds_tqdm.are_progress_bars_disabled()
    loggers = {name: logging.getLogger(name).level for name in ("trl", "accelerate", "peft")}
    tqdm_env = os.environ.get("TQDM_DISABLE")
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    ds_tqdm.disable_progress_bars()
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ["TQDM_DISABLE"] = "1"  # trl's reference-log-prob pass reads it
    from pvreg.registry.hub.client import progress_bars  # the only owner of the Hub client's bars

    try:
        with warnings.catch_warnings(), progress_bars(never=True):  # save_pretrained's "Writing model shards"
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()
        datasets.logging.set_verbosity(ds_verbosity)
        if not ds_bars_off:
            ds_tqdm.enable_progress_bars()
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


@contextlib.contextmanager
def deterministic(device: str, threads: int | None) -> Iterator[None]:
    """Deterministic kernels, the thread count asked for, and a clean RNG slate for the runs;
    the caller's settings and RNG state come back."""
    import numpy as np
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device=cuda was asked for, but torch sees no usable CUDA GPU here")
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    states = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if device == "cuda" and cublas is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    num_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(num_threads)
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        if device == "cuda" and cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
