"""What a run produced: counts, failures, lengths, and how varied the synthetic characters are.

Synthetic profiles drift toward a few favourite names and lengths; these figures make that visible
before anyone trains on the data. Files are streamed; what is kept is four integers per dialogue
(its lengths, for exact percentiles) and the character ids, so the released 306k dialogues fit in
a few tens of MB.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from opencharacter.io.chat_data import CHARACTER_FILES, RUN_DIALOGUES, find_characters_file, resolve_dialogues
from opencharacter.io.readers import InputError, iter_rows

TOP_NAMES = 10
_NAME_LINE = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?name(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
# Which results file holds the tasks of a stage, to drop failures of tasks that later succeeded.
_STAGE_RESULTS = {"profiles": "characters", "dialogues": "dialogues", "ditto": "dialogues"}
NONE = "(none)"


def summarize(values: array | list[int]) -> dict[str, float | int | None]:
    """min, p50, p90, max, mean. Percentiles are nearest-rank: always a value that occurs."""
    if not values:
        return {"count": 0, "min": None, "p50": None, "p90": None, "max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p * n) - 1)]

    return {"count": n, "min": ordered[0], "p50": rank(0.5), "p90": rank(0.9), "max": ordered[-1],
            "mean": round(sum(ordered) / n, 2)}


class _Lengths:
    def __init__(self) -> None:
        self.chars = array("q")
        self.words = array("q")

    def add(self, text: str) -> None:
        self.chars.append(len(text))
        self.words.append(len(text.split()))

    def summary(self) -> dict[str, Any]:
        return {"chars": summarize(self.chars), "words": summarize(self.words)}


def character_name(row: dict[str, Any]) -> str | None:
    """profile.name, else the `Name:` line of the labelled character text."""
    profile = row.get("profile")
    if isinstance(profile, dict) and isinstance(profile.get("name"), str) and profile["name"].strip():
        return profile["name"].strip()
    text = row.get("character")
    if isinstance(text, str):
        match = _NAME_LINE.search(text)
        if match:
            return match.group(1).strip().strip("*").strip() or None
    return None


def _top(counter: Counter[str], spelling: dict[str, str], total: int) -> dict[str, Any]:
    return {
        "distinct": len(counter),
        "top": [
            {"name": spelling[key], "count": count, "share": round(count / total, 4) if total else 0.0}
            for key, count in counter.most_common(TOP_NAMES)
        ],
    }


def _rows(path: Path) -> Any:
    src = str(path)
    for line, row in iter_rows(src):
        if not isinstance(row, dict):
            raise InputError(src, line, f"expected a JSON object, got {type(row).__name__}")
        yield line, row


def _first(messages: Any, role: str, last: bool = False) -> str | None:
    if not isinstance(messages, list):
        return None
    picked = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == role]
    text = picked[-1] if last and picked else picked[0] if picked else None
    return text if isinstance(text, str) else None


def run_files(run: str | Path) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """(characters, dialogues, failures, run.json) of a run folder — or of a single dialogues file."""
    path = Path(run).expanduser()
    if not path.exists():
        raise InputError(str(run), None, "no such run folder or file")
    if path.is_dir():
        found = [path / n for n in RUN_DIALOGUES if (path / n).is_file()]
        dialogues = found[0] if found else None
        chars = [path / n for n in CHARACTER_FILES if (path / n).is_file()]
        characters = chars[0] if chars else None
        if dialogues is None and characters is None:
            raise InputError(str(path), None, "not a run folder: no characters.jsonl or dialogues.jsonl in it")
        failures, manifest = path / "failures.jsonl", path / "run.json"
    else:
        dialogues = resolve_dialogues(path)
        characters = find_characters_file(dialogues)
        failures, manifest = path.parent / "failures.jsonl", path.parent / "run.json"
    return characters, dialogues, failures if failures.is_file() else None, manifest if manifest.is_file() else None


def compute_stats(run: str | Path) -> dict[str, Any]:
    """Every figure `opencharacter stats` shows, as plain JSON-ready data."""
    characters_path, dialogues_path, failures_path, manifest_path = run_files(run)
    # Failures are few: read them first, then note which of their tasks the results show succeeded.
    latest_failures = _latest_failures(failures_path)
    failed_ids = {task_id for _, task_id in latest_failures}
    succeeded: dict[str, set[str]] = {"characters": set(), "dialogues": set()}

    character_ids: set[str] = set()
    names: Counter[str] = Counter()
    first_names: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    unnamed = 0
    profile_lengths = _Lengths()
    if characters_path:
        for line, row in _rows(characters_path):
            cid = row.get("character_id")
            if not isinstance(cid, str) or not cid:
                raise InputError(str(characters_path), line, "missing field 'character_id'")
            if cid in character_ids:
                continue  # a character written twice (re-run) is still one character
            character_ids.add(cid)
            if cid in failed_ids:
                succeeded["characters"].add(cid)
            text = row.get("character")
            if isinstance(text, str):
                profile_lengths.add(text)
            name = character_name(row)
            if name is None:
                unnamed += 1
                continue
            key = name.casefold()
            spelling.setdefault(key, name)
            names[key] += 1
            first = name.split()[0]
            spelling.setdefault("first:" + first.casefold(), first)
            first_names["first:" + first.casefold()] += 1

    per_character: Counter[str] = Counter()
    strategies: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    answers, questions = _Lengths(), _Lengths()
    dialogues = unknown_character = 0
    if dialogues_path:
        for line, row in _rows(dialogues_path):
            messages = row.get("messages")
            question = row.get("question") or _first(messages, "user")
            answer = row.get("character_answer") or _first(messages, "assistant", last=True)
            if not isinstance(question, str) or not isinstance(answer, str):
                raise InputError(str(dialogues_path), line, "a dialogue needs question and character_answer (or messages)")
            dialogues += 1
            if row.get("dialogue_id") in failed_ids:
                succeeded["dialogues"].add(row["dialogue_id"])
            questions.add(question)
            answers.add(answer)
            strategies[str(row.get("strategy") or NONE)] += 1
            sources[str(row.get("question_source") or NONE)] += 1
            cid = row.get("character_id")
            if isinstance(cid, str) and cid:
                per_character[cid] += 1
                if characters_path and cid not in character_ids:
                    unknown_character += 1

    # Characters with no dialogue count as 0: a stage that skipped them should show.
    counts_per_character = array("q", per_character.values())
    without = [cid for cid in character_ids if cid not in per_character] if dialogues_path else []
    counts_per_character.extend(0 for _ in without)

    return {
        "run": str(run),
        "files": {k: str(v) if v else None for k, v in (
            ("characters", characters_path), ("dialogues", dialogues_path),
            ("failures", failures_path), ("manifest", manifest_path))},
        "counts": {
            "characters": len(character_ids),
            "dialogues": dialogues,
            "characters_without_dialogues": len(without),
            "dialogues_with_unknown_character": unknown_character,
        },
        "strategies": dict(strategies.most_common()),
        "question_sources": dict(sources.most_common()),
        "failures": _still_failed(latest_failures, succeeded),
        "lengths": {"answer": answers.summary(), "question": questions.summary(), "profile": profile_lengths.summary()},
        "dialogues_per_character": summarize(counts_per_character),
        "names": {**_top(names, spelling, len(character_ids)), "unnamed": unnamed},
        "first_names": _top(first_names, spelling, len(character_ids)),
        "manifest": _manifest(manifest_path),
    }


def _latest_failures(path: Path | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest failure of each (stage, task_id): retries append, the last word counts."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    if path:
        for line, row in _rows(path):
            stage, task_id = row.get("stage"), row.get("task_id")
            if not isinstance(stage, str) or not isinstance(task_id, str):
                raise InputError(str(path), line, "a failure needs 'stage' and 'task_id'")
            latest[(stage, task_id)] = row
    return latest


def _still_failed(latest: dict[tuple[str, str], dict[str, Any]], done: dict[str, set[str]]) -> dict[str, Any]:
    """Count failures of tasks that did not succeed later (by reason and by stage)."""
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    for (stage, task_id), row in latest.items():
        results = _STAGE_RESULTS.get(stage)
        succeeded = task_id in done[results] if results else any(task_id in ids for ids in done.values())
        if succeeded:
            continue
        by_reason[str(row.get("reason") or NONE)] += 1
        by_stage[stage] += 1
    return {"total": sum(by_stage.values()), "by_reason": dict(by_reason.most_common()), "by_stage": dict(by_stage.most_common())}


def _manifest(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, f"invalid JSON ({exc.msg})") from exc
    if not isinstance(manifest, dict):
        raise InputError(str(path), None, "expected a JSON object")
    stages = manifest.get("stages") if isinstance(manifest.get("stages"), dict) else {}
    return {
        "totals": manifest.get("totals", {}),
        "stages": {
            name: {k: s.get(k) for k in ("status", "total", "succeeded", "failed", "failures_by_reason", "cost_usd")}
            for name, s in stages.items() if isinstance(s, dict)
        },
    }


def render_stats(stats: dict[str, Any], console: Any) -> None:
    """Rich tables of `compute_stats`' figures."""
    from rich.table import Table

    counts = stats["counts"]
    overview = Table(title=f"Run {stats['run']}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_row("characters", f"{counts['characters']:,}")
    overview.add_row("dialogues", f"{counts['dialogues']:,}")
    if counts["characters_without_dialogues"]:
        overview.add_row("characters without dialogues", f"{counts['characters_without_dialogues']:,}")
    if counts["dialogues_with_unknown_character"]:
        overview.add_row("[red]dialogues with unknown character_id[/]", f"{counts['dialogues_with_unknown_character']:,}")
    failures = stats["failures"]
    overview.add_row("failed tasks (still)", f"{failures['total']:,}")
    totals = (stats.get("manifest") or {}).get("totals") or {}
    if totals:
        overview.add_row("requests", f"{totals.get('requests', 0):,}")
        overview.add_row("tokens (prompt / completion)", f"{totals.get('prompt_tokens', 0):,} / {totals.get('completion_tokens', 0):,}")
        overview.add_row("cost (USD)", f"{totals.get('cost_usd', 0):.4f}")
    console.print(overview)

    total = counts["dialogues"] or 1
    for title, key, data in (("Strategies", "strategy", stats["strategies"]),
                             ("Question sources", "source", stats["question_sources"])):
        if data:
            console.print(_count_table(title, key, data, total))
    if failures["total"]:
        console.print(_count_table("Failures by reason", "reason", failures["by_reason"], failures["total"]))
        console.print(_count_table("Failures by stage", "stage", failures["by_stage"], failures["total"]))

    lengths = Table(title="Lengths", title_justify="left")
    for col in ("text", "unit", "min", "p50", "p90", "max", "mean"):
        lengths.add_column(col, justify="left" if col in ("text", "unit") else "right")
    for text, by_unit in stats["lengths"].items():
        for unit, s in by_unit.items():
            if s["count"]:
                lengths.add_row(text, unit, *(_num(s[k]) for k in ("min", "p50", "p90", "max", "mean")))
    per = stats["dialogues_per_character"]
    if per["count"]:
        lengths.add_row("dialogues / character", "count", *(_num(per[k]) for k in ("min", "p50", "p90", "max", "mean")))
    console.print(lengths)

    names = stats["names"]
    if names["top"]:
        unnamed = f", {names['unnamed']:,} without a name" if names["unnamed"] else ""
        table = Table(title="Most common character names", title_justify="left",
                      caption=f"{names['distinct']:,} distinct names{unnamed}", caption_justify="left")
        table.add_column("name")
        table.add_column("characters", justify="right")
        table.add_column("share", justify="right")
        for row in names["top"]:
            table.add_row(row["name"], f"{row['count']:,}", f"{row['share']:.1%}")
        console.print(table)
        firsts = stats["first_names"]["top"]
        console.print("Top first names: " + ", ".join(f"{r['name']} {r['share']:.1%}" for r in firsts), highlight=False)


def _count_table(title: str, key: str, data: dict[str, int], total: int) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for name, count in data.items():
        table.add_row(name, f"{count:,}", f"{count / total:.1%}")
    return table


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
