"""What the data commands share: a run folder option, the dry-run table, running plans with a summary."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from opencharacter.cli import options as o
from opencharacter.cli.common import console, fail
from opencharacter.engine.runner import StageStats
from opencharacter.llm.base import ChatModel
from opencharacter.pipelines.stage import FAILURES_FILE, Estimate, StagePlan, execute

DATA_PANEL = "Data"
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder: characters.jsonl, dialogues.jsonl, failures.jsonl, run.json.", rich_help_panel=DATA_PANEL)]


def estimate_table(estimates: list[Estimate], opts: o.ModelOptions) -> None:
    """The `--dry-run` report: calls, tokens and cost per stage, then each stage's first prompt."""
    settings = opts.engine_settings()
    table = Table(title="Dry run: nothing was sent to a model", title_justify="left")
    for column in ("stage", "calls", "already done", "prompt tokens (est.)", "completion tokens (≤)", "cost USD (≤)"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for e in estimates:
        table.add_row(e.stage, f"{e.calls:,}", f"{e.already_done:,}", f"{e.prompt_tokens:,}",
                      f"{e.max_completion_tokens:,}", f"{e.cost(settings):,.4f}")
    console.print(table)
    if not (opts.price_in or opts.price_out):
        console.print("Pass --price-in and --price-out (USD per million tokens) to see a cost.")
    for e in estimates:
        if e.first_prompt:
            console.print(Panel(e.first_prompt, title=f"first {e.stage} prompt", expand=False), highlight=False)


def summary(stats: StageStats, plan: StagePlan, run_dir: Path) -> None:
    """One line per stage, plus where the failures are and what the inputs lost (duplicates, ...)."""
    tokens = stats.usage.total_tokens
    console.print(
        f"[bold green]{stats.stage}[/]: {stats.succeeded:,} written, {stats.already_done:,} already done, "
        f"{stats.failed:,} failed · {stats.requests:,} requests · {tokens:,} tokens · ${stats.cost:,.4f} · "
        f"{stats.elapsed:,.1f}s → {run_dir / plan.results_file}", highlight=False,
    )
    if stats.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats.failures_by_reason.most_common())
        console.print(f"  [yellow]failures[/] ({reasons}): see {run_dir / FAILURES_FILE}; "
                      "run the same command again to retry them.", highlight=False)
    for key, label in (("duplicates_dropped", "duplicate inputs dropped"), ("without_answer", "questions without an answer skipped (rewrite needs one)")):
        if plan.notes.get(key):
            console.print(f"  {plan.notes[key]:,} {label}", highlight=False)


async def run_plan(plan: StagePlan, model: ChatModel, run_dir: Path, opts: o.ModelOptions, extra: dict[str, Any]) -> StageStats:
    """Execute a stage with the command's options (recorded in run.json) and print its summary."""
    stats = await execute(plan, model, run_dir, opts.engine_settings(), {**opts.as_settings(), **extra}, opts.progress)
    summary(stats, plan, run_dir)
    return stats


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a folder")


@contextlib.asynccontextmanager
async def model_session(opts: o.ModelOptions) -> AsyncIterator[ChatModel]:
    """The model for a command's stages, closed however they end."""
    chat_model = opts.build()
    try:
        yield chat_model
    finally:
        await chat_model.aclose()
