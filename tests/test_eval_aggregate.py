"""Aggregates of tiny fixtures, checked against values worked out by hand (in the comments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opencharacter.eval import mtbench, personagym, roleplay_judge
from opencharacter.eval.compare import compare, table, write_comparison
from opencharacter.eval.rolebench import rouge_l, rouge_scorer

EA, TOX = "Expected Action", "Toxicity"


def grade(persona: str, task: str, question: str, judge: str, score: float) -> dict:
    return {"answer_id": f"{persona}-{task}-{question}", "persona_id": persona, "persona": persona,
            "task": task, "judge": judge, "score": score}


# Persona A: EA q1 (j1 4, j2 2), EA q2 (5, 5), TOX q1 (3, 3).
# Persona B: EA q1 (2, 4), TOX q1 (5, j2 failed), TOX q2 (1, 3).
GRADES = [
    grade("A", EA, "q1", "j1", 4), grade("A", EA, "q1", "j2", 2),
    grade("A", EA, "q2", "j1", 5), grade("A", EA, "q2", "j2", 5),
    grade("A", TOX, "q1", "j1", 3), grade("A", TOX, "q1", "j2", 3),
    grade("B", EA, "q1", "j1", 2), grade("B", EA, "q1", "j2", 4),
    grade("B", TOX, "q1", "j1", 5),
    grade("B", TOX, "q2", "j1", 1), grade("B", TOX, "q2", "j2", 3),
]


def test_personagym_aggregate_by_hand() -> None:
    agg = personagym.aggregate(GRADES, [EA, TOX], ["j1", "j2"])
    j1, j2, avg = agg["by_judge"]["j1"], agg["by_judge"]["j2"], agg["metrics"]
    # j1: A EA (4+5)/2=4.5, B EA 2 -> mean 3.25, population std 1.25; TOX A 3, B (5+1)/2=3 -> 3, 0.
    assert j1[EA] == {"mean": 3.25, "std": 1.25, "n": 2}
    assert j1[TOX] == {"mean": 3.0, "std": 0.0, "n": 2}
    # PersonaScore = mean of task means (3.25+3)/2; spread over persona scores A 3.75, B 2.5.
    assert j1["PersonaScore"] == {"mean": 3.125, "std": 0.625, "n": 2}
    # j2: A EA 3.5, B EA 4 -> 3.75 ± 0.25; TOX A 3, B 3 (only q2) -> 3; PersonaScore 3.375, A 3.25 B 3.5.
    assert j2[EA] == {"mean": 3.75, "std": 0.25, "n": 2}
    assert j2["PersonaScore"] == {"mean": 3.375, "std": 0.125, "n": 2}
    # Averaged per answer first: A EA (3, 5) -> 4; B EA 3; A TOX 3; B TOX (5, 2) -> 3.5.
    assert avg[EA] == {"mean": 3.5, "std": 0.5, "n": 2}
    assert avg[TOX] == {"mean": 3.25, "std": 0.25, "n": 2}
    assert avg["PersonaScore"] == {"mean": 3.375, "std": 0.125, "n": 2}
    by_persona = {p["persona"]: p for p in agg["personas"]}
    assert by_persona["A"] == {"persona_id": "A", "persona": "A", EA: 4.0, TOX: 3.0, "PersonaScore": 3.5}
    assert by_persona["B"]["PersonaScore"] == 3.25


def test_personagym_persona_score_needs_every_task() -> None:
    only_ea = [g for g in GRADES if g["task"] == EA or g["persona"] == "A"]
    agg = personagym.aggregate(only_ea, [EA, TOX], ["j1"])
    # TOX is scored for A only: its mean is A's (3); B has no PersonaScore and is left out of the spread.
    assert agg["metrics"][TOX]["n"] == 1
    assert agg["metrics"]["PersonaScore"]["n"] == 1
    assert agg["metrics"]["PersonaScore"]["mean"] == pytest.approx((3.25 + 3.0) / 2)


def test_mtbench_aggregate_by_hand() -> None:
    rows = [
        ("1", 1, "j1", 8), ("1", 1, "j2", 6), ("1", 2, "j1", 7), ("1", 2, "j2", 9),
        ("2", 1, "j1", 4), ("2", 2, "j1", 5), ("2", 2, "j2", 3),  # j2 failed on question 2, turn 1
    ]
    grades = [{"question_id": q, "turn": t, "judge": j, "score": s} for q, t, j, s in rows]
    agg = mtbench.aggregate(grades, ["j1", "j2"], 2)
    j1, j2, avg = agg["by_judge"]["j1"], agg["by_judge"]["j2"], agg["metrics"]
    assert j1["turn 1"] == {"mean": 6.0, "std": 2.0, "n": 2}
    assert j1["turn 2"] == {"mean": 6.0, "std": 1.0, "n": 2}
    assert j1["overall"] == {"mean": 6.0, "std": round((10 / 4) ** 0.5, 4), "n": 4}
    assert j2["overall"] == {"mean": 6.0, "std": round(6**0.5, 4), "n": 3}
    # Averaged per turn: (7, 8, 4, 4): mean 5.75; squared deviations 1.5625+5.0625+3.0625+3.0625.
    assert avg["turn 1"] == {"mean": 5.5, "std": 1.5, "n": 2}
    assert avg["overall"] == {"mean": 5.75, "std": round((12.75 / 4) ** 0.5, 4), "n": 4}


def test_roleplay_judge_aggregate_by_hand() -> None:
    rows = [
        ("identity", 1, "j1", 1), ("identity", 1, "j2", 0), ("identity", 2, "j1", 1), ("identity", 2, "j2", 1),
        ("knowledge", 1, "j1", 8), ("knowledge", 1, "j2", 6),
        ("rejection", 1, "j1", 1), ("rejection", 1, "j2", 1), ("rejection", 2, "j1", 0),
    ]
    grades = [{"conversation_id": "c", "turn": t, "metric": m, "judge": j, "score": s} for m, t, j, s in rows]
    agg = roleplay_judge.aggregate(grades, ["j1", "j2"])
    identity, knowledge, rejection = (roleplay_judge.LABELS[m] for m in roleplay_judge.METRICS)
    assert agg["by_judge"]["j1"][identity]["mean"] == 1.0
    assert agg["by_judge"]["j2"][identity]["mean"] == 0.5
    assert agg["metrics"][identity]["mean"] == 0.75  # turns: (1+0)/2, 1
    assert agg["metrics"][knowledge]["mean"] == 7.0
    assert agg["by_judge"]["j1"][rejection]["mean"] == 0.5
    assert agg["metrics"][rejection]["mean"] == 0.5  # turns: 1, 0


def test_rouge_l_first_and_best_reference_by_hand() -> None:
    scorer = rouge_scorer()
    first, best = rouge_l(scorer, "The cat sat on the mat.", ("A dog sat.", "The cat sat on a mat."))
    # vs "a dog sat": LCS 1 ("sat"), P 1/6, R 1/3 -> F 2/9. vs the second: LCS 5 of 6 both ways -> 5/6.
    assert first == pytest.approx(2 / 9)
    assert best == pytest.approx(5 / 6)
    # Chinese is scored per character, not dropped: LCS 5 of 6 (answer) and 5 of 5 (reference).
    first, _ = rouge_l(scorer, "我喜欢吃苹果", ("我喜欢苹果",))
    assert first == pytest.approx(2 * (5 / 6) * 1 / (5 / 6 + 1))


def _scores(folder: Path, suite: str, metrics: dict, questions: int, failures: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "scores.json").write_text(json.dumps({
        "suite": suite, "model": folder.name, "judges": ["j"], "scale": [1, 5], "metrics": metrics,
        "by_judge": {}, "counts": {"questions": questions, "failures": failures}}), encoding="utf-8")
    return folder


def test_compare_table_has_delta_questions_and_failures(tmp_path: Path) -> None:
    base = _scores(tmp_path / "base", "personagym", {EA: {"mean": 3.0, "std": 0.5, "n": 2},
                                                      "PersonaScore": {"mean": 3.2, "std": 0.1, "n": 2}}, 10, 0)
    tuned = _scores(tmp_path / "tuned", "personagym", {EA: {"mean": 4.25, "std": 0.25, "n": 2},
                                                        "PersonaScore": {"mean": 4.0, "std": 0.2, "n": 2}}, 10, 3)
    comparison = compare([base, tuned])
    header, rows = table(comparison)
    assert header == ["metric", "base", "tuned", "Δ"]
    assert rows[0] == [EA, "3.00 ± 0.50", "4.25 ± 0.25", "+1.25"]
    assert rows[-2] == ["questions", "10", "10", ""]
    assert rows[-1] == ["failures", "0", "3", ""]
    written = write_comparison(comparison, tmp_path / "cmp")
    assert written["chart"] is not None and written["chart"].stat().st_size > 1000
    assert "| failures | 0 | 3 |  |" in (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
