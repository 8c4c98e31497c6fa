from __future__ import annotations

import json
from pathlib import Path

from opencharacter.engine.manifest import compact_failures, scrub
from opencharacter.engine.store import JsonlAppender, iter_jsonl, read_ids, repair_torn_tail


def test_appender_cuts_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x"')  # killed mid-write
    assert read_ids(path, "id") == {"a"}
    with JsonlAppender(path) as out:
        out.append({"id": "c"})
    assert path.read_text() == '{"id": "a", "x": 1}\n{"id":"c"}\n'
    assert [r["id"] for r in iter_jsonl(path)] == ["a", "c"]


def test_repair_handles_files_without_any_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"')
    assert repair_torn_tail(path) == len('{"id": "a"')
    assert path.read_text() == ""


def test_read_ids_falls_back_to_json_when_the_id_is_not_first(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"x": 1, "id": "late"}\n{"id": "fast", "y": 2}\nnot json\n')
    assert read_ids(path, "id") == {"late", "fast"}


def test_compact_failures_keeps_latest_and_drops_succeeded(tmp_path: Path) -> None:
    failures = tmp_path / "failures.jsonl"
    rows = [
        {"task_id": "a", "stage": "s", "reason": "timeout"},
        {"task_id": "b", "stage": "s", "reason": "timeout"},
        {"task_id": "a", "stage": "s", "reason": "invalid_output"},
        {"task_id": "b", "stage": "other", "reason": "timeout"},
    ]
    failures.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert compact_failures(failures, "s", {"b"}) == 1
    kept = list(iter_jsonl(failures))
    assert [(r["task_id"], r["stage"], r["reason"]) for r in kept] == [("a", "s", "invalid_output"), ("b", "other", "timeout")]


def test_scrub_drops_secret_values_but_keeps_env_var_names() -> None:
    clean = scrub({"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY", "nested": {"token": "t", "model": "m"}})
    assert clean == {"api_key_env": "OPENAI_API_KEY", "nested": {"model": "m"}}
