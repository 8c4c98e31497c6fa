"""Test doubles shipped with the package, so users can dry-run pipelines without a real model.

`FakeOpenAIServer` is a real HTTP server speaking the OpenAI chat API on 127.0.0.1, with
deterministic answers, a chosen latency and scriptable faults (see `fake_openai`).

Names are loaded lazily, so `python -m opencharacter.testing.fake_openai` does not import the module
twice (once as part of the package, once as `__main__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opencharacter.testing.fake_openai import (
        RESPONDERS,
        FakeOpenAIProcess,
        FakeOpenAIServer,
        Fault,
        Responder,
        auto,
        echo,
        every,
        in_character,
        judge,
        make_judge,
        profile,
        profile_dict,
        request_key,
    )

__all__ = [
    "RESPONDERS",
    "FakeOpenAIProcess",
    "FakeOpenAIServer",
    "Fault",
    "Responder",
    "auto",
    "echo",
    "every",
    "in_character",
    "judge",
    "make_judge",
    "profile",
    "profile_dict",
    "request_key",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from opencharacter.testing import fake_openai

        return getattr(fake_openai, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
