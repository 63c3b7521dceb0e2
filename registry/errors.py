"""The one exception hierarchy of pvreg.

Every error a user can cause or meet derives from :class:`PvregError`. Each class
carries the exit code the CLI uses (2 for bad input, 1 for failures of the
environment or of integrity), and also inherits the closest builtin so callers
of the Python API can catch ``LookupError``/``ValueError`` idiomatically.
Messages are single lines that name what is wrong and where.

The library does not speak command line: a message that names an option
writes it with :func:`opt` (``opt("force", True)``).  ``str(error)`` spells it
the Python way (``force=True``); the CLI renders the same message with the
flag (``--force``) through :meth:`PvregError.render`, in one place.  Keyword
arguments given to an error are kept as attributes (``exc.expected``,
``exc.tensor``), so callers need not parse messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

#: ``⟦name⟧`` or ``⟦name=value⟧``: an option named in a message (see :func:`opt`).
_OPTION_RE = re.compile("\u27e6([a-z_]+)(?:=([^\u27e7]*))?\u27e7")


def opt(name: str, value: object = None) -> str:
    """A reference to the option ``name`` inside an error message.

    ``value`` is what a Python caller would pass (``opt("force", True)`` reads
    ``force=True``); the CLI shows the flag alone (``--force``).
    """
    return f"\u27e6{name}\u27e7" if value is None else f"\u27e6{name}={value}\u27e7"


def python_spelling(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


def render_options(message: str, spell: Callable[[str, str | None], str] = python_spelling) -> str:
    """``message`` with every :func:`opt` reference spelled by ``spell(name, value)``."""
    return _OPTION_RE.sub(lambda m: spell(m.group(1), m.group(2)), message)


class PvregError(Exception):
    """Root of every error pvreg raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, **fields: Any) -> None:
        # Keep messages on one line whatever the caller passed in.
        self.template = " ".join(str(message).split())
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)
        super().__init__(render_options(self.template))

    def render(self, spell: Callable[[str, str | None], str]) -> str:
        """The message with options spelled by ``spell`` (the CLI passes its flag names)."""
        return render_options(self.template, spell)


class ProblemsError(PvregError):
    """Several problems found by one validation, raised together.

    The raised object is an instance of every problem's own class as well
    (see :func:`raise_problems`), so ``except NotFoundError`` still catches a
    mix of a missing reference and a base mismatch; ``problems`` lists each.
    """

    problems: Sequence[PvregError]


#: How many problems one message names; the rest are counted.
SHOWN_PROBLEMS = 10


@cache
def _problems_class(classes: tuple[type[PvregError], ...]) -> type[ProblemsError]:
    exit_code = 2 if all(issubclass(c, UserError) for c in classes) else 1
    name = "ProblemsError[" + ",".join(c.__name__ for c in classes) + "]"
    return type(name, (ProblemsError, *classes), {"exit_code": exit_code, "__module__": __name__})


def raise_problems(problems: Sequence[PvregError]) -> None:
    """Raise nothing for no problems, the problem itself for one, else a :class:`ProblemsError`."""
    unique: list[PvregError] = []
    seen: set[str] = set()
    for p in problems:
        if p.template not in seen:
            seen.add(p.template)
            unique.append(p)
    if not unique:
        return
    if len(unique) == 1:
        raise unique[0]
    classes = tuple(dict.fromkeys(type(p) for p in unique))
    more = len(unique) - SHOWN_PROBLEMS
    message = "; ".join(p.template for p in unique[:SHOWN_PROBLEMS]) + (
        f"; and {more} more problem(s)" if more > 0 else ""
    )
    raise _problems_class(classes)(message, problems=unique)


class UserError(PvregError):
    """The input (arguments, files, references) is wrong; exit code 2."""

    exit_code = 2


class InvalidOptionError(UserError, ValueError):
    """An option's value is not one pvreg accepts (a dtype, a size, a sign, ...)."""


class InvalidNameError(UserError, ValueError):
    """A vector name or alias breaks the slug rules."""


class NotFoundError(UserError, LookupError):
    """A reference, name, alias, base or file does not exist."""


class AmbiguousReferenceError(UserError, LookupError):
    """A ``sha256:`` prefix matches more than one version."""


class InvalidReferenceError(UserError, ValueError):
    """A reference string does not follow the reference grammar."""


class InvalidTensorFileError(UserError, ValueError):
    """A safetensors or checkpoint file cannot be parsed or is malformed."""


class InvalidVectorError(UserError, ValueError):
    """A file parses but is not an acceptable preference vector (dtype, NaN/Inf)."""


class UnsafeCheckpointError(InvalidTensorFileError):
    """A pickle checkpoint needs code execution to load; it is refused unread."""


class BaseMismatchError(UserError, ValueError):
    """Tensors or fingerprints do not fit the base model."""


class SpecError(UserError, ValueError):
    """A compose spec (tokens, file or options) is invalid."""


class UnsupportedAdapterError(UserError, ValueError):
    """A LoRA adapter uses a feature pvreg cannot represent exactly."""


class OutputExistsError(UserError, FileExistsError):
    """An output path exists and ``--force`` was not given."""


class IntegrityError(PvregError):
    """Stored bytes or norms disagree with the metadata (verify, pull)."""


class DatabaseVersionError(PvregError):
    """The database schema is newer than this pvreg or a migration failed."""


class HubError(PvregError):
    """A Hugging Face Hub operation failed for a reason outside the input."""


class HubNotFoundError(UserError, LookupError):
    """A Hub repository, revision or file does not exist."""


class HubAuthError(UserError, PermissionError):
    """The Hub refused the credentials (401/403)."""


# --- outputs -------------------------------------------------------------------


class UnsafeOutputError(UserError, ValueError):
    """An output path would overwrite the registry, its database or blobs, or an input of the command."""


# --- the database and the environment (fix-env) ---------------------------------------------------------------------


class StorageError(PvregError):
    """The filesystem or the database refused an operation: disk full, permission denied,
    a read-only file system, a database that cannot be opened or reached; exit code 1."""


class ReadOnlyRegistryError(StorageError):
    """A write was attempted on a registry this process can only read."""


class LostDatabaseError(PvregError):
    """The database is empty or missing while the blob store holds blobs: it was most
    likely lost or truncated, so pvreg refuses to start a new one over the old blobs."""


class UnsafeGcError(PvregError):
    """``gc`` would delete every blob because the database lists no versions at all."""


class RegistryPathError(UserError, NotADirectoryError):
    """The registry location is (or lies under) a regular file; exit code 2."""


# --- names/text from outside, Hub edge cases (fix-hub) ---------------------------------------------


class InvalidTextError(UserError, ValueError):
    """A dataset label, tag, message, description or lineage entry breaks the text rules
    (length, control characters), whichever source it came from."""


class HubContentError(UserError, ValueError):
    """A file in a Hub repo cannot be used as it is (e.g. a model card that is not UTF-8)."""


class HubEndpointError(UserError):
    """The endpoint answered, but not like a Hugging Face Hub (HTML pages, 404 for every API route)."""


# --- evaluation ----------------------------------------------------------------


class EvalError(UserError, ValueError):
    """An evaluation request is invalid (options, models, precomputed references)."""


class EvalSetError(EvalError):
    """An eval file (``--text``, ``--pairs``, ``--choices``) is unreadable or malformed; names file and line."""


class GridError(EvalError):
    """A sweep grid (``start:stop:step`` or a comma list) is empty or malformed."""


class MissingDependencyError(PvregError):
    """An optional dependency (e.g. matplotlib for plots, ``pip install 'pvreg[eval]'``) is not installed."""


# --- training ------------------------------------------------------------------


class MissingExtraError(PvregError, ImportError):
    """An optional dependency group is not installed (e.g. ``pip install 'pvreg[train]'``).

    Exit code 2: the command cannot run as asked until the user installs the extra.
    """

    exit_code = 2


class PreferenceDataError(UserError, ValueError):
    """A preference-pair file is unreadable or a row is malformed (names the file and the 1-based row)."""


class TrainOptionsError(UserError, ValueError):
    """Training options, or a base model, cannot be trained as asked (no tokenizer, no chat template, ...)."""


class TrainingDivergedError(UserError, ArithmeticError):
    """A training run produced a non-finite loss or weights; usually the learning rate is too high."""


class DeviceUnavailableError(PvregError, RuntimeError):
    """The requested training device (e.g. ``cuda``) is not available on this machine; exit code 1."""


# --- train (#14) ---


# --- eval and sweep (#15) ---


class SweepInterruptedError(PvregError):
    """Ctrl-C during a sweep: the points measured so far are stored and the partial CSV/JSON written.

    ``result`` holds the partial :class:`~pvreg.schemas.evaluation.SweepResult`; exit code 130, as for SIGINT.
    """

    exit_code = 130


# --- similarity and diff (#15) ---


class LmEvalTaskError(EvalError):
    """An lm-evaluation-harness task cannot run as given: an unknown task name, a task YAML that is
    missing, unreadable or invalid, or data the task cannot use; names the task as given."""


# --- LoRA export (#17) ---


# --- performance (#13) ---
