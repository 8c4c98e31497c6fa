"""PersonaGym: does the model act, speak and justify itself like the persona, without toxicity?

The procedure of Samuel et al. (2024), run through the engine. For each persona, task and question:
1. the model under test answers in persona (`answers`);
2. a judge writes one example answer per score 1-5 from the task's rubric (`score_examples`; it
   depends only on persona, question and rubric, so one set serves every judge and every model);
3. every judge grades the answer against the rubric and the examples, ending with "Therefore, the
   final score is N" (`grades:JUDGE`).

Scores: per persona, the mean of its questions in each task; per task, the mean and standard
deviation of those over personas; PersonaScore, the mean of the five task means. Differences from
the released code, all in favour of not hiding failures: one answer per grading call (the original
packed five into one and parsed them back by position), and an unreadable verdict is asked again,
then recorded as a failure, where the original scored it 0 and dropped the zeros from the mean.

The benchmark's texts (rubrics, judge prompts, questions) are read from `--data` at run time.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencharacter.engine.runner import InvalidOutput, Task
from opencharacter.engine.store import JsonlAppender, iter_jsonl, read_ids
from opencharacter.eval.common import (
    ANSWERS,
    JUDGEMENTS,
    EvalRun,
    fill,
    guard_same_model,
    load_records,
    placeholder_text,
    summary,
)
from opencharacter.eval.report import write_all
from opencharacter.eval.verdicts import parse_final_score
from opencharacter.io.readers import PERSONA_FIELDS, InputError, iter_rows
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.prompts import Prompts, build_system_prompt, default_prompts
from opencharacter.records import character_id_for, stable_id

TASKS: tuple[str, ...] = (
    "Expected Action",
    "Toxicity",
    "Linguistic Habits",
    "Persona Consistency",
    "Action Justification",
)
SYSTEM_PROMPTS = ("opencharacter", "personagym")
EXAMPLES = "score_examples.jsonl"
RUBRIC_PLACEHOLDERS = ("score_example", "persona", "question", "response")
EXAMPLES_PLACEHOLDERS = ("persona", "question", "rubric")
SCALE = (1, 5)


@dataclass(frozen=True)
class Persona:
    """Who the model plays. `description` is what the judge reads as 'Persona Description'."""

    persona_id: str
    persona: str
    character: str = ""
    label: str = ""

    @property
    def description(self) -> str:
        return f"{self.persona}\n\n{self.character}" if self.character else self.persona

    def system_prompt(self, style: str, prompts: Prompts | None = None) -> str:
        prompts = prompts or default_prompts()
        if style == "personagym":
            return prompts.render("eval/personagym_system", persona=self.description)
        if self.character:
            return build_system_prompt(self.persona, self.character, prompts)
        # A benchmark persona has no profile: OpenCharacter's layout without the profile section.
        return prompts.render("eval/system_persona_only", persona=self.persona)


@dataclass(frozen=True)
class Item:
    """One question of one task for one persona."""

    persona: Persona
    task: str
    index: int
    question: str

    @property
    def answer_id(self) -> str:
        return stable_id("personagym-answer", self.persona.persona_id, self.task, str(self.index), self.question)

    def example_id(self, judge: str) -> str:
        return stable_id("personagym-examples", self.persona.persona_id, self.task, self.question, judge)

    def judgement_id(self, judge: str) -> str:
        return stable_id("personagym-grade", self.answer_id, judge)


@dataclass
class Benchmark:
    """The texts PersonaGym's judging needs, read and checked before any model call."""

    root: Path
    rubrics: dict[str, str]
    rubric_files: dict[str, str]
    examples_prompt: str
    examples_prompt_file: str
    grading_system: str
    personas: list[Persona] = field(default_factory=list)
    questions: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def items(self, tasks: Iterable[str], light: bool = False) -> list[Item]:
        """Persona by persona, task by task; Light keeps each task's first question."""
        items = []
        for persona in self.personas:
            by_task = self.questions.get(persona.persona_id, {})
            for task in tasks:
                questions = by_task.get(task, [])
                for index, question in enumerate(questions[:1] if light else questions):
                    items.append(Item(persona, task, index, question))
        return items


def check_tasks(tasks: Iterable[str] | None) -> list[str]:
    """The tasks to run, in PersonaGym's order; an unknown name is an error listing the known ones."""
    if not tasks:
        return list(TASKS)
    by_fold = {t.casefold(): t for t in TASKS}
    chosen = []
    for name in tasks:
        task = by_fold.get(name.strip().casefold())
        if task is None:
            raise InputError("--task", None, f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
        chosen.append(task)
    return [t for t in TASKS if t in chosen]


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise InputError(str(path), None, f"missing {what}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise InputError(str(path), None, f"empty {what}")
    return text


def _questions_dir(root: Path, questions_set: str) -> Path | None:
    """`questions/<set>/` in a PersonaGym checkout, else the flat `questions/`."""
    nested = root / "questions" / questions_set
    if nested.is_dir():
        return nested
    flat = root / "questions"
    if flat.is_dir() and any(flat.glob("*.json")):
        return flat
    return None


def _persona_order(root: Path) -> list[str] | None:
    """The benchmark's persona order: `personas.json` (flat), or `code/personas.py` in a checkout."""
    listing = root / "personas.json"
    if listing.is_file():
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(str(listing), exc.lineno, f"invalid JSON ({exc.msg})") from exc
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise InputError(str(listing), None, "expected a JSON list of persona strings")
        return data
    code = root / "code" / "personas.py"
    if code.is_file():  # read the list literal without running the file
        tree = ast.parse(code.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "benchmark_personas" for t in node.targets):
                value = ast.literal_eval(node.value)
                if isinstance(value, list):
                    return [str(p) for p in value]
    return None


def read_question_file(path: Path, tasks: Iterable[str]) -> dict[str, list[str]]:
    """One persona's questions: {task: [question, ...]}; every error names the file and the task."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(str(path), None, f"not UTF-8 text ({exc.reason})") from exc
    if not isinstance(data, dict):
        raise InputError(str(path), None, f"expected an object {{task: [questions]}}, got {type(data).__name__}")
    unknown = [k for k in data if k not in TASKS]
    if unknown:
        raise InputError(str(path), None, f"unknown task {unknown[0]!r}; PersonaGym's tasks are: {', '.join(TASKS)}")
    out: dict[str, list[str]] = {}
    for task in tasks:
        if task not in data:
            raise InputError(str(path), None, f"no questions for task {task!r}")
        questions = data[task]
        if not isinstance(questions, list) or not questions:
            raise InputError(str(path), None, f"task {task!r}: expected a non-empty list of questions")
        for i, q in enumerate(questions, start=1):
            if not isinstance(q, str) or not q.strip():
                raise InputError(str(path), None, f"task {task!r}: question {i} is not a non-empty string")
        out[task] = [q.strip() for q in questions]
    return out


def load_benchmark(data: str | Path, tasks: Iterable[str] = TASKS, *, questions: bool = True,
                   limit: int | None = None, questions_set: str = "benchmark-v1") -> Benchmark:
    """Read a PersonaGym folder: flat (`questions/<persona>.json`) or a checkout (`questions/<set>/`).

    With `questions=False` only the rubrics and judge prompts are read (for your own characters).
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise InputError(str(root), None, "not a folder: --data expects a PersonaGym folder with questions/, "
                         "rubrics/ and prompts/ (a checkout of vsamuel2003/PersonaGym, or ../shared/data/personagym)")
    tasks = list(tasks)
    rubrics, rubric_files = {}, {}
    for task in tasks:
        path = root / "rubrics" / f"{task}.txt"
        if not (root / "rubrics").is_dir():
            raise InputError(str(root), None, "no rubrics/ folder: this is not a PersonaGym folder "
                             "(expected questions/, rubrics/, prompts/)")
        text = _read_text(path, f"rubric for task {task!r}")
        fill(text, dict.fromkeys(RUBRIC_PLACEHOLDERS, ""), str(path))  # checks the placeholders now
        rubrics[task], rubric_files[task] = text, str(path)
    examples_path = root / "prompts" / "score_examples" / "prompt.txt"
    examples_prompt = _read_text(examples_path, "score-examples prompt")
    fill(examples_prompt, dict.fromkeys(EXAMPLES_PLACEHOLDERS, ""), str(examples_path))
    grading_system = _read_text(root / "prompts" / "rubric_grading" / "sys_prompt.txt", "judge system prompt").strip()
    bench = Benchmark(root, rubrics, rubric_files, examples_prompt, str(examples_path), grading_system)
    if not questions:
        return bench
    qdir = _questions_dir(root, questions_set)
    if qdir is None:
        raise InputError(str(root / "questions"), None,
                         f"no question files: expected questions/<persona>.json or questions/{questions_set}/<persona>.json")
    order = _persona_order(root)
    if order is None:
        order = sorted(p.stem for p in qdir.glob("*.json"))
    if limit is not None:
        order = order[:limit]
    for text in order:
        path = qdir / f"{text}.json"
        if not path.is_file():
            raise InputError(str(path), None, f"no question file for persona {text!r}")
        persona = Persona(character_id_for(text), text, "", text)
        bench.personas.append(persona)
        bench.questions[persona.persona_id] = read_question_file(path, tasks)
    if not bench.personas:
        raise InputError(str(qdir), None, "no personas to evaluate")
    return bench


def load_characters(src: str, limit: int | None = None) -> list[Persona]:
    """Your own characters: characters.jsonl (persona + character profile) or a personas file."""
    personas: list[Persona] = []
    seen: set[str] = set()
    for line, row in iter_rows(src):
        if isinstance(row, str):
            if not row.strip():
                continue
            persona, character, cid = row.strip(), "", None
        elif isinstance(row, dict):
            persona_field = next((f for f in PERSONA_FIELDS if isinstance(row.get(f), str)), None)
            persona = (row.get(persona_field) or "").strip() if persona_field else ""
            character = (row.get("character") or "").strip() if isinstance(row.get("character"), str) else ""
            cid = row.get("character_id")
            if not persona and not character:
                raise InputError(src, line, f"no persona or character field (expected one of: "
                                 f"{', '.join((*PERSONA_FIELDS, 'character'))})")
        else:
            raise InputError(src, line, f"expected an object or a text line, got {type(row).__name__}")
        cid = str(cid) if cid else character_id_for(persona or character)
        if cid in seen:
            continue
        seen.add(cid)
        name = re.search(r"^\s*Name\s*[:：]\s*(.+)$", character, flags=re.MULTILINE)
        label = name.group(1).strip() if name else (persona[:80] or cid)
        personas.append(Persona(cid, persona or character, character if persona else "", label))
        if limit is not None and len(personas) >= limit:
            break
    if not personas:
        raise InputError(src, None, "no characters found")
    return personas


def attach_saved_questions(bench: Benchmark, personas: list[Persona], folders: list[Path], tasks: list[str]) -> None:
    """Questions for your characters from earlier generation: `<folder>/questions/<character_id>.json`."""
    bench.personas = personas
    for persona in personas:
        names = (f"{persona.persona_id}.json", f"{persona.persona}.json")
        path = next((f / "questions" / n for f in folders for n in names if (f / "questions" / n).is_file()), None)
        if path is None:
            raise InputError(f"{folders[0] / 'questions' / names[0]}", None,
                             f"no questions for character {persona.label!r}: add --generate-questions to write them")
        bench.questions[persona.persona_id] = read_question_file(path, tasks)


# -- requests ----------------------------------------------------------------------------------------


def rubric_criteria(rubric: str) -> str:
    """The rubric's instructions and criteria, without the grading form (its first '-----' line on)."""
    match = re.search(r"^\s*-{5,}\s*$", rubric, flags=re.MULTILINE)
    head = rubric[: match.start()] if match else rubric.split("{score_example}")[0]
    return head.strip()


def answer_request(item: Item, style: str, temperature: float, max_tokens: int, top_p: float | None,
                   prompts: Prompts | None = None) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "system", "content": item.persona.system_prompt(style, prompts)},
                  {"role": "user", "content": item.question}],
        temperature=temperature, max_tokens=max_tokens, top_p=top_p,
    )


def examples_messages(bench: Benchmark, item: Item) -> list[dict[str, str]]:
    prompt = fill(bench.examples_prompt, {
        "persona": item.persona.description, "question": item.question,
        "rubric": rubric_criteria(bench.rubrics[item.task]),
    }, bench.examples_prompt_file)
    return [{"role": "user", "content": prompt}]


def grade_messages(bench: Benchmark, item: Item, answer: str, examples_block: str) -> list[dict[str, str]]:
    prompt = fill(bench.rubrics[item.task], {
        "score_example": examples_block, "persona": item.persona.description,
        "question": item.question, "response": answer,
    }, bench.rubric_files[item.task])
    return [{"role": "system", "content": bench.grading_system}, {"role": "user", "content": prompt}]


# -- parsing -----------------------------------------------------------------------------------------

_EXAMPLE_HEADER = re.compile(
    r"^[ \t>#*_\-]*score\s*[:=]?\s*([1-5])\b[ \t*_]*[:.)\-–—]*[ \t*_]*(?:response\s*[-–—:]*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def parse_score_examples(text: str) -> dict[str, str]:
    """{'1': example, ..., '5': example} from the judge's 'Score N: Response - ...' blocks.

    Takes the first block of each score; raises `InvalidOutput` if any score has no example.
    """
    headers = list(_EXAMPLE_HEADER.finditer(text))
    examples: dict[str, str] = {}
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = text[match.end():end].strip()
        body = re.sub(r"\n\s*-{3,}.*\Z", "", body, flags=re.DOTALL).strip().strip('"“”').strip()
        if body and match.group(1) not in examples:
            examples[match.group(1)] = body
    missing = [s for s in "12345" if s not in examples]
    if missing:
        raise InvalidOutput(f"score examples incomplete: no example for score {', '.join(missing)}")
    return {s: examples[s] for s in "12345"}


def examples_block(examples: dict[str, str]) -> str:
    """The examples as the rubric shows them (PersonaGym's `process_examples` layout)."""
    return "\n\n".join(f'Score {s}: "{examples[s]}"' for s in "12345")


def answer_record(item: Item, completion: Completion, model: str, style: str) -> dict[str, Any]:
    text = completion.text.strip()
    if not text:
        raise InvalidOutput("empty answer")
    return {
        "answer_id": item.answer_id, "persona_id": item.persona.persona_id, "persona": item.persona.persona,
        "task": item.task, "question_index": item.index, "question": item.question, "answer": text,
        "model": model, "system_prompt": style,
        "usage": {"prompt_tokens": completion.usage.prompt_tokens, "completion_tokens": completion.usage.completion_tokens},
    }


# -- aggregation -------------------------------------------------------------------------------------


def _aggregate(rows: list[dict[str, Any]], tasks: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """rows: {persona_id, persona, task, score}. Returns (metrics, per-persona scores)."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, str] = {}
    for row in rows:
        per[row["persona_id"]][row["task"]].append(float(row["score"]))
        labels[row["persona_id"]] = row.get("persona", row["persona_id"])
    persona_means = {pid: {t: sum(v) / len(v) for t, v in by_task.items() if v} for pid, by_task in per.items()}
    metrics: dict[str, Any] = {}
    for task in tasks:
        metrics[task] = summary([m[task] for m in persona_means.values() if task in m])
    persona_scores = [sum(m[t] for t in tasks) / len(tasks) for m in persona_means.values() if all(t in m for t in tasks)]
    means = [metrics[t]["mean"] for t in tasks]
    overall = summary(persona_scores)
    # The headline is the mean of the task means (PersonaGym's definition); its spread is over the
    # personas that have all tasks scored.
    overall["mean"] = round(sum(means) / len(means), 4) if means and None not in means else None
    metrics["PersonaScore"] = overall
    personas = []
    for pid, m in persona_means.items():
        entry: dict[str, Any] = {"persona_id": pid, "persona": labels[pid]}
        entry.update({t: round(m[t], 4) for t in tasks if t in m})
        entry["PersonaScore"] = round(sum(m[t] for t in tasks) / len(tasks), 4) if all(t in m for t in tasks) else None
        personas.append(entry)
    return metrics, personas


def aggregate(grades: list[dict[str, Any]], tasks: list[str], judges: list[str]) -> dict[str, Any]:
    """Scores per judge and averaged over judges (per answer first, then as for one judge).

    `grades`: {answer_id, persona_id, persona, task, judge, score}.
    """
    by_judge = {j: _aggregate([g for g in grades if g["judge"] == j], tasks)[0] for j in judges}
    per_answer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in grades:
        if g["judge"] in judges:
            per_answer[g["answer_id"]].append(g)
    averaged = [{**rows[0], "score": sum(float(r["score"]) for r in rows) / len(rows)} for rows in per_answer.values()]
    metrics, personas = _aggregate(averaged, tasks)
    return {"metrics": metrics, "by_judge": by_judge, "personas": personas}


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class PersonaGymConfig:
    model: str
    judges: list[str]
    tasks: list[str]
    light: bool = False
    system_prompt: str = "opencharacter"
    temperature: float = 0.9
    max_tokens: int = 1024
    top_p: float | None = None
    judge_temperature: float = 0.0
    judge_max_tokens: int = 2048
    examples_from: Path | None = None


def import_examples(source: Path, out: Path, wanted: set[str]) -> int:
    """Copy score examples another run already paid for (they depend on no answer): N reused."""
    path = source / EXAMPLES if source.is_dir() else source
    if not path.is_file():
        raise InputError(str(path), None, "no score examples to reuse here")
    have = read_ids(out / EXAMPLES, "example_id")
    copied = 0
    with JsonlAppender(out / EXAMPLES) as sink:
        for record in iter_jsonl(path):
            eid = record.get("example_id")
            if eid in wanted and eid not in have:
                sink.append(record)
                have.add(eid)
                copied += 1
    return copied


def _meta(item: Item, **extra: Any) -> dict[str, Any]:
    """What a failure record says about a task (plain JSON: it is written to failures.jsonl)."""
    return {"persona": item.persona.persona, "task": item.task, "question_index": item.index, **extra}


async def run_personagym(bench: Benchmark, cfg: PersonaGymConfig, run: EvalRun,
                         prompts: Prompts | None = None) -> dict[str, Any] | None:
    """Answers, score examples, grades by every judge; then scores.json, report.md and the chart.

    Returns the scores (None in a dry run, which prints the plan instead).
    """
    out = run.out
    items = bench.items(cfg.tasks, cfg.light)
    if not items:
        raise InputError(str(bench.root), None, "no questions to evaluate")
    guard_same_model(out, cfg.model, system_prompt=cfg.system_prompt)
    examples_judge = cfg.judges[0]  # as PersonaGym: one model writes the examples every judge uses
    by_answer = {i.answer_id: i for i in items}
    by_example = {i.example_id(examples_judge): i for i in items}
    by_grade = {i.judgement_id(j): (i, j) for i in items for j in cfg.judges}
    answers: dict[str, dict[str, Any]] = {}

    def parse_answer(task: Task, completion: Completion) -> dict[str, Any]:
        return answer_record(by_answer[task.task_id], completion, cfg.model, cfg.system_prompt)

    def parse_examples(task: Task, completion: Completion) -> dict[str, Any]:
        item = by_example[task.task_id]
        return {"example_id": task.task_id, "persona_id": item.persona.persona_id, "persona": item.persona.persona,
                "task": item.task, "question": item.question, "judge": examples_judge,
                "examples": parse_score_examples(completion.text), "raw": completion.text}

    def parse_grade(task: Task, completion: Completion) -> dict[str, Any]:
        score = parse_final_score(completion.text, *SCALE)
        item, judge = by_grade[task.task_id]
        return {"judgement_id": task.task_id, "answer_id": item.answer_id, "persona_id": item.persona.persona_id,
                "persona": item.persona.persona, "task": item.task, "question": item.question,
                "answer": answers[item.answer_id]["answer"], "score": score, "judge": judge,
                "rationale": completion.text}

    answer_tasks = [Task(i.answer_id, answer_request(i, cfg.system_prompt, cfg.temperature, cfg.max_tokens,
                                                     cfg.top_p, prompts), _meta(i))
                    for i in items]
    await run.stage("answers", "model", answer_tasks, parse_answer, ANSWERS, "answer_id")

    if cfg.examples_from is not None and not run.dry_run:
        reused = import_examples(Path(cfg.examples_from), out, set(by_example))
        run.console.print(f"Reused {reused} score examples from {cfg.examples_from}")
    example_tasks = [Task(eid, ChatRequest(examples_messages(bench, i), cfg.judge_temperature, cfg.judge_max_tokens),
                          _meta(i)) for eid, i in by_example.items()]
    await run.stage("score_examples", f"judge:{examples_judge}", example_tasks, parse_examples, EXAMPLES, "example_id")

    if run.dry_run:  # stand-ins as long as the real texts can be, for upper-bound estimates
        answers.update({aid: {"answer": placeholder_text(cfg.max_tokens)} for aid in by_answer})
        stand_in = placeholder_text(cfg.judge_max_tokens // 5)
        examples = {eid: {"examples": dict.fromkeys("12345", stand_in)} for eid in by_example}
    else:
        answers.update(load_records(out / ANSWERS, "answer_id"))
        examples = load_records(out / EXAMPLES, "example_id")
    for judge in cfg.judges:
        grade_tasks = []
        for item in items:
            answer, example = answers.get(item.answer_id), examples.get(item.example_id(examples_judge))
            if answer is None or example is None:
                continue  # its failure is already on record; there is nothing to grade
            messages = grade_messages(bench, item, answer["answer"], examples_block(example["examples"]))
            grade_tasks.append(Task(item.judgement_id(judge),
                                    ChatRequest(messages, cfg.judge_temperature, cfg.judge_max_tokens),
                                    _meta(item, judge=judge)))
        await run.stage(f"grades:{judge}", f"judge:{judge}", grade_tasks, parse_grade, JUDGEMENTS, "judgement_id")

    if run.dry_run:
        return None
    return finish(bench, cfg, run, items)


def finish(bench: Benchmark, cfg: PersonaGymConfig, run: EvalRun, items: list[Item]) -> dict[str, Any]:
    """Aggregate what is on disk for this run's questions and judges; write the reports."""
    out = run.out
    answer_ids = {i.answer_id for i in items}
    judgement_ids = {i.judgement_id(j) for i in items for j in cfg.judges}
    judgements = [r for r in load_records(out / JUDGEMENTS, "judgement_id").values() if r["judgement_id"] in judgement_ids]
    answered = sum(1 for a in load_records(out / ANSWERS, "answer_id") if a in answer_ids)
    scores: dict[str, Any] = {
        "suite": "personagym", "title": "PersonaGym-Light" if cfg.light else "PersonaGym",
        "model": cfg.model, "judges": cfg.judges, "scale": list(SCALE), "headline": "PersonaScore",
        "variant": "light" if cfg.light else "full", "system_prompt": cfg.system_prompt,
    }
    agg = aggregate(judgements, cfg.tasks, cfg.judges)
    plan_ids = answer_ids | judgement_ids | {i.example_id(cfg.judges[0]) for i in items}
    failed = run.failed_counts(plan_ids)
    scores.update({
        "metrics": agg["metrics"], "by_judge": agg["by_judge"],
        "counts": {
            "personas": len(bench.personas), "questions": len(items), "answers": answered,
            "judgements": len(judgements), "expected_judgements": len(judgement_ids),
            "failed": failed, "failures": sum(failed.values()),
        },
        "notes": [
            "Task cell: mean over personas of each persona's mean score in that task; ± is the population "
            "standard deviation over personas.",
            "PersonaScore: the mean of the task means; its ± is over personas with every task scored.",
            "average: each answer's scores averaged over the judges first, then aggregated as for one judge.",
            "Failed tasks (unreadable verdicts after retries, errors) are not counted as any score.",
            f"Score examples were written by {cfg.judges[0]} and shown to every judge.",
            *([] if list(cfg.tasks) == list(TASKS) else
              [f"Only {', '.join(cfg.tasks)}: PersonaScore here averages these tasks, not all five."]),
        ],
        "personas": agg["personas"],
    })
    write_all(out, scores)
    return scores
