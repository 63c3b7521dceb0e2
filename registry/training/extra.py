"""Is the ``pvreg[train]`` extra installed? Checked without importing it.

``pvreg train`` needs trl, datasets and (for LoRA) peft, which pvreg does not
depend on. The check looks the packages up with :func:`importlib.util.find_spec`
and reads their installed version from metadata, so a missing or too old package
is one ``MissingExtraError`` line before torch, transformers or a model is loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from pvreg.registry.errors import MissingExtraError

__all__ = ["INSTALL_HINT", "require", "require_training"]

INSTALL_HINT = "pip install 'pvreg[train]'"
#: Import name -> (distribution name, minimum version) of what the extra pins.
MINIMUM = {
    "trl": ("trl", (1, 0)),
    "datasets": ("datasets", (2, 18)),
    "peft": ("peft", (0, 12)),
    "pyarrow": ("pyarrow", (0,)),
    "transformers": ("transformers", (4, 56)),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module with no spec
        return False


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+", maxsplit=1)[0])[:3])


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` is importable at the version the extra pins."""
    dist, minimum = MINIMUM.get(module, (module, (0,)))
    if not _installed(module):
        raise MissingExtraError(f"{purpose} needs the '{dist}' package, which is not installed: {INSTALL_HINT}")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return  # importable but unpackaged (a source checkout): trust it
    if _version_tuple(version) < minimum:
        wanted = ".".join(map(str, minimum))
        raise MissingExtraError(f"{purpose} needs {dist}>={wanted}, but {dist} {version} is installed: {INSTALL_HINT}")


def require_training(method: str) -> None:
    """Everything a DPO run of ``method`` ('full' or 'lora') imports."""
    for module in ("trl", "transformers", "datasets") + (("peft",) if method == "lora" else ()):
        require(module, "pvreg train")
