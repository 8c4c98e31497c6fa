"""Ditto-style role-play judging (WikiRoleEval, Lu et al. 2024): identity, knowledge, rejection.

The model plays each record's character (its `system` profile) through the record's user turns, in
order. Then, per turn, every judge:
- identity: picks the character among the record's candidates from that exchange alone
  (accuracy: the pick is the character);
- knowledge: scores 1-10 how correct the answer is, with the turn's evidence as hints;
- rejection: says whether the answer declines the question (accuracy against the record's labels,
  1 = the character cannot know this and should decline).

Records are Ditto's: {"system", "prompts", "role_consist_cands", "rejection_labels" (or
"rejection labels"), "evidence"}, with the character's name in `label`/`role`/`name`/`meta.label`
(else the one candidate named in the profile) and the summary in `summary`/`meta.summary`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from opencharacter.engine.runner import Task
from opencharacter.eval.common import (
    JUDGEMENTS,
    Conversation,
    EvalRun,
    answer_turns,
    guard_same_model,
    load_records,
    summary,
)
from opencharacter.eval.report import write_all
from opencharacter.eval.verdicts import parse_binary, parse_choice, parse_last_line_score
from opencharacter.io.readers import InputError, iter_rows
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.prompts import Prompts, default_prompts
from opencharacter.records import stable_id

METRICS = ("identity", "knowledge", "rejection")
LABELS = {"identity": "identity accuracy", "knowledge": "knowledge (1-10)", "rejection": "rejection accuracy"}


@dataclass(frozen=True)
class Record:
    line: int
    label: str
    system: str
    prompts: tuple[str, ...]
    candidates: tuple[str, ...]
    rejection: tuple[int, ...]
    evidence: tuple[str, ...]
    summary: str

    @property
    def conversation_id(self) -> str:
        return stable_id("roleplay-judge", str(self.line), self.label, self.system)

    def judgement_id(self, turn: int, metric: str, judge: str) -> str:
        return stable_id("roleplay-judgement", self.conversation_id, str(turn), metric, judge)


def _evidence_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(f"- {v}" if not str(v).lstrip().startswith("-") else str(v) for v in value)
    return "" if value is None else str(value)


def _label(row: dict[str, Any], candidates: list[str], src: str, line: int) -> str:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    for value in (row.get("label"), row.get("role"), row.get("name"), meta.get("label")):
        if isinstance(value, str) and value.strip():
            if value.strip() not in candidates:
                raise InputError(src, line, f"the character {value.strip()!r} is not among role_consist_cands")
            return value.strip()
    named = [c for c in candidates if c and c.casefold() in str(row.get("system", "")).casefold()]
    if len(named) == 1:
        return named[0]
    raise InputError(src, line, "which candidate is the character? add a `label` field (Ditto keeps it in meta.label)")


def load_records_file(src: str, limit: int | None = None) -> list[Record]:
    """Read and check every record before any model call; errors name the file, line and field."""
    records = []
    for line, row in iter_rows(src):
        if not isinstance(row, dict):
            raise InputError(src, line, "expected a JSON object")
        system, prompts = row.get("system"), row.get("prompts")
        if not isinstance(system, str) or not system.strip():
            raise InputError(src, line, "no system profile (`system`)")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError(src, line, "`prompts` must be a non-empty list of user turns")
        candidates = row.get("role_consist_cands")
        if not isinstance(candidates, list) or len(candidates) < 2 or not all(isinstance(c, str) for c in candidates):
            raise InputError(src, line, "`role_consist_cands` must list at least two candidate names")
        labels = row.get("rejection_labels", row.get("rejection labels"))
        if not isinstance(labels, list) or len(labels) != len(prompts) or any(v not in (0, 1) for v in labels):
            raise InputError(src, line, f"`rejection_labels` must hold one 0/1 per prompt ({len(prompts)})")
        evidence = row.get("evidence") or [""] * len(prompts)
        if not isinstance(evidence, list) or len(evidence) != len(prompts):
            raise InputError(src, line, f"`evidence` must hold one entry per prompt ({len(prompts)})")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        label = _label(row, candidates, src, line)
        about = next((v for v in (row.get("summary"), meta.get("summary"), meta.get("description"))
                      if isinstance(v, str) and v.strip()), system)
        records.append(Record(line, label, system.strip(), tuple(prompts), tuple(candidates), tuple(int(v) for v in labels),
                              tuple(_evidence_text(e) for e in evidence), about.strip()))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise InputError(src, None, "no records")
    return records


@dataclass
class RoleplayJudgeConfig:
    model: str
    judges: list[str]
    temperature: float = 0.7
    max_tokens: int = 1024
    judge_temperature: float = 0.0
    judge_max_tokens: int = 2048


def judge_prompt(metric: str, record: Record, turn: int, answer: str, prompts: Prompts | None = None) -> str:
    prompts = prompts or default_prompts()
    query = record.prompts[turn - 1]
    if metric == "identity":
        return prompts.render("eval/roleplay_identity", query=query, answer=answer, candidates=record.candidates)
    if metric == "knowledge":
        return prompts.render("eval/roleplay_knowledge", label=record.label, summary=record.summary, query=query,
                              answer=answer, evidence=record.evidence[turn - 1] or "(none)")
    return prompts.render("eval/roleplay_rejection", label=record.label, query=query, answer=answer)


def aggregate(grades: list[dict[str, Any]], judges: list[str]) -> dict[str, Any]:
    """Each metric's mean (accuracy for identity and rejection) over turns, per judge and averaged."""

    def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {LABELS[m]: summary([float(r["score"]) for r in rows if r["metric"] == m]) for m in METRICS}

    by_judge = {j: metrics([g for g in grades if g["judge"] == j]) for j in judges}
    grouped: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for g in grades:
        if g["judge"] in judges:
            grouped[(g["conversation_id"], g["turn"], g["metric"])].append(float(g["score"]))
    averaged = [{"metric": m, "score": sum(v) / len(v)} for (_, _, m), v in grouped.items()]
    return {"metrics": metrics(averaged), "by_judge": by_judge}


async def run_roleplay_judge(records: list[Record], cfg: RoleplayJudgeConfig, run: EvalRun,
                             prompts: Prompts | None = None) -> dict[str, Any] | None:
    out = run.out
    guard_same_model(out, cfg.model)
    conversations = {r.conversation_id: Conversation(r.conversation_id, r.prompts, r.system, (("label", r.label),))
                     for r in records}
    answers = await answer_turns(run, list(conversations.values()), cfg.model, cfg.temperature, cfg.max_tokens)
    by_grade = {r.judgement_id(t, m, j): (r, t, m, j) for r in records for t in range(1, len(r.prompts) + 1)
                for m in METRICS for j in cfg.judges}

    def parse(task: Task, completion: Completion) -> dict[str, Any]:
        record, turn, metric, judge = by_grade[task.task_id]
        extra: dict[str, Any]
        if metric == "identity":
            choice = parse_choice(completion.text, record.candidates)
            score, extra = float(choice == record.label), {"choice": choice, "expected": record.label}
        elif metric == "rejection":
            declined = parse_binary(completion.text)
            expected = record.rejection[turn - 1]
            score, extra = float(declined == expected), {"declined": declined, "expected": expected}
        else:
            score, extra = parse_last_line_score(completion.text, 1, 10), {}
        answer = answers[conversations[record.conversation_id].answer_id(turn)]["answer"]
        return {"judgement_id": task.task_id, "conversation_id": record.conversation_id, "label": record.label,
                "turn": turn, "metric": metric, "question": record.prompts[turn - 1], "answer": answer,
                "score": score, **extra, "judge": judge, "rationale": completion.text}

    for judge in cfg.judges:
        tasks = []
        for record in records:
            conv = conversations[record.conversation_id]
            for turn in range(1, len(record.prompts) + 1):
                answer = answers.get(conv.answer_id(turn))
                if answer is None:
                    continue  # the answer failed: nothing to judge
                for metric in METRICS:
                    content = judge_prompt(metric, record, turn, answer["answer"], prompts)
                    tasks.append(Task(record.judgement_id(turn, metric, judge),
                                      ChatRequest([{"role": "user", "content": content}], cfg.judge_temperature,
                                                  cfg.judge_max_tokens),
                                      {"label": record.label, "line": record.line, "turn": turn, "metric": metric,
                                       "judge": judge}))
        await run.stage(f"judge:{judge}", f"judge:{judge}", tasks, parse, JUDGEMENTS, "judgement_id")
    if run.dry_run:
        return None

    grades = [g for g in load_records(out / JUDGEMENTS, "judgement_id").values() if g["judgement_id"] in by_grade]
    answer_ids = {c.answer_id(t) for c in conversations.values() for t in range(1, len(c.turns) + 1)}
    failed = run.failed_counts(answer_ids | set(by_grade))
    scores = {
        "suite": "roleplay-judge", "title": "Role-play judge (Ditto WikiRoleEval style)", "model": cfg.model,
        "judges": cfg.judges, "scale": None, "headline": LABELS["identity"], **aggregate(grades, cfg.judges),
        "counts": {"records": len(records), "questions": len(answer_ids), "answers": len(answers),
                   "judgements": len(grades), "expected_judgements": len(by_grade), "failed": failed,
                   "failures": sum(failed.values())},
        "notes": [
            "Scales differ: accuracies are 0-1, knowledge is 1-10.",
            "identity accuracy: share of turns where the judge picked the character among the candidates "
            "from that exchange alone.",
            "knowledge: 1-10 score of each answer's correctness, with the turn's evidence as hints.",
            "rejection accuracy: share of turns where the judge's 'declined' matches the record's label.",
            "± is the population standard deviation over turns; average: each turn's verdicts averaged over "
            "the judges first.",
        ],
    }
    write_all(out, scores)
    return scores
