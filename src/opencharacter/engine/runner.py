"""Run a stream of tasks through a model: bounded concurrency, rate limits, retries, resume.

The one place where these concerns live. A pipeline stage supplies tasks (an id and a request) and a
`parse` function that turns a completion into a record or raises `InvalidOutput`; the runner does
the rest and never drops a task silently: every task ends as a record or a failure record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencharacter.engine.progress import StageProgress
from opencharacter.engine.ratelimit import RateLimiter
from opencharacter.engine.store import JsonlAppender, read_ids
from opencharacter.llm.base import (
    BadRequest,
    ChatModel,
    ChatRequest,
    Completion,
    ConnectionFailed,
    FatalError,
    TransientError,
    Usage,
)
from opencharacter.records import Failure


@dataclass
class EngineSettings:
    """How to run requests. Defaults suit a hosted API; raise `concurrency` for a local vLLM."""

    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    price_in: float = 0.0  # USD per million prompt tokens
    price_out: float = 0.0  # USD per million completion tokens
    unreachable_after: int = 3  # connect failures, before any success, that mean "unreachable"
    # A cut-off or invalid answer is sampled again at least this warm: at temperature 0 a server
    # would only repeat the same unusable answer.
    resample_temperature: float = 0.7

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.price_in + usage.completion_tokens * self.price_out) / 1e6


@dataclass
class Task:
    task_id: str
    request: ChatRequest
    meta: dict[str, Any] = field(default_factory=dict)


class InvalidOutput(Exception):
    """Raised by a stage's `parse`: the completion is unusable and the task is sampled again."""


class EndpointUnreachable(FatalError):
    reason = "unreachable"


ParseFn = Callable[[Task, Completion], dict[str, Any]]


@dataclass
class StageStats:
    stage: str
    total: int = 0
    already_done: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    elapsed: float = 0.0
    status: str = "running"  # running | completed | interrupted | failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "total": self.total,
            "already_done": self.already_done,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "requests": self.requests,
            "failures_by_reason": dict(self.failures_by_reason),
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": round(self.cost, 6),
            "elapsed_s": round(self.elapsed, 3),
        }


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A cheap, tokenizer-free estimate (~4 characters a token) for rate limits and dry runs."""
    return sum(len(m.get("content", "")) for m in request.messages) // 4 + 4 * len(request.messages)


class _Run:
    def __init__(self, model: ChatModel, parse: ParseFn, stats: StageStats, settings: EngineSettings,
                 results: JsonlAppender, failures: JsonlAppender, progress: StageProgress) -> None:
        self.model = model
        self.parse = parse
        self.stats = stats
        self.settings = settings
        self.results = results
        self.failures = failures
        self.progress = progress
        self.limiter = RateLimiter(settings.rpm, settings.tpm)
        self.any_success = False
        self.connect_failures = 0

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": spread retries apart

    async def worker(self, tasks: Iterator[Task]) -> None:
        for task in tasks:
            await self.run_one(task)

    async def run_one(self, task: Task) -> None:
        settings = self.settings
        attempts = 0
        request = task.request
        estimate = estimate_prompt_tokens(request) + request.max_tokens if self.settings.tpm else 0
        while True:
            attempts += 1
            await self.limiter.acquire(estimate)
            try:
                completion = await self.model.complete(request)
            except TransientError as exc:
                if isinstance(exc, ConnectionFailed) and exc.connect_failed and not self.any_success:
                    self.connect_failures += 1
                    if self.connect_failures >= settings.unreachable_after:
                        raise EndpointUnreachable(str(exc)) from exc
                if exc.retry_after:
                    self.limiter.pause(exc.retry_after)
                if attempts > settings.max_retries:
                    return self._fail(task, exc.reason, str(exc), attempts)
                await asyncio.sleep(exc.retry_after if exc.retry_after else self._backoff(attempts))
                continue
            except BadRequest as exc:
                return self._fail(task, exc.reason, str(exc), attempts)
            self.any_success = True
            self.stats.requests += 1
            self.stats.usage.add(completion.usage)
            self.progress.request_done(completion.usage.total_tokens)
            if completion.finish_reason == "length":
                error = f"answer cut off at max_tokens={request.max_tokens}: ...{completion.text[-200:]!r}"
                if attempts > settings.max_retries:
                    return self._fail(task, "truncated", error, attempts)
                request = self._warmer(request)
                continue
            try:
                record = self.parse(task, completion)
            except InvalidOutput as exc:
                if attempts > settings.max_retries:
                    return self._fail(task, "invalid_output", f"{exc} | output: {completion.text[:300]!r}", attempts)
                request = self._warmer(request)
                continue
            self.results.append(record)
            self.stats.succeeded += 1
            self.progress.task_done(failed=False)
            return None

    def _warmer(self, request: ChatRequest) -> ChatRequest:
        if request.temperature >= self.settings.resample_temperature:
            return request
        return dataclasses.replace(request, temperature=self.settings.resample_temperature)

    def _fail(self, task: Task, reason: str, error: str, attempts: int) -> None:
        failure = Failure(task_id=task.task_id, stage=self.stats.stage, reason=reason, error=error[:2000],
                          attempts=attempts, meta=task.meta)
        self.failures.append(failure.model_dump())
        self.stats.failed += 1
        self.stats.failures_by_reason[reason] += 1
        self.progress.task_done(failed=True)


async def run_stage(
    model: ChatModel,
    tasks: Iterable[Task],
    parse: ParseFn,
    *,
    stage: str,
    results_path: Path,
    failures_path: Path,
    id_field: str,
    settings: EngineSettings | None = None,
    total: int | None = None,
    progress: bool = True,
    stats: StageStats | None = None,
) -> StageStats:
    """Run every task whose id is not yet in `results_path`; append records and failures.

    Resuming is running the same call again: finished ids are skipped before any request is made.
    Raises `FatalError` (after saving everything finished) when nothing can work, and propagates
    cancellation (Ctrl-C) after closing the files cleanly; `stats` (pass your own to keep it when
    an exception propagates) says which in `status`.
    """
    settings = settings or EngineSettings()
    done = read_ids(results_path, id_field)
    stats = stats or StageStats(stage=stage, total=total or 0)

    def pending() -> Iterator[Task]:
        seen: set[str] = set()
        for task in tasks:
            if task.task_id in done:
                stats.already_done += 1
                bar.skip()
                continue
            if task.task_id in seen:  # the same task twice in one input: run it once
                continue
            seen.add(task.task_id)
            yield task

    pending_iter = pending()
    started = time.monotonic()
    results = JsonlAppender(results_path)
    failures = JsonlAppender(failures_path)
    bar = StageProgress(stage, total, enabled=progress)
    run = _Run(model, parse, stats, settings, results, failures, bar)
    workers = [asyncio.ensure_future(run.worker(pending_iter)) for _ in range(max(1, settings.concurrency))]
    try:
        await asyncio.gather(*workers)
        stats.status = "completed"
    except asyncio.CancelledError:
        stats.status = "interrupted"
        raise
    except BaseException:
        stats.status = "failed"
        raise
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        stats.elapsed = time.monotonic() - started
        stats.cost = settings.cost(stats.usage)
        if not stats.total:
            stats.total = stats.already_done + stats.succeeded + stats.failed
        bar.close()
        results.close()
        failures.close()
    return stats
