"""`opencharacter ditto` (Ditto self-alignment) end to end against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.engine.runner import InvalidOutput
from opencharacter.engine.store import iter_jsonl
from opencharacter.io.chat_data import load_chat_samples
from opencharacter.pipelines import ditto
from opencharacter.prompts import build_system_prompt
from opencharacter.records import Character, Dialogue, Profile, dialogue_id_for, question_id_for
from opencharacter.testing import FakeOpenAIServer

runner = CliRunner()
PERSONAS = (
    "A lighthouse keeper on a remote Scottish island in the 1890s",
    "A pastry chef in Lyon who trains apprentices",
    "A retired long-haul truck driver from Nebraska",
    "A teenage chess prodigy from Chennai",
)
DECLINE = "Ach, that is beyond me"
FALLBACK = "A plain in-character answer."


def make_characters(path: Path, personas: tuple[str, ...] = PERSONAS) -> list[Character]:
    characters = []
    for i, persona in enumerate(personas):
        profile = Profile(name=f"Person {i}", age=str(30 + i), gender="female", race="Human", born_place="Somewhere",
                          appearance="Tall.", general_experience=f"They are {persona.lower()}.", personality="Calm.")
        characters.append(Character(character_id=f"char{i}", persona=persona, character=profile.to_text(),
                                    profile=profile, source="test", model="m"))
    path.write_text("".join(c.model_dump_json() + "\n" for c in characters))
    return characters


def _count(prompt: str, kind: str) -> int:
    match = re.search(rf'- (\d+) of kind "{kind}"', prompt)
    return int(match.group(1)) if match else 0


def ditto_responder(body: dict[str, Any]) -> str:
    """Query lists for the query prompt (the counts it asks for), answers for the answer prompt."""
    prompt = body["messages"][-1]["content"]
    if "# Queries to write" in prompt:
        name = re.search(r"^Name: (.+)$", prompt, re.MULTILINE).group(1)
        role = [{"kind": "role", "query": f"{name}, what did you learn in year {i}?"}
                for i in range(_count(prompt, "role"))]
        out = [{"kind": "out-of-scope", "query": f"{name}, can you derive equation {i} of quantum field theory?"}
               for i in range(_count(prompt, "out_of_scope"))]
        return "```json\n" + json.dumps(role + out) + "\n```"
    if "# Query\n" in prompt:
        query = prompt.split("# Query\n", 1)[1].split("\n\n", 1)[0]
        if "does not know and cannot answer" in prompt:
            return f"{DECLINE}, friend. You ask: {query}"
        return f'"Let me tell you, since you ask: {query}"'
    return FALLBACK


def invoke(*args: str) -> Any:
    return runner.invoke(app, [*args, "--no-progress"], env={"OPENAI_API_KEY": "sk-test"})


def run_ditto(server: FakeOpenAIServer, characters: Path, out: Path, *extra: str) -> Any:
    return invoke("ditto", "--characters", str(characters), "--out", str(out), "--model", "seed-model",
                  "--base-url", server.base_url, "--concurrency", "4", *extra)


def _queries_prompts(server: FakeOpenAIServer) -> list[str]:
    return [r["messages"][-1]["content"] for r in server.requests if "# Queries to write" in r["messages"][-1]["content"]]


def test_ditto_end_to_end_then_resume_requests_nothing(tmp_path: Path) -> None:
    characters = make_characters(tmp_path / "characters.jsonl")
    out = tmp_path / "run"
    with FakeOpenAIServer(ditto_responder) as server:
        result = run_ditto(server, tmp_path / "characters.jsonl", out, "--queries-per-character", "6",
                           "--out-of-scope-share", "0.5")
        assert result.exit_code == 0, result.output
        assert server.request_count == 4 + 24
        query_prompts = _queries_prompts(server)
        assert {r["model"] for r in server.requests} == {"seed-model"}  # one seed model for both stages
        # The second run resumes both stages: nothing is asked again.
        again = run_ditto(server, tmp_path / "characters.jsonl", out, "--queries-per-character", "6",
                          "--out-of-scope-share", "0.5")
        assert again.exit_code == 0, again.output
        assert server.request_count == 28
    assert "24 already done" in again.output and "4 already done" in again.output

    # Each query prompt offers another character's persona as a source of out-of-scope ideas.
    for c in characters:
        prompt = next(p for p in query_prompts if c.persona in p.split("# Character Profile")[0])
        assert any(o.persona in prompt for o in characters if o is not c)

    records = list(iter_jsonl(out / "ditto_queries.jsonl"))
    assert sorted(r["character_id"] for r in records) == [c.character_id for c in characters]
    for record in records:
        assert Counter(q["kind"] for q in record["queries"]) == {"role": 3, "out_of_scope": 3}
        assert all(q["question_id"] == question_id_for(q["query"]) for q in record["queries"])

    by_id = {c.character_id: c for c in characters}
    dialogues = [Dialogue.model_validate(r) for r in iter_jsonl(out / "dialogues.jsonl")]
    assert len(dialogues) == 24 == len({d.dialogue_id for d in dialogues})
    assert Counter(d.question_source for d in dialogues) == {"ditto:role": 12, "ditto:out_of_scope": 12}
    for d in dialogues:
        character = by_id[d.character_id]
        assert d.strategy.value == "ditto" and d.model == "seed-model"
        assert d.dialogue_id == dialogue_id_for(d.character_id, question_id_for(d.question), "ditto")
        assert d.messages == [
            {"role": "system", "content": build_system_prompt(character.persona, character.character)},
            {"role": "user", "content": d.question},
            {"role": "assistant", "content": d.character_answer},
        ]
        assert d.question.startswith(character.profile.name)  # queries are about this character
        declined = d.character_answer.startswith(DECLINE)
        assert declined == (d.question_source == "ditto:out_of_scope")
        assert not d.character_answer.startswith('"')  # wrapping quotes are cleaned off

    manifest = json.loads((out / "run.json").read_text())
    for stage, succeeded in (("ditto_queries", 4), ("ditto_dialogues", 24)):
        entry = manifest["stages"][stage]
        assert entry["status"] == "completed" and entry["succeeded"] == succeeded and entry["invocations"] == 2
    assert manifest["stages"]["ditto_dialogues"]["inputs"]["out_of_scope_queries"] == 12
    assert manifest["stages"]["ditto_queries"]["settings"]["out_of_scope_share"] == 0.5


def test_counts_follow_the_share_on_average_and_the_seed(tmp_path: Path) -> None:
    assert ditto.query_split("c", 6, 0.0, 0) == (6, 0) and ditto.query_split("c", 6, 1.0, 0) == (0, 6)
    assert ditto.query_split("c", 6, 0.5, 7) == (3, 3)
    splits = [ditto.query_split(f"c{i}", 4, 0.33, 0) for i in range(2000)]
    assert {n_out for _, n_out in splits} == {1, 2} and all(a + b == 4 for a, b in splits)
    assert abs(sum(n_out for _, n_out in splits) / (4 * 2000) - 0.33) < 0.01
    assert splits == [ditto.query_split(f"c{i}", 4, 0.33, 0) for i in range(2000)]  # stable across resumes

    make_characters(tmp_path / "characters.jsonl")
    out = tmp_path / "run"
    with FakeOpenAIServer(ditto_responder) as server:
        result = run_ditto(server, tmp_path / "characters.jsonl", out, "-n", "4", "--out-of-scope-share", "0.33")
        assert result.exit_code == 0, result.output
        asked = {re.search(r"^Name: (.+)$", p, re.MULTILINE).group(1): _count(p, "out_of_scope") for p in _queries_prompts(server)}
    dialogues = list(iter_jsonl(out / "dialogues.jsonl"))
    assert len(dialogues) == 16
    for name, n_out in asked.items():
        mine = [d for d in dialogues if d["question"].startswith(name)]
        assert sum(d["question_source"] == "ditto:out_of_scope" for d in mine) == n_out


def test_ditto_records_coexist_with_generate_records_and_are_trainable(tmp_path: Path) -> None:
    characters_path = tmp_path / "characters.jsonl"
    make_characters(characters_path)
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"instruction": "How do I boil an egg?"}\n{"instruction": "Name three rivers."}\n')
    out = tmp_path / "run"
    generate_args = ("dialogues", "--characters", str(characters_path), "--questions", str(questions),
                     "--out", str(out), "--model", "m", "-k", "3")
    with FakeOpenAIServer(ditto_responder) as server:
        assert invoke(*generate_args, "--base-url", server.base_url).exit_code == 0
        generated = (out / "dialogues.jsonl").read_text()
        assert generated.count("\n") == 6
        result = run_ditto(server, characters_path, out, "-n", "3", "--out-of-scope-share", "0.34")
        assert result.exit_code == 0, result.output
        before = server.request_count
        # Each recipe resumes by its own dialogue ids: neither redoes nor disturbs the other.
        assert invoke(*generate_args, "--base-url", server.base_url).exit_code == 0
        assert run_ditto(server, characters_path, out, "-n", "3", "--out-of-scope-share", "0.34").exit_code == 0
        assert server.request_count == before
    text = (out / "dialogues.jsonl").read_text()
    assert text.startswith(generated)  # generate records untouched, ditto records appended
    rows = list(iter_jsonl(out / "dialogues.jsonl"))
    assert Counter(r["strategy"] for r in rows) == {"generate": 6, "ditto": 12}

    samples = list(load_chat_samples(out))
    assert len(samples) == 18 and len({s.sample_id for s in samples}) == 18
    ditto_ids = {r["dialogue_id"] for r in rows if r["strategy"] == "ditto"}
    for sample in (s for s in samples if s.sample_id in ditto_ids):
        assert [m["role"] for m in sample.messages] == ["system", "user", "assistant"]
        assert sample.system.startswith("You are an AI character") and sample.character_id


def test_dry_run_counts_calls_and_calls_nothing(tmp_path: Path) -> None:
    characters_path = tmp_path / "characters.jsonl"
    make_characters(characters_path)
    out = tmp_path / "run"
    with FakeOpenAIServer(ditto_responder) as server:
        result = run_ditto(server, characters_path, out, "--dry-run", "--price-in", "1", "--price-out", "2")
        assert result.exit_code == 0, result.output
        assert server.request_count == 0 and not out.exists()
        assert _stage_row(result.output, "ditto_queries")[:2] == ["4", "0"]
        assert _stage_row(result.output, "ditto_dialogues")[:2] == ["24", "0"]  # 4 characters x 6 queries
        assert "first ditto_queries prompt" in result.output and "first ditto_dialogues prompt" in result.output
        # After a run, a dry run sizes what is left: nothing.
        assert run_ditto(server, characters_path, out).exit_code == 0
        count = server.request_count
        again = run_ditto(server, characters_path, out, "--dry-run")
        assert server.request_count == count
    assert _stage_row(again.output, "ditto_queries")[:2] == ["0", "4"]
    assert _stage_row(again.output, "ditto_dialogues")[:2] == ["0", "24"]


def _stage_row(output: str, stage: str) -> list[str]:
    """The figures after the stage name in the dry-run table (names may be cut short to fit the width)."""
    rows = [line.split("│")[1:-1] for line in output.splitlines() if line.startswith("│ ditto_")]
    cells = rows[("ditto_queries", "ditto_dialogues").index(stage)]
    assert stage.startswith(cells[0].strip().rstrip("…"))
    return [cell.strip() for cell in cells[1:]]


def test_invalid_queries_are_resampled_then_recorded_as_failures_and_retried_next_run(tmp_path: Path) -> None:
    characters_path = tmp_path / "characters.jsonl"
    make_characters(characters_path)
    out = tmp_path / "run"

    def bad_for_person_1(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        if "# Queries to write" in prompt and "Name: Person 1" in prompt:
            return '[{"kind": "role", "query": "Only one?"}]'  # wrong counts
        return ditto_responder(body)

    with FakeOpenAIServer(bad_for_person_1) as server:
        result = run_ditto(server, characters_path, out, "--max-retries", "1")
        assert result.exit_code == 0, result.output
        assert sum("Name: Person 1" in p for p in _queries_prompts(server)) == 2  # sampled once more
    assert "characters have no queries yet" in result.output.replace("\n", " ")
    failures = list(iter_jsonl(out / "failures.jsonl"))
    assert len(failures) == 1
    assert failures[0]["stage"] == "ditto_queries" and failures[0]["task_id"] == "char1"
    assert failures[0]["reason"] == "invalid_output" and failures[0]["attempts"] == 2
    assert "asked for 4 role and 2 out_of_scope" in failures[0]["error"]
    assert len(list(iter_jsonl(out / "dialogues.jsonl"))) == 18
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["stages"]["ditto_queries"]["failures_by_reason"] == {"invalid_output": 1}
    assert manifest["stages"]["ditto_dialogues"]["inputs"]["characters_without_queries"] == 1

    with FakeOpenAIServer(ditto_responder) as server:  # the model behaves: only the failed work is asked
        assert run_ditto(server, characters_path, out).exit_code == 0
        assert server.request_count == 1 + 6
    assert not (out / "failures.jsonl").read_text().strip()
    assert len(list(iter_jsonl(out / "dialogues.jsonl"))) == 24


def test_an_empty_answer_is_a_failure_of_the_answer_stage(tmp_path: Path) -> None:
    characters_path = tmp_path / "characters.jsonl"
    make_characters(characters_path, PERSONAS[:2])

    def silent(body: dict[str, Any]) -> str:
        return "  " if "# Query\n" in body["messages"][-1]["content"] else ditto_responder(body)

    with FakeOpenAIServer(silent) as server:
        result = run_ditto(server, characters_path, tmp_path / "run", "--max-retries", "0", "-n", "2")
        assert result.exit_code == 0, result.output
    failures = list(iter_jsonl(tmp_path / "run" / "failures.jsonl"))
    assert len(failures) == 4 and {f["stage"] for f in failures} == {"ditto_dialogues"}
    assert {f["reason"] for f in failures} == {"invalid_output"} and "empty answer" in failures[0]["error"]
    assert failures[0]["meta"]["question_source"].startswith("ditto:")


@pytest.mark.parametrize(("text", "error"), [
    ("Here are some questions: what is your name?", "no JSON list"),
    ('{"name": "Ada"}', "no JSON list"),
    ('[{"kind": "role", "query": "Where', "cut off"),
    ('["just a string", "another"]', "not a list of {kind, query} objects"),
    ('[{"kind": "role", "query": "   "}, {"kind": "out_of_scope", "query": "Q2"}]', "query"),
    ('[{"kind": "gossip", "query": "Q1"}, {"kind": "out_of_scope", "query": "Q2"}]', "kind"),
    ('[{"kind": "role", "query": "Q1"}, {"kind": "role", "query": "Q2"}]', "asked for 1 role and 1 out_of_scope"),
    ('[{"kind": "role", "query": "Q1"}, {"kind": "out_of_scope", "query": " q1 "}]', "twice"),
])
def test_bad_query_lists_are_invalid_output(text: str, error: str) -> None:
    with pytest.raises(InvalidOutput, match=re.escape(error)):
        ditto.parse_queries(text, 1, 1)


@pytest.mark.parametrize("text", [
    '[{"kind": "Role", "query": "Q1"}, {"kind": "Out of scope", "question": "Q2"}]',
    'Sure! ```json\n[{"kind": "role", "query": "Q1 [laughs]"}, {"kind": "out-of-scope", "query": "Q2"}]\n```',
    '{"queries": [{"kind": "role", "query": "Q1"}, {"kind": "out_of_scope", "query": "Q2"}]}',
])
def test_query_lists_in_the_shapes_models_write_are_accepted(text: str) -> None:
    queries = ditto.parse_queries(text, 1, 1)
    assert [q.kind.value for q in queries] == ["role", "out_of_scope"] and queries[0].query.startswith("Q1")


@pytest.mark.parametrize(("content", "message"), [
    ('{"character_id": "a", "persona": "p", "character": "Name: A"}\n{"character_id": "b"\n', "characters.jsonl:2: invalid JSON"),
    ('{"character_id": "a", "persona": "p", "character": "Name: A"}\n{"persona": "p"}\n', "characters.jsonl:2: not a character record"),
    ('{"character_id": "a", "persona": "p", "character": "   "}\n', "characters.jsonl:1: empty character profile"),
    ("\n", "holds no characters"),
])
def test_malformed_characters_stop_before_any_call(tmp_path: Path, content: str, message: str) -> None:
    characters_path = tmp_path / "characters.jsonl"
    characters_path.write_text(content)
    out = tmp_path / "run"
    with FakeOpenAIServer(ditto_responder) as server:
        result = run_ditto(server, characters_path, out)
        assert server.request_count == 0
    assert result.exit_code == 1 and message in result.output.replace("\n", "")
    assert not out.exists()


def test_malformed_queries_file_in_the_run_stops_before_any_call(tmp_path: Path) -> None:
    characters_path = tmp_path / "characters.jsonl"
    make_characters(characters_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "ditto_queries.jsonl").write_text('{"character_id": "char0", "queries": [{"kind": "role"}]}\n')
    with FakeOpenAIServer(ditto_responder) as server:
        result = run_ditto(server, characters_path, out)
        assert server.request_count == 0
    assert result.exit_code == 1 and "ditto_queries.jsonl:1: not a ditto query record" in result.output.replace("\n", "")
