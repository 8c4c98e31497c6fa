"""The engine against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from opencharacter.engine import ratelimit
from opencharacter.engine.runner import EndpointUnreachable, EngineSettings, InvalidOutput, Task, run_stage
from opencharacter.engine.store import iter_jsonl
from opencharacter.llm.base import ChatRequest, Completion, FatalError
from opencharacter.llm.openai_http import OpenAICompatibleModel
from opencharacter.testing import FakeOpenAIServer, Fault, request_key

NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
FAST = EngineSettings(concurrency=8, max_retries=3, backoff_base=0.01, backoff_max=0.05)


def make_tasks(n: int, json_schema: dict | None = None) -> list[Task]:
    return [
        Task(task_id=f"t{i}", request=ChatRequest(messages=[{"role": "user", "content": f"question number {i}"}],
                                                  max_tokens=64, json_schema=json_schema), meta={"i": i})
        for i in range(n)
    ]


def key_of(task: Task) -> str:
    return request_key(task.request.messages)


def parse_text(task: Task, completion: Completion) -> dict:
    if not completion.text.strip():
        raise InvalidOutput("empty")
    return {"id": task.task_id, "text": completion.text}


def parse_json(task: Task, completion: Completion) -> dict:
    try:
        return {"id": task.task_id, "data": json.loads(completion.text)}
    except json.JSONDecodeError as exc:
        raise InvalidOutput(f"invalid JSON: {exc}") from exc


def run(server_url: str, tasks: list[Task], tmp_path: Path, parse=parse_text, settings: EngineSettings = FAST,
        timeout: float = 5.0):
    async def go():
        model = OpenAICompatibleModel("fake-model", base_url=server_url, api_key="sk-test", timeout=timeout)
        try:
            return await run_stage(model, tasks, parse, stage="test", results_path=tmp_path / "r.jsonl",
                                   failures_path=tmp_path / "failures.jsonl", id_field="id", settings=settings,
                                   total=len(tasks), progress=False)
        finally:
            await model.aclose()

    return asyncio.run(go())


def ids(path: Path) -> list[str]:
    return [r["id"] for r in iter_jsonl(path)]


def test_all_tasks_become_records_within_the_concurrency_bound(tmp_path: Path) -> None:
    tasks = make_tasks(40)
    with FakeOpenAIServer(latency=0.02) as server:
        stats = run(server.base_url, tasks, tmp_path)
        assert server.peak_in_flight <= FAST.concurrency
        assert server.request_count == 40
    assert stats.status == "completed" and stats.succeeded == 40 and stats.failed == 0
    assert sorted(ids(tmp_path / "r.jsonl")) == sorted(t.task_id for t in tasks)
    assert stats.usage.prompt_tokens > 0 and stats.usage.completion_tokens > 0


def test_rerun_requests_nothing_already_finished(tmp_path: Path) -> None:
    tasks = make_tasks(12)
    with FakeOpenAIServer() as server:
        run(server.base_url, tasks[:7], tmp_path)
        server.reset()
        stats = run(server.base_url, tasks, tmp_path)
        assert server.request_count == 5
        assert all(server.count_by_key[key_of(t)] == 0 for t in tasks[:7])
    assert stats.already_done == 7 and stats.succeeded == 5
    assert len(ids(tmp_path / "r.jsonl")) == 12


@pytest.mark.parametrize("fault", [Fault.rate_limited(0.1), Fault.server_error(500), Fault.unavailable(), Fault.drop()],
                         ids=["429", "500", "503", "drop"])
def test_transient_faults_are_retried(tmp_path: Path, fault: Fault) -> None:
    tasks = make_tasks(3)
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[1]), fault, times=2)
        stats = run(server.base_url, tasks, tmp_path)
        assert server.count_by_key[key_of(tasks[1])] == 3
    assert stats.succeeded == 3 and stats.failed == 0


def test_retry_after_pauses_every_sender(tmp_path: Path) -> None:
    tasks = make_tasks(4)
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[0]), Fault.rate_limited(0.5))
        started = time.monotonic()
        run(server.base_url, tasks, tmp_path, settings=EngineSettings(concurrency=1, backoff_base=0.01))
        # Task 0 waited the server's 0.5 s; with one sender, the later tasks waited behind it.
        assert time.monotonic() - started >= 0.5
        assert server.status_counts[429] == 1


def test_hang_past_the_timeout_is_retried(tmp_path: Path) -> None:
    tasks = make_tasks(2)
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[0]), Fault.hang(30))
        stats = run(server.base_url, tasks, tmp_path, timeout=0.3)
        assert server.count_by_key[key_of(tasks[0])] == 2
    assert stats.succeeded == 2


def test_truncated_json_and_length_are_sampled_again(tmp_path: Path) -> None:
    tasks = make_tasks(3, json_schema=NAME_SCHEMA)
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[0]), Fault.truncated_json())
        server.fail_key(key_of(tasks[1]), Fault.length())
        stats = run(server.base_url, tasks, tmp_path, parse=parse_json)
        assert server.count_by_key[key_of(tasks[0])] == 2 and server.count_by_key[key_of(tasks[1])] == 2
    assert stats.succeeded == 3


def test_unusable_answers_at_temperature_zero_are_resampled_warmer(tmp_path: Path) -> None:
    tasks = [Task("t0", ChatRequest(messages=[{"role": "user", "content": "q"}], temperature=0.0, json_schema=NAME_SCHEMA))]
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[0]), Fault.truncated_json())
        stats = run(server.base_url, tasks, tmp_path, parse=parse_json)
        assert [body["temperature"] for body in server.requests] == [0.0, 0.7]
    assert stats.succeeded == 1


@pytest.mark.parametrize(("fault", "reason", "attempts"), [
    (Fault.server_error(500), "server_error", 4),
    (Fault.length(), "truncated", 4),
    (Fault.truncated_json(), "invalid_output", 4),
    (Fault.bad_request("context too long"), "bad_request", 1),
])
def test_exhausted_tasks_become_failure_records(tmp_path: Path, fault: Fault, reason: str, attempts: int) -> None:
    tasks = make_tasks(3, json_schema=NAME_SCHEMA)
    with FakeOpenAIServer() as server:
        server.fail_key(key_of(tasks[2]), fault, times=10)
        stats = run(server.base_url, tasks, tmp_path, parse=parse_json)
    assert stats.succeeded == 2 and stats.failed == 1 and stats.failures_by_reason == {reason: 1}
    [failure] = list(iter_jsonl(tmp_path / "failures.jsonl"))
    assert failure["task_id"] == "t2" and failure["reason"] == reason and failure["attempts"] == attempts
    assert failure["error"] and failure["meta"] == {"i": 2}


def test_bad_key_stops_the_run_and_keeps_finished_work(tmp_path: Path) -> None:
    tasks = make_tasks(30)
    with FakeOpenAIServer() as server:
        server.add_faults(*([None] * 5), *([Fault.bad_key()] * 100))
        with pytest.raises(FatalError, match="API key was refused"):
            run(server.base_url, tasks, tmp_path, settings=EngineSettings(concurrency=1))
    assert len(ids(tmp_path / "r.jsonl")) == 5


def test_unreachable_endpoint_stops_within_seconds(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable, match="cannot connect"):
        run(f"http://127.0.0.1:{port}/v1", make_tasks(100), tmp_path,
            settings=EngineSettings(concurrency=4, max_retries=5, backoff_base=1.0))
    assert time.monotonic() - started < 5


def test_server_without_structured_output_falls_back_to_text(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda body: '{"name": "Ana"}', reject_response_format=True) as server:
        stats = run(server.base_url, make_tasks(4, json_schema=NAME_SCHEMA), tmp_path, parse=parse_json,
                    settings=EngineSettings(concurrency=1))
        assert server.status_counts[400] == 1  # asked once, then never again
    assert stats.succeeded == 4


def test_rate_limiter_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    bucket = ratelimit._Bucket(per_minute=60)  # 1 per second, burst of 3
    for _ in range(3):
        assert bucket.wait_time(1) == 0
        bucket.take(1)
    assert bucket.wait_time(1) == pytest.approx(1.0)
    clock[0] += 2.0
    assert bucket.wait_time(1) == 0
