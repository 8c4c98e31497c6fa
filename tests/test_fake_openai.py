"""The fake OpenAI server: wire format, every fault as a real client sees it, counting, subprocess mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from opencharacter.records import Profile
from opencharacter.testing import (
    FakeOpenAIProcess,
    FakeOpenAIServer,
    Fault,
    every,
    make_judge,
    profile_dict,
    request_key,
)

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
PROFILE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "profile", "strict": True, "schema": Profile.json_schema_for_llm()},
}


def persona_messages(persona: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You write character profiles."},
        {"role": "user", "content": f"Write a character profile for this persona.\nPersona: {persona}"},
    ]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def client_for(fake: FakeOpenAIServer | FakeOpenAIProcess, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", **kwargs)


async def chat(fake: FakeOpenAIServer, **kwargs: Any) -> Any:
    async with client_for(fake, timeout=kwargs.pop("timeout", 10.0)) as client:
        return await client.chat.completions.create(model="fake-model", **{"messages": MESSAGES, **kwargs})


async def post_raw(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/chat/completions", json=body) as r:
        return r.status, dict(r.headers), await r.read()


# -- the normal path ---------------------------------------------------------------------------------


def test_completion_has_the_openai_shape(server: FakeOpenAIServer) -> None:
    status, headers, raw = asyncio.run(post_raw(server.base_url, {"model": "gpt-x", "messages": MESSAGES}))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["model"] == "gpt-x"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and "capital of France" in choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    completion = asyncio.run(chat(server))  # and the real client parses it
    assert completion.choices[0].message.content == choice["message"]["content"]  # deterministic
    assert completion.usage is not None and completion.usage.total_tokens == usage["total_tokens"]
    assert server.request_count == 2 and server.requests[0]["model"] == "gpt-x"


def test_streaming_yields_the_same_text_then_done(server: FakeOpenAIServer) -> None:
    async def stream() -> tuple[str, list[Any]]:
        async with client_for(server) as client:
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
            ]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    text, chunks = asyncio.run(stream())
    assert text == asyncio.run(chat(server)).choices[0].message.content
    assert len(chunks) > 4 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    _, headers, raw = asyncio.run(post_raw(server.base_url, {"messages": MESSAGES, "stream": True}))
    assert headers["Content-Type"].startswith("text/event-stream")
    assert raw.rstrip().endswith(b"data: [DONE]")


def test_models_endpoint_and_strict_models_and_api_key() -> None:
    with FakeOpenAIServer(models=["a", "b"], strict_models=True, api_key="sk-test") as fake:

        async def go() -> None:
            async with client_for(fake) as client:
                assert [m.id async for m in client.models.list()] == ["a", "b"]
                await client.chat.completions.create(model="a", messages=MESSAGES)
                with pytest.raises(openai.NotFoundError):
                    await client.chat.completions.create(model="nope", messages=MESSAGES)
            async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0) as bad:
                with pytest.raises(openai.AuthenticationError):
                    await bad.chat.completions.create(model="a", messages=MESSAGES)

        asyncio.run(go())


def test_response_format_is_recorded_and_can_be_rejected() -> None:
    with FakeOpenAIServer() as fake:
        completion = asyncio.run(chat(fake, messages=persona_messages("a retired lighthouse keeper"),
                                      response_format=PROFILE_SCHEMA))
        Profile.model_validate_json(completion.choices[0].message.content)
        asyncio.run(chat(fake, response_format={"type": "json_object"}))
        assert fake.response_formats == {"json_schema": 1, "json_object": 1}
    with FakeOpenAIServer(reject_response_format=True) as fake:
        with pytest.raises(openai.BadRequestError, match="response_format"):
            asyncio.run(chat(fake, response_format=PROFILE_SCHEMA))
        assert asyncio.run(chat(fake)).choices[0].message.content  # plain requests still work


# -- responders --------------------------------------------------------------------------------------


def test_profile_responder_is_valid_deterministic_and_distinct() -> None:
    personas = [f"a {job} from {town}" for job in ("baker", "pilot", "poet", "nurse") for town in ("Oslo", "Lima")]
    profiles = [profile_dict({"messages": persona_messages(p)}) for p in personas]
    for p in profiles:
        Profile.model_validate(p)
    assert len({p["name"] for p in profiles}) == len(personas)
    assert profiles[0] == profile_dict({"messages": persona_messages(personas[0])})
    assert "baker from Oslo" in profiles[0]["general_experience"]


def test_auto_picks_profile_judge_or_in_character(server: FakeOpenAIServer) -> None:
    text = asyncio.run(chat(server, messages=persona_messages("a beekeeper"))).choices[0].message.content
    Profile.model_validate_json(text)
    system = "You are an AI character with the following Persona.\n\n# Persona\nA beekeeper\n\n# Character Profile\nName: Ada Moss\nAge: 40"
    answer = asyncio.run(chat(server, messages=[{"role": "system", "content": system},
                                                {"role": "user", "content": "How are the bees?"}]))
    assert answer.choices[0].message.content.startswith("*Ada Moss")
    verdict = asyncio.run(chat(server, messages=[{"role": "user", "content": "Rate it 1-10 as [[N]]."}]))
    assert "Therefore, the final score is" in verdict.choices[0].message.content
    other_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"score": {"type": "integer"}, "why": {"type": "string"}}}}}
    assert set(json.loads(asyncio.run(chat(server, response_format=other_schema)).choices[0].message.content)) == {
        "score", "why"}


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("429", Fault.rate_limited(1.0)),
        ("429:2.5", Fault.rate_limited(2.5)),
        ("503", Fault.unavailable()),
        ("401", Fault.bad_key()),
        ("drop", Fault.drop()),
        ("hang:9", Fault.hang(9)),
        ("truncated_json", Fault.truncated_json()),
        ("length", Fault.length()),
    ],
)
def test_fault_specs_parse(spec: str, fault: Fault) -> None:
    assert Fault.parse(spec) == fault


def test_judge_is_configurable() -> None:
    body = {"messages": MESSAGES}
    assert make_judge(7)(body).endswith("Therefore, the final score is 7")
    assert make_judge(3, style="brackets")(body).endswith("[[3]]")
    assert 1 <= int(make_judge(low=1, high=5)(body).rsplit(" ", 1)[1]) <= 5


# -- faults, as the real clients see them -------------------------------------------------------------


def test_rate_limit_carries_retry_after(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.rate_limited(retry_after=2), Fault.rate_limited(retry_after=0.5))
    status, headers, raw = asyncio.run(post_raw(server.base_url, {"messages": MESSAGES}))
    assert status == 429 and headers["Retry-After"] == "2"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as caught:
        asyncio.run(chat(server))
    assert caught.value.response.headers["retry-after"] == "0.5"
    assert asyncio.run(chat(server)).choices[0].finish_reason == "stop"  # queue used up
    assert server.status_counts == {429: 2, 200: 1}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.server_error(), openai.InternalServerError),
        (Fault.unavailable(retry_after=3), openai.InternalServerError),
        (Fault.bad_key(), openai.AuthenticationError),
        (Fault.model_not_found(), openai.NotFoundError),
        (Fault.bad_request("too long"), openai.BadRequestError),
    ],
)
def test_http_faults_map_to_client_errors(server: FakeOpenAIServer, fault: Fault, error: type[Exception]) -> None:
    server.add_faults(fault)
    with pytest.raises(error) as caught:
        asyncio.run(chat(server))
    assert caught.value.status_code == fault.status  # type: ignore[attr-defined]


def test_dropped_connection_is_a_connection_error(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.drop(), Fault.drop(), Fault.drop())
    with pytest.raises(openai.APIConnectionError):
        asyncio.run(chat(server))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(post_raw(server.base_url, {"messages": MESSAGES}))
    with pytest.raises(aiohttp.ClientPayloadError):  # mid-stream: some chunks, then the cut
        asyncio.run(post_raw(server.base_url, {"messages": MESSAGES, "stream": True}))
    assert server.status_counts["drop"] == 3 and server.answered_by_key == {}


def test_hang_outlasts_the_client_timeout(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.hang(60))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        asyncio.run(chat(server, timeout=0.3))
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 2  # the server notices the client left and cancels the handler
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == 0 and server.status_counts == {"hang": 1, "cancelled": 1}


def test_truncated_json_and_length_faults(server: FakeOpenAIServer) -> None:
    messages = persona_messages("a tram driver")
    full = asyncio.run(chat(server, messages=messages, response_format=PROFILE_SCHEMA)).choices[0]
    server.add_faults(Fault.truncated_json(), Fault.length())
    cut = asyncio.run(chat(server, messages=messages, response_format=PROFILE_SCHEMA)).choices[0]
    assert cut.finish_reason == "stop" and full.message.content.startswith(cut.message.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.message.content)
    length = asyncio.run(chat(server, messages=messages)).choices[0]
    assert length.finish_reason == "length" and len(length.message.content) < len(full.message.content)
    short = asyncio.run(chat(server, messages=messages, max_tokens=5)).choices[0]  # and the natural way
    assert short.finish_reason == "length" and len(short.message.content) == 20


# -- scripting and counting ---------------------------------------------------------------------------


def test_counts_and_per_key_faults(server: FakeOpenAIServer) -> None:
    first, second = persona_messages("a diver"), persona_messages("a chess coach")
    server.fail_key(request_key(first), Fault.server_error(retry_after=0.01), times=2)

    async def go() -> None:
        async with client_for(server, max_retries=3) as client:  # the client's own retries recover
            for messages in (first, second, second):
                await client.chat.completions.create(model="m", messages=messages)

    asyncio.run(go())
    assert server.count_by_key == {request_key(first): 3, request_key(second): 2}
    assert server.answered_by_key == {request_key(first): 1, request_key(second): 2}
    assert request_key({"messages": first}) == request_key(first)


def test_first_k_per_key_and_fault_function() -> None:
    with FakeOpenAIServer(fault_fn=every(3, Fault.unavailable())) as fake:
        fake.fail_first_per_key(1, Fault.rate_limited(0))
        statuses = [asyncio.run(post_raw(fake.base_url, {"messages": m}))[0]
                    for m in (MESSAGES, MESSAGES, MESSAGES, persona_messages("x"))]
        assert statuses == [429, 200, 503, 429]  # index 2 is the 3rd request: every(3) hits it


def test_latency_is_concurrent_and_peak_is_counted() -> None:
    with FakeOpenAIServer(latency=0.3, jitter=0.05, record_requests=False) as fake:

        async def go() -> None:
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> None:
                    async with session.post(f"{fake.base_url}/chat/completions",
                                            json={"messages": [{"role": "user", "content": str(i)}]}) as r:
                        assert r.status == 200

                await asyncio.gather(*(one(i) for i in range(100)))

        started = time.monotonic()
        asyncio.run(go())
        assert 0.3 <= time.monotonic() - started < 2.0
        assert fake.peak_in_flight == 100 and fake.requests == [] and len(fake.count_by_key) == 100


# -- subprocess mode ----------------------------------------------------------------------------------


def test_subprocess_mode_logs_every_request(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with FakeOpenAIProcess("--fault", "503:1", "--fault", "ok", "--fault", "drop", log=log, latency=0.01) as fake:
        assert fake.base_url.startswith("http://127.0.0.1:") and fake.base_url.endswith("/v1")

        async def go() -> None:
            async with client_for(fake) as client:
                with pytest.raises(openai.InternalServerError):
                    await client.chat.completions.create(model="m", messages=MESSAGES)
                await client.chat.completions.create(model="m", messages=MESSAGES)
                with pytest.raises(openai.APIConnectionError):
                    await client.chat.completions.create(model="m", messages=MESSAGES)

        asyncio.run(go())
        entries = fake.logged()
        assert [(e["event"], e.get("fault")) for e in entries] == [
            ("request", "http"), ("request", None), ("answer", None), ("request", "drop")]
        assert fake.count_by_key() == {request_key(MESSAGES): 3}
        assert fake.answered_by_key() == {request_key(MESSAGES): 1}
        assert fake.proc is not None and fake.proc.poll() is None
    assert fake.proc.returncode == 0  # SIGTERM is a clean stop


def test_server_keeps_counting_when_a_client_is_killed(tmp_path: Path) -> None:
    client_code = textwrap.dedent(
        """
        import asyncio, sys, aiohttp
        async def main():
            async with aiohttp.ClientSession() as s:
                async def one(i):
                    body = {"messages": [{"role": "user", "content": f"task {i}"}]}
                    async with s.post(sys.argv[1] + "/chat/completions", json=body) as r:
                        await r.read()
                await asyncio.gather(*(one(i) for i in range(1000)))
        asyncio.run(main())
        """
    )
    with FakeOpenAIProcess(latency=1.0, log=tmp_path / "log.jsonl") as fake:
        client = subprocess.Popen([sys.executable, "-c", client_code, fake.base_url])
        deadline = time.monotonic() + 10
        while sum(fake.count_by_key().values()) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        seen = sum(fake.count_by_key().values())
        assert seen >= 50
        status, _, _ = asyncio.run(post_raw(fake.base_url, {"messages": MESSAGES}))  # still serving
        assert status == 200 and sum(fake.count_by_key().values()) == seen + 1
        assert fake.answered_by_key()[request_key(MESSAGES)] == 1
