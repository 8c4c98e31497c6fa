"""Model access: the `ChatModel` interface and its backends."""

from opencharacter.llm.base import (
    BadRequest,
    ChatModel,
    ChatRequest,
    Completion,
    ConnectionFailed,
    FatalError,
    LLMError,
    RateLimited,
    RequestTimeout,
    ServerError,
    StreamingChatModel,
    TransientError,
    Usage,
)

__all__ = [
    "BadRequest",
    "ChatModel",
    "ChatRequest",
    "Completion",
    "ConnectionFailed",
    "FatalError",
    "LLMError",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "StreamingChatModel",
    "TransientError",
    "Usage",
]
