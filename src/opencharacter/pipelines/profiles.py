"""Profiles stage: each persona → a character profile with the paper's eight fields.

The model is asked for JSON (with a JSON schema where the server supports it); an answer in the
paper's labelled layout (`Name: ...`) is accepted too, so small local models that ignore the
schema still yield valid profiles. Anything else is sampled again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from opencharacter.engine.runner import InvalidOutput, Task
from opencharacter.io.readers import PersonaRow
from opencharacter.jsontext import extract_json_object
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.prompts import Prompts
from opencharacter.records import Character, Profile, character_id_for

STAGE = "profiles"
RESULTS_FILE = "characters.jsonl"
ID_FIELD = "character_id"


@dataclass
class DedupeCounter:
    """Personas seen and duplicates dropped (after normalising case and whitespace)."""

    seen: int = 0
    duplicates: int = 0


def unique_personas(rows: Iterable[PersonaRow], counter: DedupeCounter, limit: int | None = None) -> Iterator[PersonaRow]:
    seen: set[str] = set()
    kept = 0
    for row in rows:
        if limit is not None and kept >= limit:
            return
        counter.seen += 1
        key = character_id_for(row.persona)
        if key in seen:
            counter.duplicates += 1
            continue
        seen.add(key)
        kept += 1
        yield row


def build_tasks(rows: Iterable[PersonaRow], prompts: Prompts, temperature: float, max_tokens: int) -> Iterator[Task]:
    schema = Profile.json_schema_for_llm()
    for row in rows:
        messages = [{"role": "user", "content": prompts.render("profile", persona=row.persona)}]
        yield Task(
            task_id=character_id_for(row.persona),
            request=ChatRequest(messages=messages, temperature=temperature, max_tokens=max_tokens,
                                json_schema=schema, schema_name="character_profile"),
            meta={"persona": row.persona, "source": row.source, "line": row.line},
        )


def parse_profile(text: str) -> Profile:
    """A Profile from JSON (bare or fenced) or from the labelled layout; InvalidOutput if neither."""
    json_error: str
    try:
        data = extract_json_object(text)
        # Accept "Born Place"/"born place" style keys from models that echo the labels.
        data = {k.strip().lower().replace(" ", "_"): v for k, v in data.items()}
        return Profile.model_validate(data)
    except ValueError as exc:  # includes pydantic's ValidationError
        json_error = _short(exc)
    try:
        return Profile.from_text(text)
    except ValidationError as exc:
        raise InvalidOutput(f"not a valid profile: {json_error}; labelled layout: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:4])
    return str(exc)


def make_parser(model_name: str):
    def parse(task: Task, completion: Completion) -> dict:
        profile = parse_profile(completion.text)
        record = Character(
            character_id=task.task_id,
            persona=task.meta["persona"],
            character=profile.to_text(),
            profile=profile,
            source=task.meta["source"],
            model=completion.model or model_name,
        )
        return record.model_dump(mode="json")

    return parse
