"""The one interface every model backend implements, and the errors the engine understands.

A backend turns one `ChatRequest` into one `Completion`. Concurrency, retries, rate limits and
storage live in `opencharacter.engine`, once, so a backend stays a thin translation layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass(frozen=True)
class ChatRequest:
    """What to ask a chat model. `json_schema` asks for structured output where supported."""

    messages: list[Message]
    temperature: float = 0.7
    max_tokens: int = 1024
    top_p: float | None = None
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    seed: int | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | backend-specific
    usage: Usage = field(default_factory=Usage)
    model: str = ""


@runtime_checkable
class ChatModel(Protocol):
    """A model backend. `name` is recorded in every output record and in `run.json`."""

    name: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StreamingChatModel(ChatModel, Protocol):
    """A backend that can also yield text as it is generated (used by `opencharacter chat`)."""

    def stream(self, request: ChatRequest) -> AsyncIterator[str]: ...


class LLMError(Exception):
    """Base of every error a backend raises; `reason` is the key used in failure records."""

    reason = "error"


class TransientError(LLMError):
    """Worth retrying after a pause; `retry_after` (seconds) is the server's hint, if any."""

    reason = "transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    reason = "rate_limited"


class ServerError(TransientError):
    reason = "server_error"


class RequestTimeout(TransientError):
    reason = "timeout"


class ConnectionFailed(TransientError):
    """The connection could not be made or was dropped. Many of these at start mean 'unreachable'."""

    reason = "connection"

    def __init__(self, message: str, retry_after: float | None = None, connect_failed: bool = False) -> None:
        super().__init__(message, retry_after)
        self.connect_failed = connect_failed  # True: never connected (vs. dropped mid-request)


class BadRequest(LLMError):
    """The server refused this one request (HTTP 400/413/422): retrying it cannot help."""

    reason = "bad_request"


class FatalError(LLMError):
    """Nothing will work (bad key, unknown model, model that cannot load): stop the whole run."""

    reason = "fatal"
