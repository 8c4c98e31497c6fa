"""Ditto self-alignment (Lu et al., 2024): the seed model simulates queries, then answers them in character.

Two stages on the same engine as `profiles` and `dialogues`:

1. `ditto_queries` — one call per character: from the profile, the model writes queries a user might put
   to that character (`role`) and queries the character could not know or answer (`out_of_scope`), as a
   JSON list → `ditto_queries.jsonl`, one record per character.
2. `ditto_dialogues` — one call per query: the model answers as the character, reading the profile as a
   reading-comprehension text, and declines out-of-scope queries *in character* → Dialogue records with
   `strategy: "ditto"` appended to the run's `dialogues.jsonl`, beside any generate/rewrite records
   (resume is by `dialogue_id`, which includes the strategy, so neither recipe disturbs the other).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError

from opencharacter.engine.runner import InvalidOutput, Task
from opencharacter.io.readers import iter_run_records
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.pipelines import dialogues
from opencharacter.pipelines.stage import StagePlan
from opencharacter.prompts import Prompts
from opencharacter.records import (
    Character,
    DialogueStrategy,
    Text,
    TokenUsage,
    dialogue_id_for,
    normalize_text,
    question_id_for,
    stable_id,
)

QUERIES_STAGE = "ditto_queries"
QUERIES_FILE = "ditto_queries.jsonl"
QUERIES_ID_FIELD = "character_id"
DIALOGUES_STAGE = "ditto_dialogues"
DIALOGUES_FILE = dialogues.RESULTS_FILE  # shared with generate/rewrite: one training set per run
DIALOGUES_ID_FIELD = dialogues.ID_FIELD
STRATEGY = DialogueStrategy.DITTO

# Dry runs size answers to queries not yet simulated with this many prompt tokens per query.
QUERY_TOKENS_ESTIMATE = 30
_PLACEHOLDER_QUERY = "<simulated by the ditto_queries stage>"


class QueryKind(str, Enum):
    ROLE = "role"  # answerable from the character's knowledge
    OUT_OF_SCOPE = "out_of_scope"  # beyond what the character could know: to be declined in character


def _kind(value: Any) -> Any:
    # Models write "out-of-scope", "Out of scope", "ROLE"...: one spelling before the enum check.
    return re.sub(r"[\s\-]+", "_", value.strip().lower()) if isinstance(value, str) else value


class SimulatedQuery(BaseModel):
    """One query as the model writes it: `{"kind": "role" | "out_of_scope", "query": "..."}`."""

    kind: Annotated[QueryKind, BeforeValidator(_kind)]
    query: Text = Field(validation_alias=AliasChoices("query", "question"))


class StoredQuery(SimulatedQuery):
    question_id: str


class QueryRecord(BaseModel):
    """One line of `ditto_queries.jsonl`: a character's simulated queries."""

    character_id: str
    queries: list[StoredQuery]
    contrast_character_id: str | None = None
    model: str = ""
    usage: TokenUsage = Field(default_factory=TokenUsage)


_QUERY_LIST = TypeAdapter(list[SimulatedQuery])
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_decoder = json.JSONDecoder()


def query_split(character_id: str, total: int, share: float, seed: int) -> tuple[int, int]:
    """(role, out_of_scope) counts for one character.

    The fractional part of `total * share` is rounded up or down at random, seeded per character, so the
    run's share is right on average (plain rounding of 4 x 0.33 would always give 1, a share of 0.25)
    and stays the same on every resume.
    """
    exact = round(total * share, 9)  # 10 x 0.3 is 3.0000000000000004 in floating point
    out_of_scope = int(exact)
    if random.Random(stable_id("ditto-split", str(seed), character_id)).random() < exact - out_of_scope:
        out_of_scope += 1
    return total - out_of_scope, out_of_scope


def contrast_for(index: int, characters: list[Character], seed: int) -> Character | None:
    """Another character, seeded per character: whose life suggests questions `characters[index]` could not answer.

    Ditto draws unanswerable queries from other characters' knowledge; without a contrast the model
    tends to ask every character about the same few things (smartphones, quantum physics).
    """
    if len(characters) < 2:
        return None
    rng = random.Random(stable_id("ditto-contrast", str(seed), characters[index].character_id))
    other = rng.randrange(len(characters) - 1)  # O(1) per character: 20k characters stay cheap
    return characters[other + 1 if other >= index else other]


def queries_plan(characters: list[Character], prompts: Prompts, *, model_name: str, per_character: int,
                 out_of_scope_share: float, seed: int, temperature: float, max_tokens: int) -> StagePlan:
    """Stage 1: one request per character for its JSON list of queries."""
    if per_character < 1:
        raise ValueError("--queries-per-character must be at least 1")
    if not 0.0 <= out_of_scope_share <= 1.0:
        raise ValueError("--out-of-scope-share must be between 0 and 1")

    def tasks() -> Iterator[Task]:
        for index, character in enumerate(characters):
            n_role, n_out = query_split(character.character_id, per_character, out_of_scope_share, seed)
            contrast = contrast_for(index, characters, seed) if n_out else None
            prompt = prompts.render(
                "ditto_queries", persona=character.persona, character=character.character,
                n_role=n_role, n_out_of_scope=n_out, total=per_character,
                contrast_persona=contrast.persona if contrast else "",
            )
            yield Task(
                task_id=character.character_id,
                request=ChatRequest(messages=[{"role": "user", "content": prompt}], temperature=temperature,
                                    max_tokens=max_tokens),
                meta={"character_id": character.character_id, "n_role": n_role, "n_out_of_scope": n_out,
                      "contrast_character_id": contrast.character_id if contrast else None},
            )

    def parse(task: Task, completion: Completion) -> dict[str, Any]:
        queries = parse_queries(completion.text, task.meta["n_role"], task.meta["n_out_of_scope"])
        return {  # the id first, for fast resume
            "character_id": task.task_id,
            "queries": [{"question_id": question_id_for(q.query), "kind": q.kind.value, "query": q.query}
                        for q in queries],
            "contrast_character_id": task.meta["contrast_character_id"],
            "model": completion.model or model_name,
            "usage": {"prompt_tokens": completion.usage.prompt_tokens,
                      "completion_tokens": completion.usage.completion_tokens},
        }

    return StagePlan(
        name=QUERIES_STAGE, results_file=QUERIES_FILE, id_field=QUERIES_ID_FIELD, tasks=tasks, parse=parse,
        total=len(characters),
        notes={"characters": len(characters), "queries_per_character": per_character,
               "out_of_scope_share": out_of_scope_share, "seed": seed},
    )


def parse_queries(text: str, n_role: int, n_out_of_scope: int) -> list[SimulatedQuery]:
    """The model's queries, checked: exactly the counts asked for, none empty, none repeated."""
    try:
        items = extract_json_list(text)
    except ValueError as exc:
        raise InvalidOutput(str(exc)) from None
    try:
        queries = _QUERY_LIST.validate_python(items)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:4])
        raise InvalidOutput(f"not a list of {{kind, query}} objects: {problems}") from None
    got_role = sum(q.kind is QueryKind.ROLE for q in queries)
    got_out = len(queries) - got_role
    if (got_role, got_out) != (n_role, n_out_of_scope):
        raise InvalidOutput(f"asked for {n_role} role and {n_out_of_scope} out_of_scope queries, "
                            f"got {got_role} and {got_out}")
    # Repeats would share a dialogue_id, so one answer would silently stand for two queries.
    if len({normalize_text(q.query) for q in queries}) < len(queries):
        raise InvalidOutput("the same query appears twice")
    return queries


def extract_json_list(text: str) -> list[Any]:
    """The first JSON list in a model's answer (bare, fenced or in prose), or `{"queries": [...]}`."""
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        stripped = candidate.strip()
        for match in re.finditer(r"[\[{]", stripped):
            try:
                value, _ = _decoder.raw_decode(stripped, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and isinstance(value.get("queries"), list):
                return value["queries"]
            if isinstance(value, list):
                return value
    if "[" in text and "]" not in text[text.index("["):]:
        raise ValueError("the JSON list is cut off (no closing bracket)")
    raise ValueError("no JSON list in the answer")


def load_query_records(path: Path) -> dict[str, QueryRecord]:
    """Query records by character id; a record that does not fit stops the command before any call."""
    records: dict[str, QueryRecord] = {}
    if not path.exists():
        return records
    for _, record in iter_run_records(path, QueryRecord, "ditto query"):
        records.setdefault(record.character_id, record)
    return records


def placeholder_queries(characters: list[Character], *, per_character: int, out_of_scope_share: float,
                        seed: int) -> dict[str, QueryRecord]:
    """Stand-ins for queries not yet simulated, so a dry run can size the answer stage."""
    records = {}
    for character in characters:
        n_role, n_out = query_split(character.character_id, per_character, out_of_scope_share, seed)
        kinds = [QueryKind.ROLE] * n_role + [QueryKind.OUT_OF_SCOPE] * n_out
        queries = [StoredQuery(kind=kind, query=f"{_PLACEHOLDER_QUERY} {i}", question_id=f"placeholder-{i}")
                   for i, kind in enumerate(kinds)]
        records[character.character_id] = QueryRecord(character_id=character.character_id, queries=queries)
    return records


def dialogues_plan(characters: list[Character], query_records: dict[str, QueryRecord], prompts: Prompts, *,
                   model_name: str, temperature: float, max_tokens: int,
                   placeholders: int = 0) -> StagePlan:
    """Stage 2: one request per simulated query, for the character's answer.

    Characters without a query record (their ditto_queries task failed) are counted and skipped; the
    next run retries their queries first. `placeholders` (for `notes`) says how many characters'
    queries are dry-run stand-ins.
    """
    pairs = [(c, query_records[c.character_id]) for c in characters if c.character_id in query_records]
    total = sum(len(record.queries) for _, record in pairs)

    def tasks() -> Iterator[Task]:
        for character, record in pairs:
            for query in record.queries:
                prompt = prompts.render(
                    "ditto_answer", persona=character.persona, character=character.character,
                    query=query.query, out_of_scope=query.kind is QueryKind.OUT_OF_SCOPE,
                )
                yield Task(
                    task_id=dialogue_id_for(character.character_id, query.question_id, STRATEGY.value),
                    request=ChatRequest(messages=[{"role": "user", "content": prompt}], temperature=temperature,
                                        max_tokens=max_tokens),
                    meta={"character_id": character.character_id, "question_id": query.question_id,
                          "question": query.query, "question_source": f"ditto:{query.kind.value}"},
                )

    return StagePlan(
        name=DIALOGUES_STAGE, results_file=DIALOGUES_FILE, id_field=DIALOGUES_ID_FIELD, tasks=tasks,
        parse=dialogues.make_parser(characters, STRATEGY, prompts, model_name), total=total,
        notes={"characters": len(characters), "characters_with_queries": len(pairs),
               "characters_without_queries": len(characters) - len(pairs), "queries": total,
               "out_of_scope_queries": sum(q.kind is QueryKind.OUT_OF_SCOPE for _, r in pairs for q in r.queries),
               **({"placeholder_characters": placeholders} if placeholders else {})},
    )


