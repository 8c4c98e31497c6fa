"""MT-Bench's role-play category: ten two-turn questions, each turn graded 1-10 by every judge.

As FastChat's `gen_judgment.py --mode single`: turn 1 is judged with the `single-v1` prompt,
turn 2 with `single-v1-multi-turn` (the whole conversation, focused on the second answer); the
verdict is "[[N]]". The second turn is asked after the first answer exists, so the answers come in
two stages. Question file and judge prompts are read from `--data` (FastChat's `question.jsonl`
and `judge_prompts.jsonl`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencharacter.engine.runner import Task
from opencharacter.eval.common import (
    JUDGEMENTS,
    Conversation,
    EvalRun,
    answer_turns,
    fill,
    guard_same_model,
    load_records,
    summary,
)
from opencharacter.eval.report import write_all
from opencharacter.eval.verdicts import parse_bracket_rating
from opencharacter.io.readers import InputError, iter_rows
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.records import stable_id

SCALE = (1, 10)
SINGLE = "single-v1"
MULTI = "single-v1-multi-turn"
PLACEHOLDERS = {SINGLE: ("question", "answer"), MULTI: ("question_1", "answer_1", "question_2", "answer_2")}


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]

    def judgement_id(self, turn: int, judge: str) -> str:
        return stable_id("mtbench-grade", self.question_id, str(turn), judge)


@dataclass
class MTBench:
    questions: list[Question]
    judge_prompts: dict[str, dict[str, str]]
    source: str


def load_mtbench(data: str | Path, category: str = "roleplay", limit: int | None = None) -> MTBench:
    """FastChat's question.jsonl and judge_prompts.jsonl from a folder; errors name the file and line."""
    root = Path(data).expanduser()
    qfile, pfile = root / "question.jsonl", root / "judge_prompts.jsonl"
    for path in (qfile, pfile):
        if not path.is_file():
            raise InputError(str(path), None, "missing: --data expects FastChat's MT-Bench folder "
                             "(question.jsonl, judge_prompts.jsonl)")
    questions = []
    for line, row in iter_rows(str(qfile)):
        if not isinstance(row, dict) or "turns" not in row or "question_id" not in row:
            raise InputError(str(qfile), line, "expected {question_id, category, turns: [str, ...]}")
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise InputError(str(qfile), line, "turns must be a non-empty list of texts")
        if row.get("category") == category:
            questions.append(Question(str(row["question_id"]), category, tuple(turns[:2])))
    if not questions:
        raise InputError(str(qfile), None, f"no questions in category {category!r}")
    prompts: dict[str, dict[str, str]] = {}
    for line, row in iter_rows(str(pfile)):
        if isinstance(row, dict) and row.get("name") in PLACEHOLDERS:
            for key in ("system_prompt", "prompt_template"):
                if not isinstance(row.get(key), str):
                    raise InputError(str(pfile), line, f"judge prompt {row['name']!r} has no {key}")
            prompts[row["name"]] = row
    for name, names in PLACEHOLDERS.items():
        if name not in prompts:
            raise InputError(str(pfile), None, f"no judge prompt named {name!r}")
        fill(prompts[name]["prompt_template"], dict.fromkeys(names, ""), f"{pfile} ({name})")
    return MTBench(questions[:limit] if limit else questions, prompts, str(root))


@dataclass
class MTBenchConfig:
    model: str
    judges: list[str]
    system: str | None = None
    temperature: float = 0.7
    max_tokens: int = 1024
    judge_temperature: float = 0.0
    judge_max_tokens: int = 2048


def judge_messages(bench: MTBench, q: Question, turn: int, answers: list[str]) -> list[dict[str, str]]:
    prompt = bench.judge_prompts[SINGLE if turn == 1 else MULTI]
    if turn == 1:
        values = {"question": q.turns[0], "answer": answers[0]}
    else:
        values = {"question_1": q.turns[0], "answer_1": answers[0], "question_2": q.turns[1], "answer_2": answers[1]}
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": fill(prompt["prompt_template"], values, bench.source)}]


def aggregate(grades: list[dict[str, Any]], judges: list[str], turns: int) -> dict[str, Any]:
    """Per turn and overall (all turns): mean and std over questions, per judge and averaged."""

    def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = {f"turn {t}": summary([float(r["score"]) for r in rows if r["turn"] == t]) for t in range(1, turns + 1)}
        out["overall"] = summary([float(r["score"]) for r in rows])
        return out

    by_judge = {j: metrics([g for g in grades if g["judge"] == j]) for j in judges}
    grouped: dict[tuple[str, int], list[float]] = defaultdict(list)
    for g in grades:
        if g["judge"] in judges:
            grouped[(g["question_id"], g["turn"])].append(float(g["score"]))
    averaged = [{"question_id": q, "turn": t, "score": sum(v) / len(v)} for (q, t), v in grouped.items()]
    return {"metrics": metrics(averaged), "by_judge": by_judge}


async def run_mtbench(bench: MTBench, cfg: MTBenchConfig, run: EvalRun) -> dict[str, Any] | None:
    out = run.out
    guard_same_model(out, cfg.model)
    turns = max(len(q.turns) for q in bench.questions)
    conversations = {q.question_id: Conversation(f"mtbench-{q.question_id}", q.turns, cfg.system,
                                                 (("question_id", q.question_id),))
                     for q in bench.questions}
    answers = await answer_turns(run, list(conversations.values()), cfg.model, cfg.temperature, cfg.max_tokens)

    def said(q: Question, turn: int) -> str | None:
        record = answers.get(conversations[q.question_id].answer_id(turn))
        return record["answer"] if record else None

    by_grade = {q.judgement_id(t, j): (q, t, j) for q in bench.questions for t in range(1, len(q.turns) + 1)
                for j in cfg.judges}

    def parse_grade(task: Task, completion: Completion) -> dict[str, Any]:
        score = parse_bracket_rating(completion.text, *SCALE)
        q, t, judge = by_grade[task.task_id]
        return {"judgement_id": task.task_id, "question_id": q.question_id, "turn": t, "question": q.turns[t - 1],
                "answer": said(q, t), "score": score, "judge": judge, "rationale": completion.text}

    for judge in cfg.judges:
        tasks = []
        for q in bench.questions:
            for turn in range(1, len(q.turns) + 1):
                found = [said(q, t) for t in range(1, turn + 1)]
                texts = [t for t in found if t is not None]
                if len(texts) < turn:
                    continue  # an answer failed: nothing to grade
                tasks.append(Task(q.judgement_id(turn, judge),
                                  ChatRequest(judge_messages(bench, q, turn, texts), cfg.judge_temperature,
                                              cfg.judge_max_tokens),
                                  {"question_id": q.question_id, "turn": turn, "judge": judge}))
        await run.stage(f"grades:{judge}", f"judge:{judge}", tasks, parse_grade, JUDGEMENTS, "judgement_id")
    if run.dry_run:
        return None

    grades = [r for r in load_records(out / JUDGEMENTS, "judgement_id").values() if r["judgement_id"] in by_grade]
    answer_ids = {c.answer_id(t) for c in conversations.values() for t in range(1, len(c.turns) + 1)}
    failed = run.failed_counts(answer_ids | set(by_grade))
    agg = aggregate(grades, cfg.judges, turns)
    scores = {
        "suite": "mtbench-roleplay", "title": f"MT-Bench ({bench.questions[0].category})", "model": cfg.model,
        "judges": cfg.judges, "scale": list(SCALE), "headline": "overall", **agg,
        "counts": {"questions": len(bench.questions), "turns": len(answer_ids), "answers": len(answers),
                   "judgements": len(grades), "expected_judgements": len(by_grade), "failed": failed,
                   "failures": sum(failed.values())},
        "notes": [
            "Each turn judged alone as in FastChat's single-answer grading: turn 1 with single-v1, turn 2 with "
            "single-v1-multi-turn; the verdict is the last [[N]].",
            "overall: the mean over all graded turns (MT-Bench's score); ± is the population standard deviation "
            "over those turns.",
            "average: each turn's scores averaged over the judges first.",
        ],
    }
    write_all(out, scores)
    return scores
