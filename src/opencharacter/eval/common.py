"""What every evaluation suite shares: stages run through the engine, judges, dry runs, records.

A suite is "build tasks from inputs" + "parse completions into records", like a synthesis stage. It
runs each stage through `run_stage` (so it resumes, retries, records failures, shows progress and
counts cost), compacts `failures.jsonl` and writes the stage's figures into `run.json`. Later stages
are built from the records of earlier ones, read back from disk, so a resumed run and a fresh run
build exactly the same tasks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from opencharacter.engine.runner import EngineSettings, InvalidOutput, ParseFn, StageStats, Task
from opencharacter.engine.store import iter_jsonl
from opencharacter.io.readers import InputError
from opencharacter.llm.base import ChatModel, ChatRequest, FatalError
from opencharacter.llm.factory import build_model
from opencharacter.pipelines.stage import FAILURES_FILE, StagePlan, estimate, execute
from opencharacter.records import stable_id

ANSWERS = "answers.jsonl"
JUDGEMENTS = "judgements.jsonl"
FAILURES = FAILURES_FILE


def fill(template: str, values: Mapping[str, str], source: str = "template") -> str:
    """Fill `{name}` placeholders of a benchmark's text file in one pass.

    Not `str.format`: the files may hold other braces, and a value (an answer that quotes
    "{persona}") must reach the judge literally, never be substituted again. Every name in `values`
    must occur in the template, so a renamed placeholder is an error naming the file, not a prompt
    silently missing the answer.
    """
    missing = [name for name in values if "{" + name + "}" not in template]
    if missing:
        raise InputError(source, None, f"placeholder(s) {', '.join('{' + m + '}' for m in missing)} not found")
    pattern = re.compile(r"\{(" + "|".join(re.escape(name) for name in values) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


def load_records(path: Path, id_field: str) -> dict[str, dict[str, Any]]:
    """Records of a results file by id (the latest wins; a torn last line is skipped)."""
    return {str(r[id_field]): r for r in iter_jsonl(path) if id_field in r}


def guard_same_model(out: Path, model: str, **expected: Any) -> None:
    """Refuse to mix two models' answers in one folder: resume only continues the same run."""
    for record in iter_jsonl(out / ANSWERS):
        if record.get("model") != model:
            raise FatalError(
                f"{out} holds answers of model {record.get('model')!r}, not {model!r}: "
                "use another --out (then compare the two with `opencharacter eval compare`)"
            )
        for key, value in expected.items():
            if key in record and record[key] != value:
                raise FatalError(
                    f"{out} holds answers made with {key}={record[key]!r}, not {value!r}: use another --out"
                )
        return


@dataclass
class JudgeOptions:
    """The judges: each one grades every answer. Served by the model's URL unless `base_url` is set."""

    models: list[str]
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 2048
    concurrency: int | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    timeout: float = 120.0

    def build(self, name: str, fallback_url: str | None, fallback_key_env: str) -> ChatModel:
        url = self.base_url or fallback_url
        key_env = self.api_key_env if self.base_url else fallback_key_env
        return build_model(name, backend="openai", base_url=url, api_key_env=key_env, timeout=self.timeout)


@dataclass
class PlannedStage:
    """One line of a dry run: what a stage would cost if run now."""

    stage: str
    model: str
    calls: int
    done: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    first_prompt: str = ""


@dataclass
class ModelSlot:
    """A model a suite calls, built on first use, so a dry run builds, loads and keys nothing."""

    name: str
    factory: Callable[[], ChatModel]
    engine: EngineSettings


@dataclass
class EvalRun:
    """Runs a suite's stages into `out`, or (dry run) only counts them.

    `models` is keyed by role ("model", "judge:NAME"), so a model judging itself is two slots.
    """

    out: Path
    settings: dict[str, Any]
    models: dict[str, ModelSlot]
    dry_run: bool = False
    progress: bool = True
    console: Console = field(default_factory=lambda: Console(stderr=True))
    plan: list[PlannedStage] = field(default_factory=list)
    stats: dict[str, StageStats] = field(default_factory=dict)
    _built: dict[str, ChatModel] = field(default_factory=dict)

    def model(self, slot: str) -> ChatModel:
        if slot not in self._built:
            self._built[slot] = self.models[slot].factory()
        return self._built[slot]

    async def aclose(self) -> None:
        for model in self._built.values():
            await model.aclose()
        self._built.clear()

    async def stage(self, stage: str, slot: str, tasks: Iterable[Task], parse: ParseFn, results: str,
                    id_field: str) -> StageStats | None:
        """Run (or, in a dry run, count) one stage; returns its stats, None in a dry run.

        The same `pipelines.stage` helpers as synthesis: compacted failures and run.json either way.
        """
        tasks = list(tasks)
        plan = StagePlan(stage, results, id_field, lambda: iter(tasks), parse, len(tasks))
        engine = self.models[slot].engine
        model = self.models[slot].name
        if self.dry_run:
            e = estimate(plan, self.out if self.out.exists() else None)
            self.plan.append(PlannedStage(
                stage, model, e.calls + e.already_done, e.already_done, e.prompt_tokens, e.max_completion_tokens,
                e.cost(engine), e.first_prompt or "",
            ))
            return None
        stats = await execute(plan, self.model(slot), self.out, engine, {**self.settings, "stage_model": model},
                              self.progress)
        self.stats[stage] = stats
        return stats

    def print_plan(self, note: str = "") -> None:
        """The dry run's table: calls per stage, tokens and cost (upper bounds: see the note)."""
        table = Table(title="Dry run: model calls per stage (nothing was called)")
        for column in ("stage", "model", "calls", "already done", "to run", "prompt tok (est.)",
                       "completion tok (max)", "cost USD (max)"):
            table.add_column(column, justify="left" if column in ("stage", "model") else "right")
        for p in self.plan:
            table.add_row(p.stage, p.model, f"{p.calls:,}", f"{p.done:,}", f"{p.calls - p.done:,}",
                          f"{p.prompt_tokens:,}", f"{p.completion_tokens:,}", f"{p.cost:.4f}")
        calls = sum(p.calls for p in self.plan)
        todo = sum(p.calls - p.done for p in self.plan)
        table.add_row("total", "", f"{calls:,}", f"{calls - todo:,}", f"{todo:,}",
                      f"{sum(p.prompt_tokens for p in self.plan):,}",
                      f"{sum(p.completion_tokens for p in self.plan):,}",
                      f"{sum(p.cost for p in self.plan):.4f}", style="bold")
        self.console.print(table)
        self.console.print(
            "Prompt tokens are estimated at ~4 characters a token; text that later stages read but "
            "earlier stages have not written yet (answers, score examples) is counted at its max tokens, "
            "and completions at max tokens, so tokens and cost are upper bounds." + (f" {note}" if note else "")
        )
        for p in self.plan:
            if p.first_prompt:
                self.console.print(f"\n[bold]First prompt of stage {p.stage}:[/]")
                self.console.print(p.first_prompt[:3000], markup=False, highlight=False)
                break

    def failed_counts(self, task_ids: set[str] | None = None) -> dict[str, int]:
        """Tasks still failed per stage (of `task_ids`, if given: this run's plan), from `failures.jsonl`."""
        counts: dict[str, int] = {}
        for record in iter_jsonl(self.out / FAILURES):
            if task_ids is not None and record.get("task_id") not in task_ids:
                continue
            stage = str(record.get("stage"))
            counts[stage] = counts.get(stage, 0) + 1
        return counts


def placeholder_text(max_tokens: int) -> str:
    """Stands in for not-yet-written text in a dry run: as long as it can be (4 chars a token)."""
    return "x" * (4 * max_tokens)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation (0 for a single value); (None, None) for none."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, variance**0.5


def summary(values: list[float]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": _round(mean), "std": _round(std), "n": len(values)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class Conversation:
    """A scripted multi-turn conversation: the user's turns are fixed, the model answers each in order."""

    conversation_id: str
    turns: tuple[str, ...]
    system: str | None = None
    fields: tuple[tuple[str, Any], ...] = ()  # copied into every answer record (question_id, role, ...)

    def answer_id(self, turn: int) -> str:
        return stable_id("turn-answer", self.conversation_id, str(turn))


async def answer_turns(run: EvalRun, conversations: list[Conversation], model: str, temperature: float,
                       max_tokens: int) -> dict[str, dict[str, Any]]:
    """One stage per turn (`answers:turnN`): turn N is asked once turns 1..N-1 have answers.

    Returns the answer records by id (in a dry run, stand-ins as long as an answer can be).
    """
    by_id = {c.answer_id(t): (c, t) for c in conversations for t in range(1, len(c.turns) + 1)}
    answers = {} if run.dry_run else load_records(run.out / ANSWERS, "answer_id")

    def parse(task: Task, completion: Any) -> dict[str, Any]:
        text = completion.text.strip()
        if not text:
            raise InvalidOutput("empty answer")
        conv, turn = by_id[task.task_id]
        return {"answer_id": task.task_id, "conversation_id": conv.conversation_id, **dict(conv.fields),
                "turn": turn, "question": conv.turns[turn - 1], "answer": text, "model": model}

    for turn in range(1, max((len(c.turns) for c in conversations), default=0) + 1):
        tasks = []
        for conv in conversations:
            if turn > len(conv.turns):
                continue
            before = [answers.get(conv.answer_id(t)) for t in range(1, turn)]
            if None in before and not run.dry_run:
                continue  # an earlier turn failed: that failure is on record, this turn cannot be asked
            messages = [{"role": "system", "content": conv.system}] if conv.system else []
            for t, said in enumerate(before, start=1):
                text = said["answer"] if said else placeholder_text(max_tokens)
                messages += [{"role": "user", "content": conv.turns[t - 1]}, {"role": "assistant", "content": text}]
            messages.append({"role": "user", "content": conv.turns[turn - 1]})
            tasks.append(Task(conv.answer_id(turn), ChatRequest(messages, temperature, max_tokens),
                              {"conversation_id": conv.conversation_id, "turn": turn}))
        await run.stage(f"answers:turn{turn}", "model", tasks, parse, ANSWERS, "answer_id")
        if not run.dry_run:
            answers = load_records(run.out / ANSWERS, "answer_id")
    if run.dry_run:
        return {aid: {"answer": placeholder_text(max_tokens)} for aid in by_id}
    return {aid: a for aid, a in answers.items() if aid in by_id}
