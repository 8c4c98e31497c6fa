from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencharacter.io.readers import InputError, iter_personas, iter_questions


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_real_persona_hub_file(shared_data: Path) -> None:
    rows = list(iter_personas(str(shared_data / "personahub" / "personas.jsonl")))
    assert len(rows) == 4000
    assert all(r.persona for r in rows) and rows[0].line == 1


@pytest.mark.parametrize("field", ["persona", "input persona"])
def test_persona_field_names(tmp_path: Path, field: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{field: "A chef"}, {field: " A pilot "}])
    assert [r.persona for r in iter_personas(str(path))] == ["A chef", "A pilot"]


def test_persona_text_csv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("A chef\n\nA pilot\n")
    assert [r.persona for r in iter_personas(str(tmp_path / "p.txt"))] == ["A chef", "A pilot"]
    (tmp_path / "p.csv").write_text('persona,other\n"A chef, retired",1\n')
    assert [r.persona for r in iter_personas(str(tmp_path / "p.csv"))] == ["A chef, retired"]
    pq.write_table(pa.table({"persona": ["x", "y"]}), tmp_path / "p.parquet")
    assert [r.persona for r in iter_personas(str(tmp_path / "p.parquet"))] == ["x", "y"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"persona": "ok"}\n{"persona": \n', "p.jsonl:2: invalid JSON"),
    ('{"persona": "ok"}\n{"name": "x"}\n', "p.jsonl:2: no persona field"),
    ('{"persona": "ok"}\n{"persona": "   "}\n', "p.jsonl:2: empty persona"),
    ('["a list"]\n', "p.jsonl:1: expected an object"),
])
def test_bad_persona_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        list(iter_personas(str(tmp_path / "p.jsonl")))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(iter_personas(str(tmp_path / "nope.jsonl")))


QUESTION_ROWS = [
    ({"instruction": "Sum", "input": "1 and 2", "output": "3"}, "Sum\n\n1 and 2", "3"),
    ({"conversations": ["What is 2+2?", "4"]}, "What is 2+2?", "4"),
    ({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello"}]}, "Hi?", "Hello"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}, "Q?", "A."),
    ({"id": "seed_task_0", "instruction": "Define X", "instances": [{"input": "", "output": "X is..."}]}, "Define X", "X is..."),
    ({"input persona": "a chef", "synthesized text": "How do I sear tuna?"}, "How do I sear tuna?", None),
    ({"question": "Why?", "answer": "Because."}, "Why?", "Because."),
]


@pytest.mark.parametrize(("row", "question", "answer"), QUESTION_ROWS)
def test_question_formats(tmp_path: Path, row: dict, question: str, answer: str | None) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [row])
    [parsed] = list(iter_questions(str(path)))
    assert (parsed.question, parsed.answer, parsed.source) == (question, answer, "q")


def test_real_self_instruct_and_user_oriented_files(shared_data: Path) -> None:
    seed = list(iter_questions(str(shared_data / "self-instruct" / "seed_tasks.jsonl")))
    user = list(iter_questions(str(shared_data / "self-instruct" / "user_oriented_instructions.jsonl")))
    assert len(seed) == 175 and len(user) == 252
    assert all(q.answer for q in seed)


def test_unknown_question_format_and_empty_question(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"instruction": "ok"}, {"foo": 1}])
    with pytest.raises(InputError, match=r"q.jsonl:2: unrecognised question format \(fields: foo\)"):
        list(iter_questions(str(tmp_path / "q.jsonl")))
    write_jsonl(tmp_path / "q.jsonl", [{"instruction": "  ", "output": "x"}])
    with pytest.raises(InputError, match=r"q\.jsonl:1: empty question"):
        list(iter_questions(str(tmp_path / "q.jsonl")))


def test_a_torn_last_line_says_how_to_repair_it(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"persona": "ok"}\n{"persona": "cut')
    with pytest.raises(InputError, match=r"p\.jsonl:2: invalid JSON .*last line and has no newline"):
        list(iter_personas(str(tmp_path / "p.jsonl")))
