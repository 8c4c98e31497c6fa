"""Requests-per-minute and tokens-per-minute limits, plus a shared pause after a 429."""

from __future__ import annotations

import asyncio
import time


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        # Allow a burst of a few seconds' worth so that a limit never starves a single large request.
        self.capacity = max(per_minute / 20.0, 1.0)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def wait_time(self, amount: float) -> float:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """Token buckets for `rpm` and `tpm` (either may be None), fair in arrival order."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self._requests = _Bucket(rpm) if rpm else None
        self._tokens = _Bucket(tpm) if tpm else None
        self._lock = asyncio.Lock()
        self._resume_at = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every sender for `seconds` (a server said Retry-After: it applies to us all)."""
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    async def acquire(self, tokens: float = 0.0) -> None:
        if self._requests is None and self._tokens is None and self._resume_at == 0.0:
            return
        async with self._lock:
            while True:
                wait = self._resume_at - time.monotonic()
                if self._requests is not None:
                    wait = max(wait, self._requests.wait_time(1))
                if self._tokens is not None:
                    wait = max(wait, self._tokens.wait_time(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self._requests is not None:
                self._requests.take(1)
            if self._tokens is not None:
                self._tokens.take(tokens)
