"""Build the profiles and dialogues stages from their inputs.

Building a plan reads every input once, so malformed data stops the command before any model
call and before a run folder exists; the counts from that pass size the progress bar.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from pathlib import Path

from opencharacter.io.readers import PersonaRow, iter_personas, iter_questions
from opencharacter.pipelines import dialogues, profiles
from opencharacter.pipelines.stage import StagePlan
from opencharacter.prompts import Prompts
from opencharacter.records import PROFILE_FIELDS, Character, DialogueStrategy


def _persona_stream(src: str, limit: int | None, sample: int | None, seed: int, counter: profiles.DedupeCounter,
                    config: str | None, split: str) -> Iterator[PersonaRow]:
    rows = profiles.unique_personas(iter_personas(src, config=config, split=split), counter, limit)
    if sample is None:
        return rows
    # A seeded reservoir sample (memory: the sample only), kept in input order.
    rng = random.Random(seed)
    reservoir = heapq.nsmallest(sample, ((rng.random(), i, row) for i, row in enumerate(rows)))
    return iter(row for _, _, row in sorted(reservoir, key=lambda item: item[1]))


def profiles_plan(src: str, prompts: Prompts, *, model_name: str, temperature: float, max_tokens: int,
                  limit: int | None = None, sample: int | None = None, seed: int = 0,
                  config: str | None = None, split: str = "train") -> StagePlan:
    counter = profiles.DedupeCounter()
    total = sum(1 for _ in _persona_stream(src, limit, sample, seed, counter, config, split))

    def tasks() -> Iterator:
        rows = _persona_stream(src, limit, sample, seed, profiles.DedupeCounter(), config, split)
        return profiles.build_tasks(rows, prompts, temperature, max_tokens)

    return StagePlan(
        name=profiles.STAGE, results_file=profiles.RESULTS_FILE, id_field=profiles.ID_FIELD, tasks=tasks,
        parse=profiles.make_parser(model_name), total=total,
        notes={"personas": src, "personas_read": counter.seen, "duplicates_dropped": counter.duplicates,
               "limit": limit, "sample": sample},
    )


def dialogues_plan(questions_src: str, characters: list[Character], strategy: DialogueStrategy, prompts: Prompts, *,
                   model_name: str, temperature: float, max_tokens: int, per_question: int = 3, seed: int = 0,
                   config: str | None = None, split: str = "train", run_dir: Path | None = None) -> StagePlan:
    """The dialogues stage; `run_dir` holds dialogues already written, which keep their pairs."""
    counter = dialogues.QuestionCounter()
    n_questions = sum(1 for _ in dialogues.usable_questions(iter_questions(questions_src, config=config, split=split), strategy, counter))
    if len(characters) < per_question:
        raise ValueError(f"--characters-per-question {per_question} needs at least {per_question} characters; there are {len(characters)}")
    existing = dialogues.existing_pairs(run_dir / dialogues.RESULTS_FILE, strategy) if run_dir else {}

    def tasks() -> Iterator:
        questions = dialogues.usable_questions(iter_questions(questions_src, config=config, split=split), strategy,
                                               dialogues.QuestionCounter())
        return dialogues.build_tasks(questions, characters, strategy, prompts, per_question=per_question, seed=seed,
                                     temperature=temperature, max_tokens=max_tokens, existing=existing)

    return StagePlan(
        name=dialogues.STAGE, results_file=dialogues.RESULTS_FILE, id_field=dialogues.ID_FIELD, tasks=tasks,
        parse=dialogues.make_parser(characters, strategy, prompts, model_name), total=n_questions * per_question,
        notes={"questions": questions_src, "questions_read": counter.seen, "duplicates_dropped": counter.duplicates,
               "without_answer": counter.without_answer, "questions_used": n_questions,
               "characters": len(characters), "characters_per_question": per_question,
               "strategy": strategy.value, "seed": seed},
    )


# A written profile is ~1,600 characters in the labelled layout; dry runs add this for placeholders.
PROFILE_TOKENS_ESTIMATE = 400


def placeholder_characters(plan: StagePlan) -> list[Character]:
    """Stand-ins for characters not yet written, so `synth --dry-run` can size the dialogues stage."""
    text = "\n".join(f"{label}: <written by the profiles stage>" for _, label in PROFILE_FIELDS)
    return [Character(character_id=task.task_id, persona=task.meta["persona"], character=text) for task in plan.tasks()]


def existing_characters(run_dir: Path) -> list[Character] | None:
    path = run_dir / profiles.RESULTS_FILE
    return dialogues.load_characters(path) if path.exists() else None
