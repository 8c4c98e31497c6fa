"""Dialogues stage: (character, question) → an in-character answer.

`generate` (OpenCharacter-G) writes a new answer from the profile; `rewrite` (OpenCharacter-R)
re-voices the question's original answer, keeping its knowledge. The record's `messages` hold
the training sample exactly as a trained model will be served: system prompt, question, answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from opencharacter.engine.runner import InvalidOutput, Task
from opencharacter.io.readers import InputError, iter_run_records
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.pipelines.pairing import pair_with_characters
from opencharacter.prompts import Prompts, build_system_prompt
from opencharacter.records import Character, DialogueStrategy, Question, dialogue_id_for

STAGE = "dialogues"
RESULTS_FILE = "dialogues.jsonl"
ID_FIELD = "dialogue_id"


def load_characters(path: Path) -> list[Character]:
    """All characters of a `characters.jsonl` (they are the small side: ~2 KB each)."""
    if not path.exists():
        raise InputError(str(path), None, "no such characters file (run `opencharacter profiles` first)")
    characters: list[Character] = []
    seen: set[str] = set()
    for line_no, character in iter_run_records(path, Character, "character"):
        if not character.character.strip():
            raise InputError(str(path), line_no, "empty character profile")
        if character.character_id not in seen:
            seen.add(character.character_id)
            characters.append(character)
    return characters


@dataclass
class QuestionCounter:
    seen: int = 0
    duplicates: int = 0
    without_answer: int = 0  # rewrite needs an original answer; these are reported, not silently dropped


def usable_questions(questions: Iterable[Question], strategy: DialogueStrategy, counter: QuestionCounter) -> Iterator[Question]:
    seen: set[str] = set()
    for question in questions:
        counter.seen += 1
        if question.question_id in seen:
            counter.duplicates += 1
            continue
        seen.add(question.question_id)
        if strategy is DialogueStrategy.REWRITE and not question.answer:
            counter.without_answer += 1
            continue
        yield question


def existing_pairs(path: Path, strategy: DialogueStrategy) -> dict[str, set[str]]:
    """Question id → ids of the characters that already answered it with `strategy` in `path`.

    Read from each line's prefix (records start with dialogue_id, character_id, question_id), so a
    300k-line file costs seconds, not a full JSON parse.
    """
    pairs: dict[str, set[str]] = {}
    if not path.exists():
        return pairs
    prefix = re.compile(r'^\{"dialogue_id":\s*"([^"]+)",\s*"character_id":\s*"([^"]+)",\s*"question_id":\s*"([^"]+)"')
    with path.open(encoding="utf-8") as f:
        for line in f:
            match = prefix.match(line)
            if match and match.group(1) == dialogue_id_for(match.group(2), match.group(3), strategy.value):
                pairs.setdefault(match.group(3), set()).add(match.group(2))
    return pairs


def build_tasks(
    questions: Iterable[Question],
    characters: list[Character],
    strategy: DialogueStrategy,
    prompts: Prompts,
    *,
    per_question: int,
    seed: int,
    temperature: float,
    max_tokens: int,
    existing: dict[str, set[str]] | None = None,
) -> Iterator[Task]:
    """Tasks for every (question, character) pair; `existing` pairs count towards each question's k.

    With the same characters a resume deals the same pairs, so `existing` changes nothing. When the
    characters changed (say profiles that failed were written on a second run), the new deal would
    differ for most questions: a question keeps the characters that already answered it, and only
    its missing slots are filled from the deal, instead of paying for a second set of dialogues.
    """
    by_id = {c.character_id: c for c in characters}
    existing = existing or {}
    template = strategy.value
    for question, dealt in pair_with_characters(questions, list(by_id), per_question, seed):
        have = [c for c in existing.get(question.question_id, ()) if c in by_id]
        fill = [c for c in dealt if c not in have][: max(0, per_question - len(have))]
        for character_id in (dealt if not have else sorted(have) + fill):
            character = by_id[character_id]
            prompt = prompts.render(
                template, persona=character.persona, character=character.character,
                question=question.question, answer=question.answer or "",
            )
            yield Task(
                task_id=dialogue_id_for(character_id, question.question_id, strategy.value),
                request=ChatRequest(messages=[{"role": "user", "content": prompt}], temperature=temperature, max_tokens=max_tokens),
                meta={"character_id": character_id, "question_id": question.question_id,
                      "question": question.question, "question_source": question.source},
            )


def make_parser(characters: list[Character], strategy: DialogueStrategy, prompts: Prompts, model_name: str):
    by_id = {c.character_id: c for c in characters}
    system_prompts: dict[str, str] = {}  # rendered once per character, not once per dialogue

    def parse(task: Task, completion: Completion) -> dict:
        answer = clean_answer(completion.text)
        if not answer:
            raise InvalidOutput("empty answer")
        character_id = task.meta["character_id"]
        system = system_prompts.get(character_id)
        if system is None:
            character = by_id[character_id]
            system = system_prompts[character_id] = build_system_prompt(character.persona, character.character, prompts)
        # A plain dict in the field order of `Dialogue` (the id first, for fast resume): this runs
        # once per record, and the values are ours, so a pydantic round trip would only cost time.
        return {
            "dialogue_id": task.task_id,
            "character_id": character_id,
            "question_id": task.meta["question_id"],
            "question": task.meta["question"],
            "question_source": task.meta["question_source"],
            "character_answer": answer,
            "strategy": strategy.value,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": task.meta["question"]},
                {"role": "assistant", "content": answer},
            ],
            "model": completion.model or model_name,
            "usage": {"prompt_tokens": completion.usage.prompt_tokens,
                      "completion_tokens": completion.usage.completion_tokens},
        }

    return parse


def clean_answer(text: str) -> str:
    """Strip what models wrap replies in despite being asked not to: whitespace and one pair of quotes."""
    answer = text.strip()
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'" and answer.count(answer[0]) == 2:
        answer = answer[1:-1].strip()
    return answer
