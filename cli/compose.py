"""Placeholder: the compose commands land here."""

import typer


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the main app."""
