"""Per-invocation CLI state set by the global callback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from pvreg.registry.api import Registry


@dataclass
class State:
    registry: Path | None = None
    debug: bool = False

    def open(self) -> Registry:
        return Registry.open(self.registry)


def open_registry(ctx: typer.Context) -> Registry:
    """The registry named by the global options; commands use it as a context manager."""
    state = ctx.obj if isinstance(ctx.obj, State) else State()
    return state.open()
