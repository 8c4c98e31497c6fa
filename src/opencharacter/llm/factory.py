"""Build a `ChatModel` from command-line style options."""

from __future__ import annotations

import os

from opencharacter.llm.base import ChatModel, FatalError

OPENAI_URL = "https://api.openai.com/v1"
BACKENDS = ("openai", "transformers")


def is_local_url(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return host.startswith(("localhost", "127.", "0.0.0.0", "[::1]"))


def build_model(
    model: str,
    backend: str = "openai",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
    batch_size: int = 8,
) -> ChatModel:
    """`backend="openai"` talks to any OpenAI-compatible server; `"transformers"` runs in-process.

    The key is read from the environment variable `api_key_env` and kept only in memory. Local
    servers (vLLM, Ollama, llama.cpp) accept any key, so none is required for a localhost URL.
    """
    if backend == "transformers":
        if base_url:
            raise FatalError("--base-url and --backend transformers exclude each other: pick one")
        try:
            from opencharacter.llm.local import TransformersChatModel
        except ImportError as exc:
            raise FatalError(
                f"the transformers backend needs the local extra: pip install 'opencharacter[local]' ({exc})"
            ) from exc
        return TransformersChatModel(model, batch_size=batch_size)
    if backend != "openai":
        raise FatalError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")

    from opencharacter.llm.openai_http import OpenAICompatibleModel

    url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    key = os.environ.get(api_key_env)
    if not key and not is_local_url(url):
        raise FatalError(
            f"no API key: set {api_key_env} in the environment (or name another variable with "
            f"--api-key-env), or point --base-url at a local server such as http://localhost:8000/v1"
        )
    return OpenAICompatibleModel(model, base_url=url, api_key=key or "EMPTY", timeout=timeout)
