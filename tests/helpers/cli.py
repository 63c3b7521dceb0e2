"""Running ``pvreg`` in-process and checking what it printed.

The README's error contract -- one ``error: ...`` line on stderr, the right exit
code, no traceback, no raw control character on the terminal -- is checked by
the functions here, so every test holds the CLI to the same rule.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliResult:
    """``pvreg ARGS...`` through typer's CliRunner (stdout and stderr kept apart, exceptions not caught)."""
    from pvreg.cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


class _Finished(Protocol):
    stdout: str
    stderr: str


def one_error_line(result: _Finished, code: int | None = None, *needles: str) -> str:
    """Check the contract of a failed command and return its ``error:`` line.

    ``result`` is a :class:`CliResult` or a ``subprocess.CompletedProcess``; ``code``
    (when given) is the exit code it must have; every needle must be in the line.
    """
    rc = result.exit_code if hasattr(result, "exit_code") else result.returncode  # type: ignore[attr-defined]
    if code is not None:
        assert rc == code, (rc, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


#: The bidirectional-text controls (embeddings, overrides, isolates, marks) a terminal would act on.
BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def unsafe_chars(text: str) -> list[str]:
    """Characters a terminal would act on, by Unicode category (independent of pvreg.registry.text)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\n" or c in BIDI]


def assert_terminal_safe(text: str) -> None:
    bad = unsafe_chars(text)
    assert not bad, f"raw control characters reached the terminal: {bad!r} in {text!r}"
