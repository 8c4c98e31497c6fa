"""Runs a stream of tasks through a model: concurrency, rate limits, retries, resume, failure records."""

from opencharacter.engine.runner import (
    EndpointUnreachable,
    EngineSettings,
    InvalidOutput,
    StageStats,
    Task,
    run_stage,
)

__all__ = ["EndpointUnreachable", "EngineSettings", "InvalidOutput", "StageStats", "Task", "run_stage"]
