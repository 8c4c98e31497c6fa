"""`opencharacter profiles / dialogues / synth` end to end against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.engine.store import iter_jsonl
from opencharacter.prompts import Prompts
from opencharacter.records import Character, Dialogue, Profile
from opencharacter.testing import FakeOpenAIServer, Fault, request_key

runner = CliRunner()
SECRET = "sk-test-secret-never-written"


@pytest.fixture
def personas(shared_data: Path, tmp_path: Path) -> Path:
    lines = (shared_data / "personahub" / "personas.jsonl").read_text().splitlines()[:12]
    path = tmp_path / "personas.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def questions(shared_data: Path, tmp_path: Path) -> Path:
    lines = (shared_data / "self-instruct" / "seed_tasks.jsonl").read_text().splitlines()[:5]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> object:
    result = runner.invoke(app, [*args, "--no-progress"], env={"OPENAI_API_KEY": SECRET})
    return result


def test_synth_end_to_end(personas: Path, questions: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.01) as server:
        result = invoke("synth", "--personas", str(personas), "--questions", str(questions), "--out", str(out),
                        "--model", "fake-model", "--base-url", server.base_url, "--concurrency", "4",
                        "--price-in", "1", "--price-out", "2")
        assert result.exit_code == 0, result.output
        assert server.response_formats["json_schema"] == 12  # profiles asked for structured output
    characters = [Character.model_validate(r) for r in iter_jsonl(out / "characters.jsonl")]
    assert len(characters) == 12 and len({c.character_id for c in characters}) == 12
    for c in characters:
        assert c.character == c.profile.to_text() and Profile.from_text(c.character) == c.profile
        assert c.model == "fake-model" and c.source == str(personas)
    dialogues = [Dialogue.model_validate(r) for r in iter_jsonl(out / "dialogues.jsonl")]
    assert len(dialogues) == 15  # 5 questions x 3 characters
    by_question: dict[str, set[str]] = {}
    for d in dialogues:
        by_question.setdefault(d.question_id, set()).add(d.character_id)
        system, user, assistant = d.messages
        assert system["role"] == "system" and system["content"].startswith("You are an AI character")
        assert user == {"role": "user", "content": d.question} and assistant["content"] == d.character_answer
        assert d.question_source == "questions" and d.strategy.value == "generate"
        assert not d.character_answer.startswith("{")  # an answer, not a profile
        character = next(c for c in characters if c.character_id == d.character_id)
        assert d.character_answer.startswith(f"*{character.profile.name} ")  # the fake answers as the named character
    assert all(len(ids) == 3 for ids in by_question.values())
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["stages"]["profiles"]["succeeded"] == 12
    assert manifest["stages"]["dialogues"]["succeeded"] == 15
    assert manifest["stages"]["dialogues"]["status"] == "completed"
    assert manifest["totals"]["requests"] == 27 and manifest["totals"]["cost_usd"] > 0
    assert manifest["stages"]["profiles"]["settings"]["api_key_env"] == "OPENAI_API_KEY"
    for path in out.iterdir():  # the key is never written anywhere
        assert SECRET not in path.read_text()


def test_rewrite_reports_questions_without_answers(personas: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"instruction": "Q1", "output": "A1"}) + "\n"
                         + json.dumps({"input persona": "x", "synthesized text": "Q2 has no answer"}) + "\n")
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        assert invoke("profiles", "--personas", str(personas), "--out", str(out), "--model", "m",
                      "--base-url", server.base_url, "--limit", "4").exit_code == 0
        result = invoke("dialogues", "--characters", str(out / "characters.jsonl"), "--questions", str(questions),
                        "--strategy", "rewrite", "--out", str(out), "--model", "m", "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        rewrite_prompts = [r["messages"][0]["content"] for r in server.requests if "Original Answer" in r["messages"][0]["content"]]
    assert "1 questions without an answer skipped" in result.output
    assert len(rewrite_prompts) == 3 and all("A1" in p for p in rewrite_prompts)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["stages"]["dialogues"]["inputs"]["without_answer"] == 1
    assert {d["strategy"] for d in iter_jsonl(out / "dialogues.jsonl")} == {"rewrite"}


def test_duplicates_are_dropped_and_counted_and_templates_stay_data(tmp_path: Path) -> None:
    personas = tmp_path / "p.jsonl"
    rows = ["A chef who loves {{ 7*7 }}", "a CHEF who loves   {{ 7*7 }}", "A pilot", "A poet"]
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in rows))
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        result = invoke("profiles", "--personas", str(personas), "--out", str(out), "--model", "m", "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        prompts = [r["messages"][0]["content"] for r in server.requests]
    assert "1 duplicate inputs dropped" in result.output
    assert len(prompts) == 3 and any("loves {{ 7*7 }}" in p for p in prompts) and not any("49" in p for p in prompts)
    assert json.loads((out / "run.json").read_text())["stages"]["profiles"]["inputs"]["duplicates_dropped"] == 1


@pytest.mark.parametrize(("content", "message"), [
    ('{"persona": "ok"}\n{"persona": "x"\n', "p.jsonl:2: invalid JSON"),
    ('{"persona": "ok"}\n{"persona": ""}\n', "p.jsonl:2: empty persona"),
])
def test_malformed_input_stops_before_any_call_and_leaves_no_run_folder(tmp_path: Path, content: str, message: str) -> None:
    personas = tmp_path / "p.jsonl"
    personas.write_text(content)
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        result = invoke("synth", "--personas", str(personas), "--example", "--out", str(out), "--model", "m",
                        "--base-url", server.base_url)
        assert server.request_count == 0
    assert result.exit_code == 1 and message in result.output.replace("\n", "")
    assert not out.exists()


def test_bad_question_line_is_reported_before_profiles_are_written(personas: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"instruction": "fine"}\n{"foo": "bar"}\n')
    with FakeOpenAIServer() as server:
        result = invoke("synth", "--personas", str(personas), "--questions", str(questions), "--out",
                        str(tmp_path / "run"), "--model", "m", "--base-url", server.base_url)
        assert server.request_count == 0
    assert result.exit_code == 1 and "q.jsonl:2: unrecognised question format" in result.output.replace("\n", "")


def test_dry_run_counts_calls_and_calls_nothing(personas: Path, questions: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        result = invoke("synth", "--personas", str(personas), "--questions", str(questions), "--out", str(tmp_path / "run"),
                        "--model", "m", "--base-url", server.base_url, "--dry-run", "--price-in", "2.5", "--price-out", "10")
        assert server.request_count == 0
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split("│")[1:3] == [" profiles  ", "    12 "] for line in lines if "│" in line)
    assert any("dialogues" in line and "15" in line for line in lines)
    assert "first profiles prompt" in result.output and not (tmp_path / "run").exists()


def test_missing_key_for_a_hosted_api_is_a_clear_error(personas: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profiles", "--personas", str(personas), "--out", str(tmp_path / "r"), "--model", "gpt-4o-mini",
                                 "--base-url", "https://api.example.com/v1", "--api-key-env", "OC_TEST_UNSET_KEY"])
    assert result.exit_code == 1 and "set OC_TEST_UNSET_KEY" in result.output.replace("\n", " ")


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "opencharacter.cli", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} lines")


def test_sigkill_mid_run_then_resume_never_repeats_finished_work(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / "personahub" / "personas.jsonl").read_text().splitlines()[:60]
    personas = tmp_path / "p.jsonl"
    personas.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    results = out / "characters.jsonl"
    with FakeOpenAIServer(latency=0.05) as server:
        args = ("profiles", "--personas", str(personas), "--out", str(out), "--model", "m",
                "--base-url", server.base_url, "--concurrency", "4")
        proc = _cli(*args)
        _wait_for_lines(results, 15, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished_before = [r["persona"] for r in iter_jsonl(results)]
        assert 15 <= len(finished_before) < 60
        resumed = _cli(*args)
        _, stderr = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, stderr
        prompts = Prompts()
        answered = server.answered_by_key
        for persona in finished_before:  # finished before the kill: asked exactly once, ever
            key = request_key([{"role": "user", "content": prompts.render("profile", persona=persona)}])
            assert answered[key] == 1
        # Only requests in flight at the kill (at most the concurrency) were asked twice.
        assert sum(1 for count in answered.values() if count > 1) <= 4
    records = list(iter_jsonl(results))
    assert len(records) == 60 == len({r["character_id"] for r in records})


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(personas: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.3) as server:
        proc = _cli("profiles", "--personas", str(personas), "--out", str(out), "--model", "m",
                    "--base-url", server.base_url, "--concurrency", "2")
        _wait_for_lines(out / "characters.jsonl", 2, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Resume with the same command" in stderr and "opencharacter profiles" in stderr
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["stages"]["profiles"]["status"] == "interrupted"
    assert manifest["stages"]["profiles"]["records"] >= 2


def test_example_runs_in_process_and_an_unusable_model_is_reported_not_hidden(tiny_llama: Path, tmp_path: Path) -> None:
    """The built-in example through the transformers backend: a random tiny model writes no valid
    profile, so every persona ends as a failure record and the command says so (exit 1)."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["synth", "--example", "--model", str(tiny_llama), "--out", str(out),
                                 "--max-tokens", "8", "--max-retries", "0", "--no-progress"])
    assert result.exit_code == 1
    assert "no character profile was written" in " ".join(result.output.split())
    failures = list(iter_jsonl(out / "failures.jsonl"))
    assert len(failures) == 10 and {f["stage"] for f in failures} == {"profiles"}
    assert {f["reason"] for f in failures} <= {"invalid_output", "truncated"}
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["stages"]["profiles"]["failed_now"] == 10
    assert manifest["stages"]["profiles"]["settings"]["backend"] == "transformers"


def test_resume_after_failed_profiles_keeps_the_dialogues_already_paid_for(tmp_path: Path) -> None:
    """Run 1: one profile fails, dialogues are paired among the rest. Run 2 writes that profile; the
    new deal differs, but each question keeps the characters that answered it: no second set."""
    personas = tmp_path / "p.jsonl"
    personas.write_text("".join(json.dumps({"persona": f"A lighthouse keeper number {i}"}) + "\n" for i in range(5)))
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "A."}) + "\n" for i in range(6)))
    out = tmp_path / "run"
    args = ("synth", "--personas", str(personas), "--questions", str(questions), "--out", str(out), "--model", "m",
            "-k", "2", "--max-retries", "0")
    failing = request_key([{"role": "user", "content": Prompts().render("profile", persona="A lighthouse keeper number 4")}])
    with FakeOpenAIServer() as server:
        server.fail_key(failing, Fault.bad_request("refused"))
        assert invoke(*args, "--base-url", server.base_url).exit_code == 0
        first = {d["dialogue_id"] for d in iter_jsonl(out / "dialogues.jsonl")}
        assert len(first) == 12 and len(list(iter_jsonl(out / "characters.jsonl"))) == 4
        server.reset()
        result = invoke(*args, "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        assert server.request_count == 1  # the missing profile, and nothing else
    assert len(list(iter_jsonl(out / "characters.jsonl"))) == 5
    assert {d["dialogue_id"] for d in iter_jsonl(out / "dialogues.jsonl")} == first
