from __future__ import annotations

import json
from pathlib import Path

from opencharacter.engine.manifest import compact_failures, scrub, update_manifest
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
    assert compact_failures(failures, "s", {"b"}) == {"invalid_output": 1}
    kept = list(iter_jsonl(failures))
    assert [(r["task_id"], r["stage"], r["reason"]) for r in kept] == [("a", "s", "invalid_output"), ("b", "other", "timeout")]


def test_scrub_drops_secret_values_but_keeps_env_var_names_and_token_counts() -> None:
    clean = scrub({"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY", "max_tokens": 512, "hf_token": "hf",
                   "nested": {"token": "t", "model": "m", "judge_max_tokens": 9}})
    assert clean == {"api_key_env": "OPENAI_API_KEY", "max_tokens": 512, "nested": {"model": "m", "judge_max_tokens": 9}}


def test_manifest_adds_up_the_invocations_of_a_stage(tmp_path: Path) -> None:
    first = {"status": "interrupted", "succeeded": 3, "requests": 4, "cost_usd": 0.5, "failed_now": 1}
    update_manifest(tmp_path, "s", first, {"max_tokens": 10})
    manifest = update_manifest(tmp_path, "s", {**first, "status": "completed", "succeeded": 2, "requests": 2, "failed_now": 0}, {})
    stage = manifest["stages"]["s"]
    assert (stage["status"], stage["succeeded"], stage["requests"], stage["cost_usd"], stage["invocations"]) == ("completed", 5, 6, 1.0, 2)
    assert manifest["totals"]["requests"] == 6 and manifest["totals"]["failed"] == 0
