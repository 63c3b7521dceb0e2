"""Python's cyclic garbage collector, paused while a ``pvreg`` command starts up and streams.

Why: start-up (typer, pydantic, SQLAlchemy, and torch for the commands that
need it) allocates about a million long-lived objects and no garbage cycles,
yet the collector walks them again and again while they are created.
Measured on the 2-core machine: ``import torch`` 2.1–2.4 s with the collector
on against 1.7–1.9 s with it off; a 0.13B compose 4.2–4.5 s against 3.7–4.0 s.
Streaming commands (compose, add, verify, export) free everything they
allocate by reference counting, so they run with the collector off to the end.

Commands that run a model (train, eval, sweep) allocate per step for as long as
they run; they call :func:`resume` when the model is loaded, which first
freezes what start-up allocated (``gc.freeze``: never scanned again) and then
turns the collector back on.  Only the CLI pauses it: a program that imports
pvreg keeps its own collector settings.

At exit the interpreter still runs one full collection over every object
(0.3–0.5 s of a compose, measured with perf); :func:`before_exit` freezes them
first, which takes them out of that collection's sight.  Nothing is skipped:
the process ends the ordinary way, with atexit handlers and files flushed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Whether :func:`pause` turned the collector off (one flag per process, in a dict: no ``global`` needed).
_state = {"paused": False}


@contextmanager
def suspended() -> Iterator[None]:
    """The collector off for the block, then as it was (``import pvreg`` runs its imports inside one)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def pause() -> None:
    """Turn the collector off for this process (the ``pvreg`` entry point calls this first)."""
    if gc.isenabled():
        gc.disable()
        _state["paused"] = True


def resume() -> None:
    """Turn the collector back on if :func:`pause` turned it off; what exists now is frozen first."""
    if _state["paused"]:
        _state["paused"] = False
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    """Called by the ``pvreg`` entry point as the command ends: the final collection then has nothing to walk."""
    gc.freeze()
