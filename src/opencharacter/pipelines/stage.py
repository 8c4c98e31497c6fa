"""Run one pipeline stage in a run folder: estimate it, or execute it and record the outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencharacter.engine.manifest import compact_failures, update_manifest
from opencharacter.engine.runner import (
    EngineSettings,
    ParseFn,
    StageStats,
    Task,
    estimate_prompt_tokens,
    run_stage,
)
from opencharacter.engine.store import read_ids
from opencharacter.llm.base import ChatModel

FAILURES_FILE = "failures.jsonl"


@dataclass
class StagePlan:
    """Everything a stage needs: `tasks()` returns a fresh stream each call (inputs are re-read)."""

    name: str
    results_file: str
    id_field: str
    tasks: Callable[[], Iterator[Task]]
    parse: ParseFn
    total: int
    notes: dict[str, Any] = field(default_factory=dict)  # input counts for run.json (duplicates, ...)


@dataclass
class Estimate:
    stage: str
    calls: int
    already_done: int
    prompt_tokens: int
    max_completion_tokens: int
    first_prompt: str | None

    def cost(self, settings: EngineSettings) -> float:
        return (self.prompt_tokens * settings.price_in + self.max_completion_tokens * settings.price_out) / 1e6


def estimate(plan: StagePlan, run_dir: Path | None) -> Estimate:
    """Calls, tokens (≈4 characters a token) and the first prompt, without calling a model."""
    done = read_ids(run_dir / plan.results_file, plan.id_field) if run_dir else set()
    calls = already = prompt_tokens = completion_tokens = 0
    first: str | None = None
    for task in plan.tasks():
        if task.task_id in done:
            already += 1
            continue
        calls += 1
        prompt_tokens += estimate_prompt_tokens(task.request)
        completion_tokens += task.request.max_tokens
        if first is None:
            first = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in task.request.messages)
    return Estimate(plan.name, calls, already, prompt_tokens, completion_tokens, first)


async def execute(
    plan: StagePlan,
    model: ChatModel,
    run_dir: Path,
    settings: EngineSettings,
    run_settings: dict[str, Any],
    progress: bool = True,
) -> StageStats:
    """Run the stage; whatever happens (done, Ctrl-C, fatal error), `run.json` tells the outcome."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / plan.results_file
    failures_path = run_dir / FAILURES_FILE
    stats = StageStats(stage=plan.name, total=plan.total)
    try:
        return await run_stage(
            model, plan.tasks(), plan.parse, stage=plan.name, results_path=results_path,
            failures_path=failures_path, id_field=plan.id_field, settings=settings, total=plan.total,
            progress=progress, stats=stats,
        )
    finally:
        done = read_ids(results_path, plan.id_field)
        still_failed = compact_failures(failures_path, plan.name, done)
        # This plan's records: a results file may be shared by stages (ditto and generate dialogues).
        info = {**stats.as_dict(), "records": stats.already_done + stats.succeeded, "failed_now": sum(still_failed.values()),
                "failures_by_reason": dict(still_failed), "inputs": plan.notes, "output": plan.results_file}
        update_manifest(run_dir, plan.name, info, run_settings)

