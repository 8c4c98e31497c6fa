"""OpenAI-compatible chat backend over one shared aiohttp session.

Works with any server that speaks `POST {base_url}/chat/completions`: OpenAI, vLLM, Ollama,
llama.cpp's server, TGI, LM Studio. aiohttp rather than the `openai` client because per-request
client overhead is the ceiling on a small machine talking to a fast local server (DESIGN.md:
~5,900 req/s for aiohttp vs ~220 for AsyncOpenAI on its default transport).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson

from opencharacter.llm.base import (
    BadRequest,
    ChatRequest,
    Completion,
    ConnectionFailed,
    FatalError,
    RateLimited,
    RequestTimeout,
    ServerError,
    Usage,
)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAICompatibleModel:
    """Chat completions against `base_url`. The API key lives only in memory, in a request header."""

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        structured_output: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        # Flipped off on the first 400 that blames response_format; then JSON is parsed from text.
        self.structured_output = structured_output
        self.extra_body = dict(extra_body or {})
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleModel(model={self.name!r}, base_url={self.base_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
                headers=self._headers,
            )
        return self._session

    def _body(self, request: ChatRequest, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.name,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            **self.extra_body,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        if request.json_schema is not None and self.structured_output:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
            }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: ChatRequest) -> Completion:
        body = self._body(request)
        try:
            data = await self._post(body)
        except BadRequest as exc:
            if "response_format" in body and self.structured_output and "response_format" in str(exc).lower():
                self.structured_output = False  # server lacks structured output: ask for plain text
                return await self.complete(request)
            raise
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
            return Completion(
                text=text,
                finish_reason=choice.get("finish_reason") or "stop",
                usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
                model=data.get("model") or self.name,
            )
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(f"response is not a chat completion: {str(data)[:300]}") from exc

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """aiohttp's exceptions as the engine's: which ones are worth a retry, and which mean 'unreachable'."""
        try:
            yield
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailed(f"cannot connect to {self.base_url}: {exc}", connect_failed=True) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            raise ConnectionFailed(f"connection to {self.base_url} dropped: {exc!r}") from exc
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(f"no answer from {self.base_url} within {self.timeout:g}s") from exc

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        with self._transport_errors():
            async with self._get_session().post(url, data=orjson.dumps(body)) as response:
                raw = await response.read()
                if response.status != 200:
                    _raise_for_status(response.status, raw, response.headers, self)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ServerError(f"invalid JSON body from server: {raw[:200]!r}") from exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield content deltas as the server sends them (server-sent events)."""
        url = f"{self.base_url}/chat/completions"
        with self._transport_errors():
            async with self._get_session().post(url, data=orjson.dumps(self._body(request, stream=True))) as response:
                if response.status != 200:
                    _raise_for_status(response.status, await response.read(), response.headers, self)
                async for line in response.content:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = orjson.loads(payload)
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _raise_for_status(status: int, raw: bytes, headers: Any, model: OpenAICompatibleModel) -> None:
    text = raw[:500].decode("utf-8", "replace")
    if status == 429:
        raise RateLimited(f"HTTP 429 rate limited: {text}", retry_after=_retry_after(headers))
    if status >= 500:
        raise ServerError(f"HTTP {status}: {text}", retry_after=_retry_after(headers))
    if status in (401, 403):
        raise FatalError(
            f"HTTP {status} from {model.base_url}: the API key was refused. Set OPENAI_API_KEY "
            "(or the variable named by --api-key-env) to a valid key."
        )
    if status == 404:
        raise FatalError(
            f"HTTP 404 from {model.base_url}: model {model.name!r} or the endpoint was not found. "
            "Check --model and --base-url (it usually ends in /v1)."
        )
    if status == 408:
        raise RequestTimeout(f"HTTP 408: {text}")
    raise BadRequest(f"HTTP {status}: {text}")
