"""How library errors read on the command line: the flag names, the exit codes, in one place.

The library names options the Python way (``force=True``, see
:func:`pvreg.registry.errors.opt`); this module spells them as the flags of
the command that failed (``--force``), so neither layer speaks the other's
language.  Exit codes come from the error classes themselves (2 = bad input,
1 = environment or integrity).
"""

from __future__ import annotations

from pvreg.registry.errors import PvregError

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130

#: Python parameter name -> command-line flag, where the flag is not ``--`` + the name with dashes.
FLAGS: dict[str, str] = {
    "as_name": "--as",
    "names": "--name",
    "tags": "--tag",
    "lm_eval_tasks": "--lm-eval-task",
    "n_bootstrap": "--bootstrap",
}


def flag(name: str, value: str | None = None) -> str:
    """The flag a Python option name stands for (``vector_only`` -> ``--vector-only``)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def error_line(exc: PvregError) -> str:
    """The one ``error:`` line for ``exc``, with its options spelled as flags."""
    return f"error: {exc.render(flag)}"
