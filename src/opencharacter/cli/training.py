"""Placeholder: commands are being written in parallel; this module registers nothing yet."""

import typer


def register(app: typer.Typer) -> None:
    return None
