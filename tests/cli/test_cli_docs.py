"""Every command has help text and a place in the README's command reference."""

from __future__ import annotations

import re

import typer
from helpers.paths import REPO
from pvreg.cli.main import app

README = (REPO / "README.md").read_text()


def _is_group(cmd) -> bool:
    # typer vendors click, so isinstance checks against the click package would not match.
    return hasattr(cmd, "commands")


def _commands(group, prefix: str = "") -> list[tuple[str, object]]:
    # list_commands/get_command, not .commands: the top-level group builds its commands lazily.
    out = []
    for name in sorted(group.list_commands(None)):
        cmd = group.get_command(None, name)
        full = f"{prefix}{name}"
        out.append((full, cmd))
        if _is_group(cmd):
            out.extend(_commands(cmd, full + " "))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def test_there_are_commands() -> None:
    names = {n for n, _ in COMMANDS}
    assert {"add", "list", "show", "log", "tag", "untag", "deprecate", "rm", "gc", "verify", "export",
            "fingerprint", "db", "db current", "db upgrade"} <= names


def test_every_command_has_help() -> None:
    for name, cmd in COMMANDS:
        assert (cmd.help or "").strip(), f"pvreg {name} has no help text"
        for param in cmd.params:
            if param.param_type_name == "option" and param.name not in ("help",):
                assert (param.help or "").strip(), f"pvreg {name} {param.opts[0]} has no help text"


def test_every_command_is_in_the_readme_reference() -> None:
    reference = README.split("## Command reference", 1)[1]
    for name, cmd in COMMANDS:
        if _is_group(cmd):
            continue
        assert re.search(rf"`pvreg {re.escape(name)}\b", reference), f"pvreg {name} missing from README reference"


def test_help_is_fast_and_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys; from pvreg.cli.main import main; sys.argv=['pvreg','--help']\ntry: main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip().endswith("False")
