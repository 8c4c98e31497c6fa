"""RoleBench: answers compared with reference answers by ROUGE-L F1 (RoleLLM, Wang et al. 2023).

No judge: the model answers each question in role, then every answer is scored against the
references with Google's `rouge-score` package. Two numbers, because RoleBench items may carry
several references: against the first reference (the usual report) and the best over all of them.
Text with CJK characters is split per character (rouge-score's own tokenizer drops non-Latin text,
which would score every Chinese answer 0).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencharacter.engine.runner import InvalidOutput, Task
from opencharacter.eval.common import ANSWERS, EvalRun, guard_same_model, load_records, summary
from opencharacter.eval.report import write_all
from opencharacter.io.readers import InputError, iter_rows
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.prompts import Prompts, build_system_prompt, default_prompts
from opencharacter.records import stable_id

SCORES_FILE = "rouge.jsonl"
SYSTEM_PROMPTS = ("rolellm", "opencharacter")
FIRST, BEST = "ROUGE-L (first ref)", "ROUGE-L (best ref)"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@dataclass(frozen=True)
class Item:
    line: int
    role: str
    question: str
    references: tuple[str, ...]

    @property
    def answer_id(self) -> str:
        return stable_id("rolebench-answer", str(self.line), self.role, self.question)


def load_rolebench(src: str, limit: int | None = None) -> list[Item]:
    """RoleBench lines {"role", "question", "generated": [references]}; errors name file and line."""
    items = []
    for line, row in iter_rows(src):
        if not isinstance(row, dict):
            raise InputError(src, line, "expected a JSON object {role, question, generated}")
        role, question, refs = row.get("role"), row.get("question"), row.get("generated")
        if not isinstance(role, str) or not role.strip():
            raise InputError(src, line, "no role")
        if not isinstance(question, str) or not question.strip():
            raise InputError(src, line, "no question")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise InputError(src, line, "generated must be a non-empty list of reference answers")
        items.append(Item(line, role.strip(), question.strip(), tuple(refs)))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise InputError(src, None, "no items")
    return items


def load_profiles(src: str) -> dict[str, str]:
    """role -> description, from a JSON object or JSONL lines {role, description|profile|character}."""
    path = Path(src).expanduser()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(src, None, "no such file") from exc
        except json.JSONDecodeError as exc:
            raise InputError(src, exc.lineno, f"invalid JSON ({exc.msg})") from exc
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    profiles = {}
    for line, row in iter_rows(src):
        text = next((row.get(k) for k in ("description", "profile", "character", "desc") if isinstance(row, dict)
                     and isinstance(row.get(k), str)), None)
        if not isinstance(row, dict) or not isinstance(row.get("role"), str) or text is None:
            raise InputError(src, line, "expected {role, description}")
        profiles[row["role"]] = text
    return profiles


def system_prompt(style: str, role: str, description: str, prompts: Prompts | None = None) -> str:
    prompts = prompts or default_prompts()
    if style == "rolellm":
        return prompts.render("eval/rolebench_system", role=role, description=description)
    if description:  # OpenCharacter's layout: the role as persona, its description as the profile
        return build_system_prompt(role, description, prompts)
    return prompts.render("eval/system_persona_only", persona=role)


class _Tokenizer:
    """rouge-score's tokenizer for Latin text; one token per CJK character plus Latin words otherwise."""

    def __init__(self) -> None:
        from rouge_score import tokenize

        self._latin = tokenize.tokenize

    def tokenize(self, text: str) -> list[str]:
        if _CJK.search(text):
            return re.findall(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[a-z0-9]+",
                              text.lower())
        return self._latin(text, None)


def rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer as rs
    except ImportError as exc:
        raise InputError("rouge-score", None, "RoleBench needs the eval extra: pip install 'opencharacter[eval]'") from exc
    return rs.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(scorer: Any, answer: str, references: tuple[str, ...]) -> tuple[float, float]:
    """ROUGE-L F1 against the first reference, and the best over all references."""
    scores = [scorer.score(ref, answer)["rougeL"].fmeasure for ref in references]
    return scores[0], max(scores)


@dataclass
class RoleBenchConfig:
    model: str
    system_prompt: str = "rolellm"
    temperature: float = 0.7
    max_tokens: int = 512


async def run_rolebench(items: list[Item], profiles: dict[str, str], cfg: RoleBenchConfig,
                        run: EvalRun) -> dict[str, Any] | None:
    out = run.out
    scorer = rouge_scorer()  # fail on a missing extra before any model call
    guard_same_model(out, cfg.model, system_prompt=cfg.system_prompt)
    by_id = {i.answer_id: i for i in items}

    def parse(task: Task, completion: Completion) -> dict[str, Any]:
        text = completion.text.strip()
        if not text:
            raise InvalidOutput("empty answer")
        item = by_id[task.task_id]
        return {"answer_id": task.task_id, "line": item.line, "role": item.role, "question": item.question,
                "answer": text, "model": cfg.model, "system_prompt": cfg.system_prompt}

    tasks = [Task(i.answer_id, ChatRequest(
        [{"role": "system", "content": system_prompt(cfg.system_prompt, i.role, profiles.get(i.role, ""))},
         {"role": "user", "content": i.question}], cfg.temperature, cfg.max_tokens), {"role": i.role, "line": i.line})
        for i in items]
    await run.stage("answers", "model", tasks, parse, ANSWERS, "answer_id")
    if run.dry_run:
        return None

    answers = load_records(out / ANSWERS, "answer_id")
    rows = []
    for item in items:
        answer = answers.get(item.answer_id)
        if answer is None:
            continue
        first, best = rouge_l(scorer, answer["answer"], item.references)
        rows.append({"answer_id": item.answer_id, "role": item.role, "question": item.question,
                     "answer": answer["answer"], "rougeL_first": round(first, 4), "rougeL_best": round(best, 4)})
    tmp = out / (SCORES_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out / SCORES_FILE)
    by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_role[r["role"]].append(r)
    failed = run.failed_counts(set(by_id))
    scores = {
        "suite": "rolebench", "title": "RoleBench", "model": cfg.model, "judges": [], "scale": [0, 1],
        "headline": FIRST, "system_prompt": cfg.system_prompt,
        "metrics": {FIRST: summary([r["rougeL_first"] for r in rows]), BEST: summary([r["rougeL_best"] for r in rows])},
        "by_judge": {},
        "counts": {"roles": len({i.role for i in items}), "questions": len(items), "answers": len(rows),
                   "failed": failed, "failures": sum(failed.values())},
        "roles": {role: {FIRST: summary([r["rougeL_first"] for r in rs])["mean"],
                         BEST: summary([r["rougeL_best"] for r in rs])["mean"], "n": len(rs)}
                  for role, rs in sorted(by_role.items())},
        "notes": [
            "ROUGE-L F1 (rouge-score's LCS, no stemming), mean over answered questions; ± is the population "
            "standard deviation over questions.",
            "first ref: against the first reference answer; best ref: the best over all references.",
            "CJK text is scored per character.",
        ],
    }
    write_all(out, scores, digits=3)
    return scores

