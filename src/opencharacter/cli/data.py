"""`opencharacter export` and `opencharacter stats`: turn a run into training files, and look at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from opencharacter.cli.common import fail
from opencharacter.io.export import ExportError, ExportFormat, export, output_kind, push_to_hub
from opencharacter.io.readers import InputError

out_console = Console()
progress_console = Console(stderr=True)

EXPORT_EPILOG = (
    "Examples:\n\n"
    "  opencharacter export runs/demo --format sharegpt --out data/demo.jsonl\n\n"
    "  opencharacter export synthetic_dialogue.jsonl --characters synthetic_character.jsonl "
    "--format messages --out opencharacter.parquet\n\n"
    "  HF_TOKEN=... opencharacter export runs/demo --format messages --out demo.parquet --push-to-hub me/demo --private"
)
STATS_EPILOG = (
    "Examples:\n\n"
    "  opencharacter stats runs/demo\n\n"
    "  opencharacter stats runs/demo --json > stats.json"
)


def export_command(
    run: Annotated[str, typer.Argument(help=(
        "A run folder, a dialogues.jsonl, an exported messages/ShareGPT/OpenAI file (.jsonl, .json, .parquet), "
        "or the released synthetic_dialogue.jsonl."
    ), show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file; .jsonl or .parquet decides the file type.",
                                      show_default=False)],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help=(
        "messages: {messages, sample_id, character_id} (TRL/HF chat). sharegpt: {conversations, system} plus "
        "LLaMA-Factory's dataset_info.json beside the output. openai: exactly {messages} (OpenAI fine-tuning)."
    ))] = ExportFormat.MESSAGES,
    characters: Annotated[Path | None, typer.Option("--characters", help=(
        "Characters file for the released layout (default: synthetic_character.jsonl or characters.jsonl beside RUN)."
    ), show_default=False)] = None,
    push_to: Annotated[str | None, typer.Option("--push-to-hub", metavar="REPO_ID", help=(
        "Also upload the file as a Hugging Face dataset (needs $HF_TOKEN)."), show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="Make the pushed dataset private.")] = False,
) -> None:
    """Export dialogues as a training file: messages, ShareGPT (LLaMA-Factory) or OpenAI fine-tuning format."""
    try:
        output_kind(out)
        with progress_console.status("exporting…") as status:
            result = export(run, out, fmt, characters=characters,
                            on_progress=lambda rows: status.update(f"exporting… {rows:,} rows"))
    except (InputError, ExportError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # unwritable --out, disk full: say which file, not a traceback
        raise fail(f"{exc.filename or out}: {exc.strerror or exc}") from None
    out_console.print(f"[green]Wrote {result.rows:,} rows[/] ({result.format.value}, {output_kind(out)}) → {result.path}",
                      highlight=False)
    if result.dataset_info:
        out_console.print(f"LLaMA-Factory entry [bold]{result.path.stem}[/] in {result.dataset_info}", highlight=False)
    if push_to:
        try:
            with progress_console.status(f"pushing to {push_to}…"):
                url = push_to_hub(result.path, push_to, private=private)
        except ExportError as exc:
            raise fail(str(exc)) from None
        out_console.print(f"[green]Pushed[/] to {url}{' (private)' if private else ''}", highlight=False)


def stats_command(
    run: Annotated[str, typer.Argument(help="A run folder (or a dialogues file).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
) -> None:
    """Counts, failures, length distributions and the most common character names of a run."""
    from opencharacter.stats import compute_stats, render_stats

    try:
        stats = compute_stats(run)
    except InputError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.filename or run}: {exc.strerror or exc}") from None
    if as_json:
        typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        render_stats(stats, out_console)


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EXPORT_EPILOG)(export_command)
    app.command("stats", epilog=STATS_EPILOG)(stats_command)
