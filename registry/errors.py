"""The one exception hierarchy of pvreg.

Every error a user can cause or meet derives from :class:`PvregError`. Each class
carries the exit code the CLI uses (2 for bad input, 1 for failures of the
environment or of integrity), and also inherits the closest builtin so callers
of the Python API can catch ``LookupError``/``ValueError`` idiomatically.
Messages are single lines that name what is wrong and where.
"""

from __future__ import annotations


class PvregError(Exception):
    """Root of every error pvreg raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # Keep messages on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


class UserError(PvregError):
    """The input (arguments, files, references) is wrong; exit code 2."""

    exit_code = 2


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
