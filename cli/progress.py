"""A rich progress bar on stderr for long operations (tensors and bytes, ETA).

rich is imported only when a bar is actually shown: ``--quiet`` runs and
non-TTY stderr (CI logs, pipes) pay nothing and get no control codes.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class TensorProgress:
    """Implements the compose progress protocol (``start``/``advance``)."""

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        self.description = description
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._tensors = 0

    def start(self, tensors: int, nbytes: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._total_tensors = tensors
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[tensors]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=nbytes, tensors=f"0/{tensors} tensors")

    def advance(self, nbytes: int) -> None:
        if self._progress is None:
            return
        self._tensors += 1
        self._progress.update(self._task, advance=nbytes, tensors=f"{self._tensors}/{self._total_tensors} tensors")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> TensorProgress:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
