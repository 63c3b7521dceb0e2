"""The ``pvreg`` command line: parse arguments, call the Python API, render results.

No registry logic lives here.  Errors from the API are mapped to exit codes in
one place (:class:`PvregGroup`), printed as one ``error: ...`` line on stderr,
with a traceback only under ``--debug``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from pvreg.cli import compose, hub, maintenance, vectors
from pvreg.cli.state import State
from pvreg.registry.errors import PvregError

# Exit codes by error family; PvregError subclasses carry their own (2 = bad input).
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class PvregGroup(TyperGroup):
    """Maps every exception escaping a command to one stderr line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PvregError as exc:
            _report(ctx, f"error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _report(ctx, "error: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug: still one line, unless --debug
            if exc.__class__.__module__.startswith("click"):
                raise
            _report(ctx, f"error: internal error: {exc.__class__.__name__}: {' '.join(str(exc).split())} "
                         "(rerun with --debug for a traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None


def _report(ctx: Any, line: str) -> None:
    state = ctx.obj if isinstance(ctx.obj, State) else None
    if (state and state.debug) or os.environ.get("PVREG_DEBUG") == "1":
        traceback.print_exc()
    print(line, file=sys.stderr)


app = typer.Typer(
    cls=PvregGroup,
    name="pvreg",
    help="A registry for LLM preference vectors: store, validate, version, compose and share them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from pvreg import __version__

        print(f"pvreg {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    registry: Annotated[
        Optional[Path],
        typer.Option("--registry", help="Registry directory (default: $PVREG_HOME or the platform data dir).",
                     envvar=None),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options apply to every command."""
    ctx.obj = State(registry=registry, debug=debug)


vectors.register(app)
compose.register(app)
hub.register(app)
maintenance.register(app)


def main() -> None:
    app(prog_name="pvreg")
