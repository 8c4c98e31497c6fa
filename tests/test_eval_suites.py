"""MT-Bench role-play, RoleBench and the Ditto-style judge, end to end against the fake server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.engine.store import iter_jsonl
from opencharacter.eval.rolebench import rouge_l, rouge_scorer
from opencharacter.testing import FakeOpenAIServer
from opencharacter.testing.eval_responder import kind_of, make_eval_responder

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["eval", *args, "--no-progress"], env={"OPENAI_API_KEY": "sk-test", "COLUMNS": "200"})


def said(result: Any) -> str:
    return " ".join(result.output.split())


def records(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


# -- MT-Bench -----------------------------------------------------------------------------------------


def test_mtbench_roleplay_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mtb"
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke("mtbench-roleplay", "--data", str(shared_data / "mt-bench"), "--limit", "3", "--model", "m",
                        "--judge", "j1", "--judge", "j2", "--base-url", server.base_url, "--out", str(out))
        assert result.exit_code == 0, result.output
        bodies = server.requests
    answers = [b for b in bodies if kind_of(b) == "answer"]
    ratings = [b for b in bodies if kind_of(b) == "rating"]
    assert len(answers) == 6 and len(ratings) == 12  # 3 questions x 2 turns; x 2 judges
    first_turns = {a["question_id"]: a for a in records(out / "answers.jsonl") if a["turn"] == 1}
    assert set(first_turns) == {"91", "92", "93"}
    # Turn 2 is asked with turn 1's real answer in the conversation.
    second = next(b for b in answers if len(b["messages"]) == 3)
    assert second["messages"][1]["role"] == "assistant"
    assert second["messages"][1]["content"] in {a["answer"] for a in first_turns.values()}
    assert second["temperature"] == 0.7 and second["max_tokens"] == 1024
    # Turn 1 judged with single-v1, turn 2 with single-v1-multi-turn (the judge instruction is its system prompt).
    systems = {b["messages"][0]["content"][:40] for b in ratings}
    assert systems == {"You are a helpful assistant.", "Please act as an impartial judge and eva"}
    multi = next(b for b in ratings if b["messages"][0]["content"].startswith("Please act"))
    assert "### Assistant A:" in multi["messages"][1]["content"] and "{answer_2}" not in multi["messages"][1]["content"]

    judgements = records(out / "judgements.jsonl")
    assert len(judgements) == 12 and all(1 <= j["score"] <= 10 for j in judgements)
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["metrics"]) == ["turn 1", "turn 2", "overall"]
    overall = [sum(j["score"] for j in judgements if j["judge"] == judge) / 6 for judge in ("j1", "j2")]
    assert scores["by_judge"]["j1"]["overall"]["mean"] == pytest.approx(overall[0], abs=1e-4)
    assert scores["metrics"]["overall"]["mean"] == pytest.approx(sum(overall) / 2, abs=1e-4)
    assert (out / "scores.png").exists() and "MT-Bench (roleplay)" in (out / "report.md").read_text()


def test_mtbench_missing_judge_prompt_and_unreadable_rating(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "mtb-data"
    data.mkdir()
    shutil.copy(shared_data / "mt-bench" / "question.jsonl", data)
    prompts = [json.loads(line) for line in (shared_data / "mt-bench" / "judge_prompts.jsonl").read_text().splitlines()]
    (data / "judge_prompts.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in prompts if p["name"] != "single-v1-multi-turn"))
    result = invoke("mtbench-roleplay", "--data", str(data), "--model", "m", "--judge", "j", "--out",
                    str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1 and "no judge prompt named 'single-v1-multi-turn'" in said(result)

    out = tmp_path / "run"
    with FakeOpenAIServer(make_eval_responder(broken={"rating"})) as server:
        result = invoke("mtbench-roleplay", "--data", str(shared_data / "mt-bench"), "--limit", "1", "--model", "m",
                        "--judge", "j", "--base-url", server.base_url, "--out", str(out), "--max-retries", "0")
        assert result.exit_code == 0, result.output
    failures = records(out / "failures.jsonl")
    assert len(failures) == 2 and all("no rating found" in f["error"] for f in failures)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["metrics"]["overall"] == {"mean": None, "std": None, "n": 0}
    assert len(records(out / "answers.jsonl")) == 2  # the answers are kept for the next try


# -- RoleBench ------------------------------------------------------------------------------------------


@pytest.fixture
def rolebench_file(tmp_path: Path) -> Path:
    rows = [
        {"role": "Sherlock Holmes", "question": "What do you make of the mud on my boots?",
         "generated": ["You have come from the station by cab.", "Clay of that colour is found only near the station."]},
        {"role": "Sherlock Holmes", "question": "Do you ever rest?", "generated": ["My mind rebels at stagnation."]},
        {"role": "Jack Sparrow", "question": "Where is your ship?", "generated": ["The Black Pearl waits, savvy?"]},
    ]
    path = tmp_path / "rolebench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rolebench_end_to_end(rolebench_file: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "desc.json"
    profiles.write_text(json.dumps({"Sherlock Holmes": "A consulting detective in Victorian London."}))
    out = tmp_path / "rb"
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke("rolebench", "--data", str(rolebench_file), "--profiles", str(profiles), "--model", "m",
                        "--base-url", server.base_url, "--out", str(out))
        assert result.exit_code == 0, result.output
        systems = {b["messages"][0]["content"] for b in server.requests}
    assert any("You are Sherlock Holmes. Your description: A consulting detective" in s for s in systems)
    answers = {a["question"]: a["answer"] for a in records(out / "answers.jsonl")}
    scorer = rouge_scorer()
    rows = [json.loads(line) for line in rolebench_file.read_text().splitlines()]
    expected = [rouge_l(scorer, answers[r["question"]], tuple(r["generated"])) for r in rows]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["metrics"]["ROUGE-L (first ref)"]["mean"] == pytest.approx(sum(e[0] for e in expected) / 3, abs=1e-4)
    assert scores["metrics"]["ROUGE-L (best ref)"]["mean"] == pytest.approx(sum(e[1] for e in expected) / 3, abs=1e-4)
    assert expected[0][1] >= expected[0][0]
    assert scores["roles"]["Jack Sparrow"]["n"] == 1 and scores["judges"] == []
    assert len(records(out / "rouge.jsonl")) == 3 and (out / "scores.png").exists()


def test_rolebench_bad_line_names_file_and_line(rolebench_file: Path, tmp_path: Path) -> None:
    with rolebench_file.open("a") as f:
        f.write(json.dumps({"role": "Yoda", "question": "Size matters not?"}) + "\n")
    result = invoke("rolebench", "--data", str(rolebench_file), "--model", "m", "--out", str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1
    assert f"{rolebench_file}:4: generated must be a non-empty list" in said(result)


# -- Ditto-style judge ----------------------------------------------------------------------------------


def ditto_record(label: str, others: list[str], prompts: list[str], rejection: list[int]) -> dict[str, Any]:
    return {"system": f"You are {label}. Stay in character.", "prompts": prompts,
            "role_consist_cands": [label, *others], "rejection_labels": rejection,
            "evidence": [[f"{label} fact {i}"] for i in range(len(prompts))], "meta": {"label": label, "lang": "en"}}


@pytest.fixture
def ditto_file(tmp_path: Path) -> Path:
    rows = [
        ditto_record("Ada Lovelace", ["Charles Babbage", "Mary Shelley", "Lord Byron"],
                     ["What is the Analytical Engine?", "What do you think of smartphones?"], [0, 1]),
        ditto_record("Nikola Tesla", ["Thomas Edison", "Guglielmo Marconi", "George Westinghouse"],
                     ["Tell me about alternating current.", "Who won the 2022 World Cup?"], [0, 1]),
    ]
    path = tmp_path / "ditto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_roleplay_judge_end_to_end(ditto_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ditto"
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke("roleplay-judge", "--data", str(ditto_file), "--model", "m", "--judge", "j1", "--judge", "j2",
                        "--base-url", server.base_url, "--out", str(out))
        assert result.exit_code == 0, result.output
        kinds = [kind_of(b) for b in server.requests]
        knowledge = next(b for b in server.requests if kind_of(b) == "knowledge")["messages"][0]["content"]
    # 2 records x 2 turns = 4 answers; each judged on 3 metrics by 2 judges.
    assert kinds.count("answer") == 4
    assert (kinds.count("identity"), kinds.count("knowledge"), kinds.count("rejection")) == (8, 8, 8)
    assert "fact 0" in knowledge or "fact 1" in knowledge  # the turn's evidence is the judge's hint
    judgements = records(out / "judgements.jsonl")
    identity = [j for j in judgements if j["metric"] == "identity" and j["judge"] == "j1"]
    accuracy = sum(j["choice"] == j["expected"] for j in identity) / len(identity)
    rejection = [j for j in judgements if j["metric"] == "rejection" and j["judge"] == "j2"]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["by_judge"]["j1"]["identity accuracy"]["mean"] == pytest.approx(accuracy, abs=1e-4)
    assert scores["by_judge"]["j2"]["rejection accuracy"]["mean"] == pytest.approx(
        sum(j["declined"] == j["expected"] for j in rejection) / 4, abs=1e-4)
    assert {j["expected"] for j in rejection} == {0, 1}
    assert 1 <= scores["metrics"]["knowledge (1-10)"]["mean"] <= 10
    assert scores["counts"]["failures"] == 0 and (out / "report.md").exists()


def test_roleplay_judge_bad_records(ditto_file: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in ditto_file.read_text().splitlines()]
    rows[1]["rejection_labels"] = [0]
    ditto_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("roleplay-judge", "--data", str(ditto_file), "--model", "m", "--judge", "j", "--out",
                    str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1 and f"{ditto_file}:2: `rejection_labels` must hold one 0/1 per prompt" in said(result)
    rows[1]["rejection_labels"] = [0, 1]
    del rows[1]["meta"]
    rows[1]["system"] = "A famous inventor."  # no name to find the character by
    ditto_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("roleplay-judge", "--data", str(ditto_file), "--model", "m", "--judge", "j", "--out",
                    str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1 and "which candidate is the character?" in said(result)


def test_compare_needs_finished_runs(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "half")], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "no scores.json" in said(result)
