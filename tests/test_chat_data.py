"""load_chat_samples: every input shape, and a clear error naming file and line for every bad one."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencharacter.io.chat_data import ChatSample, count_chat_samples, detect_format, load_chat_samples
from opencharacter.io.readers import InputError
from opencharacter.prompts import build_system_prompt
from opencharacter.records import (
    Character,
    Dialogue,
    Profile,
    character_id_for,
    dialogue_id_for,
    question_id_for,
)

PERSONAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "personahub" / "personas.jsonl"
FALLBACK_PERSONAS = [
    "A heavy metal musician who loves boxing.",
    "A WWII veteran who didn't finish high school.",
    "A novelist with an interest in history and a love for dogs.",
]
NAMES = ["Elena Vasquez", "Marcus Chen", "Elena Vasquez"]
QUESTIONS = [
    ("How do I boil an egg?", "lima"),
    ("Write a haiku about autumn.", "alpaca"),
    ("What is the capital of France?", "alpaca"),
]


def real_personas(n: int) -> list[str]:
    if not PERSONAS.exists():
        return FALLBACK_PERSONAS[:n]
    with PERSONAS.open(encoding="utf-8") as f:
        return [json.loads(line)["persona"] for line in islice(f, n)]


def make_profile(name: str, i: int) -> Profile:
    return Profile(
        name=name, age=30 + i, gender="Female" if i % 2 == 0 else "Male", race="Hispanic",
        born_place="Seville, Spain", appearance="Tall, with a scar over one eyebrow.",
        general_experience="Grew up in a family of musicians and toured for a decade.",
        personality="Blunt, warm, quick to laugh.",
    )


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_run(run: Path, n_characters: int = 3, strategies: tuple[str, ...] = ("generate",)) -> tuple[list[Character], list[Dialogue]]:
    """A run folder as the synthesis stages write it: characters.jsonl, dialogues.jsonl."""
    run.mkdir(parents=True, exist_ok=True)
    characters = []
    for i, persona in enumerate(real_personas(n_characters)):
        profile = make_profile(NAMES[i % len(NAMES)], i)
        characters.append(Character(
            character_id=character_id_for(persona), persona=persona, character=profile.to_text(),
            profile=profile, source="personas.jsonl", model="test-model",
        ))
    dialogues = []
    for c in characters:
        system = build_system_prompt(c.persona, c.character)
        for strategy in strategies:
            for question, qsource in QUESTIONS:
                qid = question_id_for(question)
                answer = f"({c.profile.name if c.profile else '?'}, {strategy}) Here is my answer to: {question}"
                dialogues.append(Dialogue(
                    dialogue_id=dialogue_id_for(c.character_id, qid, strategy), character_id=c.character_id,
                    question_id=qid, question=question, question_source=qsource, character_answer=answer,
                    strategy=strategy,  # type: ignore[arg-type]
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": question},
                              {"role": "assistant", "content": answer}],
                    model="test-model",
                ))
    write_jsonl(run / "characters.jsonl", [c.model_dump(mode="json") for c in characters])
    write_jsonl(run / "dialogues.jsonl", [d.model_dump(mode="json") for d in dialogues])
    return characters, dialogues


def make_release(folder: Path) -> tuple[list[Character], list[Dialogue]]:
    """The released layout: synthetic_character.jsonl + synthetic_dialogue.jsonl, no messages."""
    characters, dialogues = make_run(folder / "_run")
    write_jsonl(folder / "synthetic_character.jsonl",
                [{"character_id": c.character_id, "persona": c.persona, "character": c.character} for c in characters])
    write_jsonl(folder / "synthetic_dialogue.jsonl", [
        {"character_id": d.character_id, "question": d.question, "question_source": d.question_source,
         "character_answer": d.character_answer} for d in dialogues
    ])
    return characters, dialogues


def test_run_folder_and_dialogues_file(tmp_path: Path) -> None:
    _, dialogues = make_run(tmp_path / "run")
    for source in (tmp_path / "run", tmp_path / "run" / "dialogues.jsonl", str(tmp_path / "run")):
        samples = list(load_chat_samples(source))
        assert [s.messages for s in samples] == [d.messages for d in dialogues]
        assert [s.sample_id for s in samples] == [d.dialogue_id for d in dialogues]
        assert [s.character_id for s in samples] == [d.character_id for d in dialogues]
        assert samples[0].line == 1 and samples[0].source.endswith("dialogues.jsonl")
        assert samples[0].system == dialogues[0].messages[0]["content"]
    assert count_chat_samples(tmp_path / "run") == len(dialogues)


def test_released_files_join_with_system_prompt(tmp_path: Path) -> None:
    characters, dialogues = make_release(tmp_path)
    samples = list(load_chat_samples(tmp_path / "synthetic_dialogue.jsonl"))  # characters found beside it
    assert [s.messages for s in samples] == [d.messages for d in dialogues]
    by_id = {c.character_id: c for c in characters}
    first = samples[0]
    assert first.messages[0]["content"] == build_system_prompt(by_id[first.character_id].persona, by_id[first.character_id].character)
    assert first.messages[0]["content"].startswith("You are an AI character with the following Persona.")
    # Same samples when the release folder itself is given, or the characters file explicitly.
    assert [s.messages for s in load_chat_samples(tmp_path)] == [s.messages for s in samples]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "synthetic_character.jsonl").rename(moved / "chars.jsonl")
    explicit = list(load_chat_samples(tmp_path / "synthetic_dialogue.jsonl", characters=moved / "chars.jsonl"))
    assert [s.messages for s in explicit] == [s.messages for s in samples]
    assert len({s.sample_id for s in explicit}) == len(explicit)


def test_released_without_characters_file_is_a_clear_error(tmp_path: Path) -> None:
    make_release(tmp_path)
    (tmp_path / "synthetic_character.jsonl").unlink()
    with pytest.raises(InputError, match=r"need their characters file.*--characters"):
        list(load_chat_samples(tmp_path / "synthetic_dialogue.jsonl"))
    with pytest.raises(InputError, match="characters file not found"):
        load_chat_samples(tmp_path / "synthetic_dialogue.jsonl", characters=tmp_path / "missing.jsonl")


def test_released_unknown_character_id_names_file_and_line(tmp_path: Path) -> None:
    make_release(tmp_path)
    path = tmp_path / "synthetic_dialogue.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["character_id"] = "deadbeefdeadbeef"
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"synthetic_dialogue.jsonl:2: unknown character_id 'deadbeefdeadbeef'"):
        list(load_chat_samples(path))


def test_dialogue_without_messages_is_rebuilt_from_characters(tmp_path: Path) -> None:
    _, dialogues = make_run(tmp_path / "run")
    rows = [{**d.model_dump(mode="json"), "messages": []} for d in dialogues]
    write_jsonl(tmp_path / "run" / "dialogues.jsonl", rows)
    assert [s.messages for s in load_chat_samples(tmp_path / "run")] == [d.messages for d in dialogues]
    assert [s.sample_id for s in load_chat_samples(tmp_path / "run")] == [d.dialogue_id for d in dialogues]


def test_sharegpt_openai_lima_json_and_parquet(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be Rex."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Later."}]
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo."},
                                  {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Later."}],
                "system": "Be Rex."}
    inline_system = {"conversations": [{"from": "system", "value": "Be Rex."}, *sharegpt["conversations"]]}
    write_jsonl(tmp_path / "sg.jsonl", [sharegpt, inline_system])
    assert [s.messages for s in load_chat_samples(tmp_path / "sg.jsonl")] == [messages, messages]

    write_jsonl(tmp_path / "openai.jsonl", [{"messages": messages}])
    (oa,) = load_chat_samples(tmp_path / "openai.jsonl")
    assert oa.messages == messages and oa.character_id is None and len(oa.sample_id) == 16
    (again,) = load_chat_samples(write_jsonl(tmp_path / "copy.jsonl", [{"messages": messages}]))
    assert again.sample_id == oa.sample_id  # content-derived id: stable across files

    write_jsonl(tmp_path / "lima.jsonl", [{"conversations": ["Hi", "Yo.", "Bye", "Later."]}])
    assert next(load_chat_samples(tmp_path / "lima.jsonl")).messages == messages[1:]

    (tmp_path / "list.json").write_text(json.dumps([{"messages": messages}]), encoding="utf-8")
    assert next(load_chat_samples(tmp_path / "list.json")).messages == messages

    pq.write_table(pa.Table.from_pylist([{"messages": messages, "sample_id": "s1", "character_id": "c1"}]),
                   tmp_path / "data.parquet")
    (pqs,) = load_chat_samples(tmp_path / "data.parquet")
    assert pqs == ChatSample(messages, "s1", "c1", str(tmp_path / "data.parquet"), 1)


def test_detect_format() -> None:
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"conversations": ["a", "b"]}) == "lima"
    assert detect_format({"character_id": "c", "question": "q", "character_answer": "a"}) == "released"
    assert detect_format({"instruction": "x"}) is None
    assert detect_format("text") is None


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]}


@pytest.mark.parametrize(("bad", "message"), [
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}, r":2: no assistant turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "S"},
                   {"role": "assistant", "content": "Yo"}]}, r":2: message 2: a system message may only come first"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}]}, r":2: message 2: unsupported role 'tool'"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, r":2: message 2 \(assistant\): empty content"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ["x"]}]}, r":2: message 2 \(assistant\): content must be a string"),
    ({"messages": [{"role": "user"}]}, r":2: message 1 needs 'role' and 'content'"),
    ({"messages": "Hi"}, r":2: 'messages' must be a list"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, r":2: missing field 'messages' \(the file is in messages format, detected from line 1\)"),
    ({"messages": []}, r":2: empty conversation"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, bad])
    samples = load_chat_samples(path)
    assert next(samples).messages == GOOD["messages"]  # streaming: the good first row comes out first
    with pytest.raises(InputError, match="data.jsonl" + message):
        next(samples)


def test_bad_sharegpt_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sg.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "observation", "value": "x"}]}])
    with pytest.raises(InputError, match=r"sg.jsonl:1: turn 2: unsupported speaker 'observation'"):
        list(load_chat_samples(path))
    path = write_jsonl(tmp_path / "sg.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}]}])
    with pytest.raises(InputError, match=r"sg.jsonl:1: no assistant turn"):
        list(load_chat_samples(path))


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "torn.jsonl").write_text(json.dumps(GOOD) + "\n" + '{"messages": [{"role": "us', encoding="utf-8")
    with pytest.raises(InputError, match=r"torn.jsonl:2: invalid JSON"):
        list(load_chat_samples(tmp_path / "torn.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty.jsonl: no chat samples"):
        list(load_chat_samples(tmp_path / "empty.jsonl"))
    write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Hi", "output": "Yo"}])
    with pytest.raises(InputError, match=r"alpaca.jsonl:1: unrecognised chat data \(fields: instruction, output\)"):
        list(load_chat_samples(tmp_path / "alpaca.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"unsupported file type '.csv'"):
        load_chat_samples(tmp_path / "data.csv")
    with pytest.raises(InputError, match=r"no such file or folder"):
        load_chat_samples(tmp_path / "runs" / "missing")  # owner/name-like paths never reach the Hub
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(InputError, match=r"emptyrun: folder has no dialogues.jsonl"):
        load_chat_samples(tmp_path / "emptyrun")


def test_bad_characters_file(tmp_path: Path) -> None:
    make_release(tmp_path)
    chars = tmp_path / "synthetic_character.jsonl"
    lines = chars.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[2])
    del row["persona"]
    lines[2] = json.dumps(row)
    chars.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"synthetic_character.jsonl:3: missing or empty field 'persona'"):
        list(load_chat_samples(tmp_path / "synthetic_dialogue.jsonl"))
