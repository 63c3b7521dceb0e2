"""Where the repository is, for tests that run its scripts or read its files (README, Makefile, bench/)."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding pyproject.toml); tests/helpers/paths.py is two levels below it.
REPO = Path(__file__).resolve().parents[2]
