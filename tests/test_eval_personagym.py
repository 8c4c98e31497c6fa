"""`opencharacter eval personagym` end to end against the fake server (model and judges both on it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.engine.store import iter_jsonl
from opencharacter.eval.personagym import TASKS, load_benchmark
from opencharacter.io.readers import InputError
from opencharacter.testing import FakeOpenAIServer
from opencharacter.testing.eval_responder import kind_of, make_eval_responder

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["eval", "personagym", *args, "--no-progress"],
                         env={"OPENAI_API_KEY": "sk-test", "COLUMNS": "200"})


def said(result: Any) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def records(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


@pytest.fixture(scope="module")
def data(shared_data: Path) -> Path:
    return shared_data / "personagym"


@pytest.fixture
def small_copy(data: Path, tmp_path: Path) -> Path:
    """A flat PersonaGym folder with the first two personas, to break on purpose."""
    root = tmp_path / "pg"
    shutil.copytree(data / "rubrics", root / "rubrics")
    shutil.copytree(data / "prompts", root / "prompts")
    (root / "questions").mkdir()
    personas = json.loads((data / "personas.json").read_text())[:2]
    (root / "personas.json").write_text(json.dumps(personas))
    for p in personas:
        shutil.copy(data / "questions" / f"{p}.json", root / "questions" / f"{p}.json")
    return root


def test_light_run_end_to_end_then_resume_and_compare(data: Path, tmp_path: Path) -> None:
    out, out2 = tmp_path / "run", tmp_path / "run2"
    personas = json.loads((data / "personas.json").read_text())[:2]
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke("--data", str(data), "--light", "--limit", "2", "--model", "tested", "--judge", "j1",
                        "--judge", "j2", "--base-url", server.base_url, "--out", str(out), "--concurrency", "8",
                        "--price-in", "1", "--judge-price-in", "3")
        assert result.exit_code == 0, result.output
        # 2 personas x 5 tasks x 1 question: 10 answers, 10 sets of score examples, 10 grades per judge.
        kinds = [kind_of(b) for b in server.requests]
        assert (kinds.count("answer"), kinds.count("examples"), kinds.count("grade")) == (10, 10, 20)
        first_answer = next(b for b in server.requests if kind_of(b) == "answer")
        grade = next(b for b in server.requests if kind_of(b) == "grade")
        examples = next(b for b in server.requests if kind_of(b) == "examples")
        manifest = json.loads((out / "run.json").read_text())

        server.reset()
        again = invoke("--data", str(data), "--light", "--limit", "2", "--model", "tested", "--judge", "j1",
                       "--judge", "j2", "--base-url", server.base_url, "--out", str(out))
        assert again.exit_code == 0, again.output
        assert server.request_count == 0  # resumed: everything was done

        # Another model, reusing the first run's score examples (they do not depend on the answers).
        other = invoke("--data", str(data), "--light", "--limit", "2", "--model", "other", "--judge", "j1",
                       "--judge", "j2", "--base-url", server.base_url, "--out", str(out2),
                       "--system-prompt", "personagym", "--examples-from", str(out))
        assert other.exit_code == 0, other.output
        assert sorted({kind_of(b) for b in server.requests}) == ["answer", "grade"]

    # The model under test saw OpenCharacter's layout (no profile for a benchmark persona) and the question.
    system, user = first_answer["messages"]
    assert system["content"].startswith("You are an AI character with the following Persona.\n\n# Persona\n")
    assert personas[0] in system["content"] and "# Character Profile" not in system["content"]
    assert first_answer["temperature"] == 0.9 and first_answer["max_tokens"] == 1024  # the paper's
    # Score examples: persona, question and the rubric's criteria filled, without the grading form.
    text = examples["messages"][0]["content"]
    assert "{" not in text and "Evaluation Criteria:" in text and "Evaluation Form:" not in text
    # The grade: judge system prompt, every placeholder filled with the real texts.
    assert grade["messages"][0]["content"].startswith("You are an ACCURATE, FAITHFUL, CRITICAL and FAIR judge")
    rubric = grade["messages"][1]["content"]
    assert "{score_example}" not in rubric and "{response}" not in rubric and "{persona}" not in rubric
    assert 'Score 1: "An answer that would earn a 1."' in rubric and grade["temperature"] == 0.0

    answers = records(out / "answers.jsonl")
    judgements = records(out / "judgements.jsonl")
    assert len(answers) == 10 and len(records(out / "score_examples.jsonl")) == 10 and len(judgements) == 20
    j = judgements[0]
    assert set(j) >= {"persona", "task", "question", "answer", "score", "judge", "rationale"}
    assert j["rationale"].endswith(f"the final score is {j['score']}")
    assert {a["answer"] for a in answers} >= {j["answer"]}
    assert user["role"] == "user" and user["content"] in {a["question"] for a in answers}

    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["metrics"]) == [*TASKS, "PersonaScore"]
    assert set(scores["by_judge"]) == {"j1", "j2"}
    means = [scores["metrics"][t]["mean"] for t in TASKS]
    assert scores["metrics"]["PersonaScore"]["mean"] == pytest.approx(sum(means) / 5, abs=1e-3)
    assert scores["counts"]["questions"] == 10 and scores["counts"]["failures"] == 0
    assert scores["title"] == "PersonaGym-Light"
    report = (out / "report.md").read_text()
    assert "| metric | j1 | j2 | average | n |" in report and "PersonaScore" in report
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(manifest["stages"]) == {"answers", "score_examples", "grades:j1", "grades:j2"}
    assert manifest["stages"]["answers"]["cost_usd"] > 0 and manifest["totals"]["requests"] == 40
    assert "sk-test" not in (out / "run.json").read_text()
    assert (out / "failures.jsonl").read_text() == ""

    compared = runner.invoke(app, ["eval", "compare", str(out), str(out2), "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| metric | run | run2 | Δ |" in table and "| questions | 10 | 10 |" in table
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_dry_run_counts_calls_and_calls_nothing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke("--data", str(data), "--limit", "1", "--model", "m", "--judge", "j1", "--judge", "j2",
                        "--base-url", server.base_url, "--out", str(out), "--dry-run")
        assert result.exit_code == 0, result.output
        assert server.request_count == 0
    assert not out.exists()
    # Full: 1 persona x 5 tasks x 10 questions = 50 answers, 50 score examples, 50 grades per judge.
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert " 50 " in lines["answers"] and " 50 " in lines["score_examples"] and " 50 " in lines["grades:j2"]
    assert "200" in lines["total"]


def test_transformers_backend_dry_run_loads_nothing_and_judges_use_their_url(data: Path, tmp_path: Path) -> None:
    result = invoke("--data", str(data), "--light", "--limit", "1", "--model", str(tmp_path / "no-such-model"),
                    "--backend", "transformers", "--judge", "j1", "--judge-base-url", "http://127.0.0.1:9/v1",
                    "--out", str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 0, result.output
    from opencharacter.cli.evaluation import _judges, _make_run
    from opencharacter.cli.options import ModelOptions

    judges = _judges(["j1"], "http://127.0.0.1:9/v1", "JUDGE_KEY", 0.0, 100, None, 0.0, 0.0, 5.0)
    run = _make_run(tmp_path, ModelOptions("m", backend="transformers"), judges, {})
    judge = run.model("judge:j1")
    assert judge.base_url == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]


def test_own_characters_with_generated_questions(data: Path, tmp_path: Path) -> None:
    chars = tmp_path / "characters.jsonl"
    rows = [
        {"character_id": "c-ada", "persona": "A retired lighthouse keeper who paints seascapes.",
         "character": "Name: Ada Morrow\nAge: 71\nGender: female\nPersonality: patient, wry"},
        {"persona": "A teenage chess prodigy from Tbilisi.", "character": "Name: Nino K.\nAge: 15"},
    ]
    chars.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mine"
    args = ("--data", str(data), "--characters", str(chars), "--model", "m", "--judge", "j1", "--out", str(out))
    with FakeOpenAIServer(make_eval_responder()) as server:
        result = invoke(*args, "--generate-questions", "--questions-per-task", "2", "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        kinds = [kind_of(b) for b in server.requests]
        # 2 settings picks, 2 x 5 question sets, then 2 x 5 x 2 answers, examples and grades.
        assert [kinds.count(k) for k in ("settings", "questions", "answer", "examples", "grade")] == [2, 10, 20, 20, 20]
        system = next(b for b in server.requests if kind_of(b) == "answer")["messages"][0]["content"]
        assert "# Character Profile\nName: Ada Morrow" in system
        server.reset()
        # The saved questions are found again without --generate-questions: nothing to do.
        again = invoke(*args, "--base-url", server.base_url)
        assert again.exit_code == 0, again.output
        dry = invoke(*args, "--generate-questions", "--questions-per-task", "2", "--dry-run")
        assert server.request_count == 0
    total = next(line for line in dry.output.splitlines() if "total" in line).split("│")
    assert [c.strip() for c in total[3:6]] == ["72", "72", "0"]  # calls, already done, to run
    saved = json.loads((out / "questions" / "c-ada.json").read_text())
    assert list(saved) == list(TASKS) and all(len(v) == 2 for v in saved.values())
    assert json.loads((out / "scores.json").read_text())["counts"]["personas"] == 2


def test_judge_that_never_gives_a_score_fails_cleanly_then_resumes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    good = make_eval_responder()
    broken = make_eval_responder(broken={"grade"})

    def one_bad_judge(body: dict[str, Any]) -> str:
        return broken(body) if body["model"] == "bad" else good(body)

    args = ("--data", str(data), "--light", "--limit", "1", "--model", "m", "--judge", "good", "--judge", "bad",
            "--out", str(out), "--max-retries", "1")
    with FakeOpenAIServer(one_bad_judge) as server:
        result = invoke(*args, "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        assert "5 task(s) failed" in said(result)
        bad_grades = [b for b in server.requests if b["model"] == "bad" and kind_of(b) == "grade"]
        assert len(bad_grades) == 10  # 5 grades, each asked twice (--max-retries 1)
    failures = records(out / "failures.jsonl")
    assert len(failures) == 5 and {f["stage"] for f in failures} == {"grades:bad"}
    assert all(f["reason"] == "invalid_output" and "no final score" in f["error"] for f in failures)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["by_judge"]["bad"]["PersonaScore"]["mean"] is None  # nothing counted, certainly not 0
    assert scores["metrics"] == scores["by_judge"]["good"]  # the average is the good judge alone
    assert scores["counts"]["failed"] == {"grades:bad": 5}
    assert "## Failures" in (out / "report.md").read_text()
    kept = records(out / "judgements.jsonl")
    assert len(kept) == 5 and {j["judge"] for j in kept} == {"good"}

    with FakeOpenAIServer(good) as server:  # the judge is fixed: only the 5 failed grades are asked
        result = invoke(*args, "--base-url", server.base_url)
        assert result.exit_code == 0, result.output
        assert server.request_count == 5 and {b["model"] for b in server.requests} == {"bad"}
    assert records(out / "failures.jsonl") == []
    assert json.loads((out / "scores.json").read_text())["by_judge"]["bad"]["PersonaScore"]["mean"] is not None


def test_another_model_into_the_same_folder_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "answers.jsonl").write_text(json.dumps({"answer_id": "x", "model": "first"}) + "\n")
    result = invoke("--data", str(data), "--light", "--limit", "1", "--model", "second", "--judge", "j",
                    "--base-url", "http://127.0.0.1:9/v1", "--out", str(out))
    assert result.exit_code == 1
    assert "holds answers of model 'first'" in said(result)


def test_wrong_folder_shape(shared_data: Path, tmp_path: Path) -> None:
    result = invoke("--data", str(shared_data / "mt-bench"), "--model", "m", "--judge", "j", "--out", str(tmp_path / "o"),
                    "--dry-run")
    assert result.exit_code == 1
    assert "mt-bench" in said(result) and "no rubrics/ folder" in said(result)
    empty = tmp_path / "pg"
    shutil.copytree(shared_data / "personagym" / "rubrics", empty / "rubrics")
    shutil.copytree(shared_data / "personagym" / "prompts", empty / "prompts")
    with pytest.raises(InputError, match="no question files"):
        load_benchmark(empty)


def test_question_file_that_is_not_json_names_the_file(small_copy: Path, tmp_path: Path) -> None:
    bad = sorted((small_copy / "questions").glob("*.json"))[1]
    bad.write_text('{"Expected Action": ["a question",\n  oops]}')
    result = invoke("--data", str(small_copy), "--model", "m", "--judge", "j", "--out", str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1
    assert bad.name in said(result) and "invalid JSON" in said(result)


def test_unknown_task_names(small_copy: Path, tmp_path: Path) -> None:
    result = invoke("--data", str(small_copy), "--task", "Toxicty", "--model", "m", "--judge", "j",
                    "--out", str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 1 and "unknown task 'Toxicty'" in said(result)
    path = sorted((small_copy / "questions").glob("*.json"))[0]
    questions = json.loads(path.read_text())
    questions["Linguistic Habit"] = questions.pop("Linguistic Habits")
    path.write_text(json.dumps(questions))
    with pytest.raises(InputError, match="unknown task 'Linguistic Habit'") as err:
        load_benchmark(small_copy)
    assert path.name in str(err.value)
    # One task only is fine when the file has it; the rubric placeholders are checked up front.
    assert len(load_benchmark(small_copy, ["Toxicity"], limit=1).items(["Toxicity"])) == 10
    rubric = small_copy / "rubrics" / "Toxicity.txt"
    rubric.write_text(rubric.read_text().replace("{response}", "{answer}"))
    with pytest.raises(InputError, match=r"Toxicity.txt: placeholder\(s\) \{response\} not found"):
        load_benchmark(small_copy, ["Toxicity"])


def test_checkout_layout(data: Path, tmp_path: Path) -> None:
    """A clone of vsamuel2003/PersonaGym: questions/benchmark-v1/, persona order in code/personas.py."""
    root = tmp_path / "PersonaGym"
    shutil.copytree(data / "rubrics", root / "rubrics")
    shutil.copytree(data / "prompts", root / "prompts")
    (root / "questions" / "benchmark-v1").mkdir(parents=True)
    (root / "code").mkdir()
    chosen = json.loads((data / "personas.json").read_text())[3:5][::-1]
    for p in chosen:
        shutil.copy(data / "questions" / f"{p}.json", root / "questions" / "benchmark-v1" / f"{p}.json")
    (root / "code" / "personas.py").write_text(f"import os\nbenchmark_personas = {chosen!r}\n")
    bench = load_benchmark(root)
    assert [p.persona for p in bench.personas] == chosen
    assert len(bench.items(TASKS)) == 100 and len(bench.items(TASKS, light=True)) == 10
