"""Live progress for a stage: done / total, failures, requests per second, tokens, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StageProgress:
    """A rich progress bar; silent when `enabled` is False (library use, tests)."""

    def __init__(self, stage: str, total: int | None, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.requests = 0
        self.failed = 0
        self.tokens = 0
        self._progress: Progress | None = None
        if not enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rps]:.1f} req/s"),
            TextColumn("{task.fields[tokens]:,} tok"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            stage, total=total, completed=0, failed=0, rps=0.0, tokens=0
        )
        self._progress.start()

    def skip(self) -> None:
        """A task finished by an earlier run (counted here, since results files may hold other stages' ids)."""
        if self._progress is not None:
            self._progress.update(self._task, advance=1)

    def request_done(self, tokens: int) -> None:
        self.requests += 1
        self.tokens += tokens

    def task_done(self, failed: bool) -> None:
        if failed:
            self.failed += 1
        if self._progress is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._progress.update(
            self._task, advance=1, failed=self.failed, rps=self.requests / elapsed, tokens=self.tokens
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
