"""stats: every figure checked against values worked out by hand on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.io.readers import InputError
from opencharacter.stats import character_name, compute_stats, summarize
from test_chat_data import make_release, write_jsonl

runner = CliRunner()

ELENA = {"name": "Elena Vasquez", "age": "30"}
CHARACTERS = [
    {"character_id": "c1", "persona": "A flamenco dancer.", "character": "Name: Elena Vasquez\nAge: 30", "profile": ELENA},
    {"character_id": "c1", "persona": "A flamenco dancer.", "character": "Name: Elena Vasquez\nAge: 30", "profile": ELENA},
    {"character_id": "c2", "persona": "A retired sailor.", "character": "**Name:** ELENA VASQUEZ\nAge: 41"},
    {"character_id": "c3", "persona": "A chess coach.", "character": "Name: Marcus Chen\nAge: 52", "profile": {"name": "Marcus Chen"}},
    {"character_id": "c4", "persona": "A beekeeper.", "character": "Age: 60\nGender: Male"},
]
DIALOGUES = [  # answers: chars 13, 1, 19, 8, 2 · words 3, 1, 4, 2, 1
    {"dialogue_id": "d1", "character_id": "c1", "question": "a b", "question_source": "lima",
     "character_answer": "one two three", "strategy": "generate"},
    {"dialogue_id": "d2", "character_id": "c1", "question": "abc", "question_source": "alpaca",
     "character_answer": "x", "strategy": "rewrite"},
    {"dialogue_id": "d3", "character_id": "c2", "question": "hello world again", "question_source": "alpaca",
     "character_answer": "four words are here", "strategy": "generate"},
    {"dialogue_id": "d4", "character_id": "c3", "question": "why", "question_source": "alpaca",
     "character_answer": "hi there", "strategy": "generate"},
    {"dialogue_id": "d5", "character_id": "cX", "question": "who are you", "character_answer": "ok"},
]
FAILURES = [
    {"task_id": "c7", "stage": "profiles", "reason": "invalid_output", "error": "not JSON", "attempts": 6, "meta": {}},
    {"task_id": "c9", "stage": "profiles", "reason": "http_500", "error": "500", "attempts": 6, "meta": {}},
    {"task_id": "d2", "stage": "dialogues", "reason": "timeout", "error": "timed out", "attempts": 6, "meta": {}},
    {"task_id": "dZ", "stage": "dialogues", "reason": "rate_limited", "error": "429", "attempts": 6, "meta": {}},
    {"task_id": "c1", "stage": "profiles", "reason": "truncated", "error": "cut off", "attempts": 6, "meta": {}},
    {"task_id": "c7", "stage": "profiles", "reason": "truncated", "error": "cut off", "attempts": 6, "meta": {}},
    {"task_id": "dZ", "stage": "dialogues", "reason": "rate_limited", "error": "429", "attempts": 6, "meta": {}},
]
MANIFEST = {
    "stages": {"profiles": {"status": "completed", "total": 6, "succeeded": 4, "failed": 2,
                            "failures_by_reason": {"truncated": 1, "http_500": 1}, "cost_usd": 0.01}},
    "totals": {"requests": 40, "prompt_tokens": 1000, "completion_tokens": 500, "cost_usd": 0.02, "failed": 3},
}


def tiny_run(run: Path) -> Path:
    run.mkdir()
    write_jsonl(run / "characters.jsonl", CHARACTERS)
    write_jsonl(run / "dialogues.jsonl", DIALOGUES)
    write_jsonl(run / "failures.jsonl", FAILURES)
    (run / "run.json").write_text(json.dumps(MANIFEST), encoding="utf-8")
    return run


def test_summarize_nearest_rank() -> None:
    assert summarize([13, 1, 19, 8, 2]) == {"count": 5, "min": 1, "p50": 8, "p90": 19, "max": 19, "mean": 8.6}
    assert summarize(list(range(1, 11))) == {"count": 10, "min": 1, "p50": 5, "p90": 9, "max": 10, "mean": 5.5}
    assert summarize([])["p50"] is None


def test_character_name() -> None:
    assert character_name({"profile": {"name": " Ada "}, "character": "Name: Other"}) == "Ada"
    assert character_name({"character": "Age: 3\n- **Name**: Bo Li\n"}) == "Bo Li"
    assert character_name({"character": "Age: 3"}) is None


def test_stats_by_hand(tmp_path: Path) -> None:
    stats = compute_stats(tiny_run(tmp_path / "run"))
    assert stats["counts"] == {"characters": 4, "dialogues": 5, "characters_without_dialogues": 1,
                               "dialogues_with_unknown_character": 1}
    assert stats["strategies"] == {"generate": 3, "rewrite": 1, "(none)": 1}
    assert stats["question_sources"] == {"alpaca": 3, "lima": 1, "(none)": 1}
    # Latest per (stage, task): c7 truncated (not invalid_output), dZ once; c1 and d2 succeeded later.
    assert stats["failures"] == {"total": 3, "by_reason": {"truncated": 1, "http_500": 1, "rate_limited": 1},
                                 "by_stage": {"profiles": 2, "dialogues": 1}}
    answer = stats["lengths"]["answer"]
    assert answer["chars"] == {"count": 5, "min": 1, "p50": 8, "p90": 19, "max": 19, "mean": 8.6}
    assert answer["words"] == {"count": 5, "min": 1, "p50": 2, "p90": 4, "max": 4, "mean": 2.2}
    # questions: chars 3, 3, 17, 3, 11 · words 2, 1, 3, 1, 3
    assert stats["lengths"]["question"]["chars"] == {"count": 5, "min": 3, "p50": 3, "p90": 17, "max": 17, "mean": 7.4}
    assert stats["lengths"]["question"]["words"] == {"count": 5, "min": 1, "p50": 2, "p90": 3, "max": 3, "mean": 2.0}
    # profiles (c1 once): chars 27, 31, 25, 20 · words 5, 5, 5, 4
    assert stats["lengths"]["profile"]["chars"] == {"count": 4, "min": 20, "p50": 25, "p90": 31, "max": 31, "mean": 25.75}
    assert stats["lengths"]["profile"]["words"]["mean"] == 4.75
    # per character: c1 2, c2 1, c3 1, cX 1, c4 0
    assert stats["dialogues_per_character"] == {"count": 5, "min": 0, "p50": 1, "p90": 2, "max": 2, "mean": 1.0}
    assert stats["names"] == {"distinct": 2, "unnamed": 1, "top": [
        {"name": "Elena Vasquez", "count": 2, "share": 0.5}, {"name": "Marcus Chen", "count": 1, "share": 0.25}]}
    assert stats["first_names"]["top"][0] == {"name": "Elena", "count": 2, "share": 0.5}
    assert stats["manifest"]["totals"]["requests"] == 40
    assert stats["manifest"]["stages"]["profiles"]["failed"] == 2


def test_top_ten_names_only(tmp_path: Path) -> None:
    rows = [{"character_id": f"c{i}", "persona": "p", "character": f"Name: Name{i % 12}"} for i in range(24)]
    rows += [{"character_id": "extra", "persona": "p", "character": "Name: Name0"}]
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "characters.jsonl", rows)
    names = compute_stats(run)["names"]
    assert names["distinct"] == 12 and len(names["top"]) == 10
    assert names["top"][0] == {"name": "Name0", "count": 3, "share": 0.12}


def test_released_folder_and_messages_file(tmp_path: Path) -> None:
    _, dialogues = make_release(tmp_path / "release")
    stats = compute_stats(tmp_path / "release")
    assert stats["counts"]["dialogues"] == len(dialogues) and stats["counts"]["characters"] == 3
    assert stats["strategies"] == {"(none)": len(dialogues)}  # the release has no strategy field
    rows = [{"messages": d.messages} for d in dialogues]
    alone = tmp_path / "alone"
    alone.mkdir()
    write_jsonl(alone / "train.jsonl", rows)
    stats = compute_stats(alone / "train.jsonl")
    assert stats["counts"] == {"characters": 0, "dialogues": len(dialogues), "characters_without_dialogues": 0,
                               "dialogues_with_unknown_character": 0}
    assert stats["lengths"]["answer"]["chars"]["max"] == max(len(d.character_answer) for d in dialogues)


def test_bad_inputs_name_file_and_line(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run")
    with (run / "dialogues.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"dialogue_id": "d6", "character_id": "c1"}\n')
    with pytest.raises(InputError, match=r"dialogues.jsonl:6: a dialogue needs question and character_answer"):
        compute_stats(run)
    (run / "failures.jsonl").write_text('{"stage": "profiles"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"failures.jsonl:1: a failure needs 'stage' and 'task_id'"):
        compute_stats(run)
    with pytest.raises(InputError, match=r"no such run folder"):
        compute_stats(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"not a run folder"):
        compute_stats(tmp_path / "empty")


def test_cli_stats(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", "--help"])
    assert result.exit_code == 0 and "opencharacter stats runs/demo --json" in result.output
    run = tiny_run(tmp_path / "run")
    result = runner.invoke(app, ["stats", str(run), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    assert data == json.loads(json.dumps(compute_stats(run)))
    result = runner.invoke(app, ["stats", str(run)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for text in ("Elena Vasquez", "50.0%", "Failures by reason", "rate_limited", "2 distinct names, 1 without a name"):
        assert text in result.output
    result = runner.invoke(app, ["stats", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such run folder" in result.output
