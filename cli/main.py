"""The ``pvreg`` command line: parse arguments, call the Python API, render results.

No registry logic lives here.  Every exception escaping a command is caught in
one place (:class:`PvregGroup`) and printed as one ``error: ...`` line on
stderr (:mod:`pvreg.cli.errors` spells it), with a traceback only under ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from pvreg.cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, error_line
from pvreg.cli.state import State
from pvreg.registry.errors import PvregError

# Every command, in help order: name -> (module under pvreg.cli, function or sub-app).
# Commands are built from their signatures only when used (see PvregGroup.get_command).
COMMANDS: dict[str, tuple[str, str]] = {
    "add": ("vectors", "add"),
    "list": ("vectors", "list_"),
    "show": ("vectors", "show"),
    "log": ("vectors", "log"),
    "tag": ("vectors", "tag"),
    "untag": ("vectors", "untag"),
    "deprecate": ("vectors", "deprecate"),
    "rm": ("vectors", "rm"),
    "export": ("vectors", "export"),
    "train": ("train", "train"),
    "compose": ("compose", "compose"),
    "compositions": ("compose", "compositions"),
    "eval": ("evaluate", "eval_"),
    "evals": ("evaluate", "evals"),
    "sweep": ("sweep", "sweep"),
    "similarity": ("compare", "similarity"),
    "diff": ("compare", "diff"),
    "export-lora": ("serving", "export_lora"),
    "push": ("hub", "push"),
    "pull": ("hub", "pull"),
    "remote": ("hub", "remote_app"),
    "fingerprint": ("maintenance", "fingerprint"),
    "verify": ("maintenance", "verify"),
    "gc": ("maintenance", "gc"),
    "bases": ("maintenance", "bases"),
    "db": ("maintenance", "db_app"),
}


class PvregGroup(TyperGroup):
    """The ``pvreg`` group: builds commands lazily, and maps every exception
    escaping a command to one stderr line and an exit code.

    Typer would otherwise turn all twenty command signatures into click
    commands on every start, which costs about as much as ``pvreg list``'s
    whole query; only ``--help`` needs them all.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: dict[str, Any] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self._built:
            module, attr = COMMANDS[cmd_name]
            target = getattr(importlib.import_module(f"pvreg.cli.{module}"), attr)
            # Any: recent typer returns commands of its vendored click (typer._click), older releases click's own.
            command: Any
            if isinstance(target, typer.Typer):  # a command group (db, remote)
                command = typer.main.get_group(target)
            else:
                single = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
                single.command(cmd_name)(target)
                command = typer.main.get_command(single)
            command.name = cmd_name
            self._built[cmd_name] = command
        return self._built[cmd_name]

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # Bad global options (``pvreg --bogus``) fail here, before invoke.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except typer.TyperException as exc:
            raise _usage_exit(parent, exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PvregError as exc:
            _report(ctx, error_line(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _report(ctx, "error: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:  # bad command line: unknown command/option, bad value
            raise _usage_exit(ctx, exc) from None
        except Exception as exc:  # a bug: still one line, unless --debug
            _report(
                ctx,
                f"error: internal error: {exc.__class__.__name__}: {' '.join(str(exc).split())} "
                "(rerun with --debug for a traceback)",
            )
            raise typer.Exit(EXIT_INTERNAL) from None


def _usage_exit(ctx: Any, exc: Exception) -> Exception:
    """Click's usage errors as one ``error:`` line (exit 2), like every other bad input.

    A group called without a subcommand still shows its help, as click does.
    """
    if type(exc).__name__ == "NoArgsIsHelpError":
        return exc
    where = getattr(exc, "ctx", None) or ctx
    hint = f" (see '{where.command_path} --help')" if where is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _report(ctx, f"error: {' '.join(message.split())}{hint}")
    return typer.Exit(getattr(exc, "exit_code", 2))


def _report(ctx: Any, line: str) -> None:
    """The one ``error:`` line, escaped like all human output (a message may quote a forged name)."""
    from pvreg.cli.output import say

    state = ctx.obj if ctx is not None and isinstance(ctx.obj, State) else None
    if (state and state.debug) or os.environ.get("PVREG_DEBUG") == "1":
        traceback.print_exc()
    say(line, err=True)


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
        from pvreg.registry.version import __version__

        print(f"pvreg {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry", help="Registry directory (default: $PVREG_HOME or the platform data dir).", envvar=None
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options apply to every command."""
    ctx.obj = State(registry=registry, debug=debug)


def main() -> None:
    """The ``pvreg`` console script.  The cyclic garbage collector is off for the command (see gcpause)."""
    from pvreg.registry import gcpause

    gcpause.pause()
    try:
        app(prog_name="pvreg")
    finally:
        gcpause.before_exit()
