"""The `opencharacter` command line: one typer app, commands registered by topic modules."""

from __future__ import annotations

import typer

from opencharacter import __version__
from opencharacter.cli import data, ditto, evaluation, synthesis, training

app = typer.Typer(
    name="opencharacter",
    help=(
        "Build role-playing LLMs that can play any character: personas → profiles → in-character "
        "dialogues → training data → fine-tuning → chat → evaluation.\n\n"
        "Quick start (no server, no key): opencharacter synth --example --out runs/example"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"opencharacter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Root options."""


for module in (synthesis, ditto, data, training, evaluation):
    module.register(app)


def main() -> None:
    app()
