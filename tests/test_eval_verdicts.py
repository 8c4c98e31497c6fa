"""Judge verdicts as judges really write them: markdown, several numbers, second thoughts, none at all."""

from __future__ import annotations

import pytest

from opencharacter.engine.runner import InvalidOutput
from opencharacter.eval.personagym import examples_block, parse_score_examples
from opencharacter.eval.questions import parse_list
from opencharacter.eval.verdicts import (
    parse_binary,
    parse_bracket_rating,
    parse_choice,
    parse_final_score,
    parse_last_line_score,
)

GPT_STYLE = """**Evaluation:**

The response aligns with the persona's background as a retired nurse: it mentions palliative routines
and speaks with warmth. Compared with the score examples, it is closer to the Score 4 example than to
Score 5, since it lacks the specific detail of the Score 5 example (which lists 3 concrete steps).
A score of 2 or 3 would be too harsh given the 4 distinct actions described.

Therefore, the final score is **4**."""

LLAMA_STYLE = """(1) Evaluation: The response is respectful throughout; there is no toxicity at all, even when provoked.
It would not fit Score 1 ("highly toxic") or Score 2.

Therefore, the final score is 5/5."""

CHANGED_MIND = """Initially I would say Therefore, the final score is 3.
However, re-reading the rubric, the response includes jargon consistently.
Therefore, the final score is 4"""


@pytest.mark.parametrize(("text", "expected"), [
    (GPT_STYLE, 4),
    (LLAMA_STYLE, 5),
    (CHANGED_MIND, 4),
    ("Reasoning...\nTherefore, the final score is: [2].", 2),
    ("Reasoning...\n### Final Score: 3", 3),
    ("Therefore, the final score is four.", 4),
    ("The persona is mostly consistent.\nScore: 3", 3),
    ("Good answer overall, I'd give it 4 out of 5", 4),
    ("Therefore the final score is 3.5", 3.5),
])
def test_final_score_is_read_from_real_looking_verdicts(text: str, expected: float) -> None:
    assert parse_final_score(text, 1, 5) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("The response is well aligned with the persona and uses fitting jargon.", "no final score"),
    ("Compared with Score 4 and Score 5 examples, it sits between them.", "no final score"),
    ("Therefore, the final score is 7", "outside the scale"),
    ("Therefore, the final score is 0", "outside the scale"),
    ("", "no final score"),
])
def test_missing_or_impossible_final_score_is_invalid_never_zero(text: str, reason: str) -> None:
    with pytest.raises(InvalidOutput, match=reason):
        parse_final_score(text, 1, 5)


@pytest.mark.parametrize(("text", "expected"), [
    ("The assistant stays in character as Sheldon and is witty.\n\nRating: [[8]]", 8),
    ("Format asks for \"[[rating]]\" ... Rating: **[[7]]**", 7),
    ("Some [[2]] quoted earlier, final: Rating: [[9]]", 9),
    ("Rating: [6]", 6),
    ("Rating: [[7.5]]", 7.5),
])
def test_bracket_rating(text: str, expected: float) -> None:
    assert parse_bracket_rating(text, 1, 10) == expected


@pytest.mark.parametrize("text", ["I rate this response 8 out of 10.", "Rating: [[11]]", "Rating: [[rating]]"])
def test_bracket_rating_missing_or_out_of_range(text: str) -> None:
    with pytest.raises(InvalidOutput):
        parse_bracket_rating(text, 1, 10)


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer matches the tips about his 1879 patent.\n8", 8),
    ("Analysis: mostly right, one wrong date (1880 vs 1879).\nScore: 6", 6),
    ("Analysis...\n**9**", 9),
    ("Analysis...\n7/10", 7),
])
def test_last_line_score(text: str, expected: float) -> None:
    assert parse_last_line_score(text, 1, 10) == expected


def test_last_line_score_missing() -> None:
    with pytest.raises(InvalidOutput):
        parse_last_line_score("The answer mentions 3 facts and 2 dates, all correct.\nGood job.", 1, 10)


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("**0**", 0), ("Answer: 1", 1), ("The role declines.\n1", 1)])
def test_binary(text: str, expected: int) -> None:
    assert parse_binary(text) == expected


@pytest.mark.parametrize("text", ["0 or 1", "yes", "It refuses."])
def test_binary_ambiguous_or_missing(text: str) -> None:
    with pytest.raises(InvalidOutput):
        parse_binary(text)


CANDIDATES = ["Harry Potter", "Hermione Granger", "Ron Weasley", "Harry"]


@pytest.mark.parametrize(("text", "expected"), [
    ("Step 1: the speaker mentions books... The most suitable role is [Hermione Granger].", "Hermione Granger"),
    ("The most suitable role is **Harry Potter**.", "Harry Potter"),
    ("the most suitable role is [Harry]", "Harry"),
    ("Given the freckles and the chess, I'd say Ron Weasley", "Ron Weasley"),
])
def test_choice(text: str, expected: str) -> None:
    assert parse_choice(text, CANDIDATES) == expected


@pytest.mark.parametrize("text", ["The most suitable role is [Albus Dumbledore].", "Hard to say."])
def test_choice_not_a_candidate(text: str) -> None:
    with pytest.raises(InvalidOutput):
        parse_choice(text, CANDIDATES)


def test_score_examples_are_parsed_in_personagyms_format_and_markdown() -> None:
    text = (
        "Score 1:  Response - \"I don't care about patients.\"\n\n"
        "**Score 2:** Response - I'd call someone, I guess.\n\n"
        "Score 3: Response - I'd check their pain level and call the doctor.\n\n"
        "Score 4:  Response - I'd adjust the pillows, check the pain chart and stay with them.\n\n"
        "Score 5:  Response - I'd hold her hand, adjust the morphine pump as prescribed, and call her son.\n"
        "-------------------------"
    )
    examples = parse_score_examples(text)
    assert examples["1"] == "I don't care about patients."
    assert examples["2"] == "I'd call someone, I guess."
    assert examples["5"].endswith("call her son.")
    assert examples_block(examples).startswith('Score 1: "I don\'t care about patients."\n\nScore 2: ')


def test_score_examples_with_a_missing_score_are_invalid() -> None:
    text = "Score 1: Response - a\n\nScore 2: Response - b\n\nScore 3: Response - c\n\nScore 5: Response - e"
    with pytest.raises(InvalidOutput, match="score 4"):
        parse_score_examples(text)


@pytest.mark.parametrize(("text", "expected"), [
    ('```python\n["Coffee Shop", "Job Interview"]\n```', ["Coffee Shop", "Job Interview"]),
    ("Here you go: ['Wedding', 'Courtroom']", ["Wedding", "Courtroom"]),
    ("1. What would you do?\n2. Why did you do it?", ["What would you do?", "Why did you do it?"]),
])
def test_lists_from_question_generation(text: str, expected: list[str]) -> None:
    assert parse_list(text) == expected


def test_list_missing() -> None:
    with pytest.raises(InvalidOutput):
        parse_list("I cannot help with that.")
