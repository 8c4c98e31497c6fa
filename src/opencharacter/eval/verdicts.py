"""Read a judge's verdict out of free text, or say why it cannot be read.

Judges wrap their verdict in markdown, restate the scale ("4/5"), quote rubric levels ("a Score 2
response would...") and sometimes change their mind mid-answer. Every parser here takes the *last*
explicit verdict, checks it against the scale, and raises `InvalidOutput` otherwise, so that the
engine asks again and, in the end, records a failure. A missing score is never read as 0: the
original PersonaGym code did that and then had to drop zeros from its averages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from opencharacter.engine.runner import InvalidOutput

_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
_NUMBER = r"(\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")"
# Markdown emphasis and code marks carry no meaning for a verdict: "**4**" is 4.
_MARKUP = re.compile(r"[*_`#~]+")
_FINAL = re.compile(
    r"final\s+(?:score|rating|grade|verdict)\s*(?:is|:|=|of|would\s+be|will\s+be|should\s+be)?\s*"
    r"(?:is\s*)?[:=]?\s*[\[\(\"'“]*\s*" + _NUMBER + r"(?![\d.]*\d)",
    re.IGNORECASE,
)
_LABELLED = re.compile(
    r"\b(?:score|rating|grade)\s*(?:is|:|=|of)\s*[\[\(\"'“]*\s*" + _NUMBER + r"(?![\d.]*\d)", re.IGNORECASE
)
_DOUBLE_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+\s*)?\]\]")
_SINGLE_BRACKETS = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+\s*)?\]")


def _clean(text: str) -> str:
    return _MARKUP.sub("", text or "")


def _number(token: str) -> float:
    token = token.lower()
    return float(_WORDS[token]) if token in _WORDS else float(token)


def _in_scale(value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise InvalidOutput(f"score {value:g} is outside the scale {low:g}-{high:g}")
    return int(value) if value == int(value) else value


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _fraction_on(line: str, high: float) -> float | None:
    """'4/5' or '4 out of 5' with the scale's own maximum, on one line."""
    pattern = _NUMBER + r"\s*(?:/|out\s+of)\s*" + re.escape(f"{high:g}") + r"\b"
    matches = re.findall(pattern, line, flags=re.IGNORECASE)
    return _number(matches[-1]) if matches else None


def parse_final_score(text: str, low: float = 1, high: float = 5) -> float:
    """PersonaGym's verdict: '... Therefore, the final score is N'. Returns N.

    Falls back to 'Score: N', 'N/high' or a lone number on the *last* line, because judges that
    drop the set phrase still end with their verdict. Raises `InvalidOutput` otherwise.
    """
    clean = _clean(text)
    found = _FINAL.findall(clean)
    if found:
        return _in_scale(_number(found[-1]), low, high)
    last = _last_line(clean)
    labelled = _LABELLED.findall(last)
    if labelled:
        return _in_scale(_number(labelled[-1]), low, high)
    fraction = _fraction_on(last, high)
    if fraction is not None:
        return _in_scale(fraction, low, high)
    lone = re.fullmatch(r"[\s\[\(\"'“]*" + _NUMBER + r"[\s\]\)\"'”.]*", last, flags=re.IGNORECASE)
    if lone:
        return _in_scale(_number(lone.group(1)), low, high)
    raise InvalidOutput("no final score found (expected 'Therefore, the final score is N')")


def parse_bracket_rating(text: str, low: float = 1, high: float = 10) -> float:
    """MT-Bench's verdict: 'Rating: [[N]]'. Takes the last [[N]], else the last [N] (as FastChat does)."""
    clean = _clean(text)
    found = _DOUBLE_BRACKETS.findall(clean) or _SINGLE_BRACKETS.findall(clean)
    if not found:
        raise InvalidOutput("no rating found (expected 'Rating: [[N]]')")
    return _in_scale(float(found[-1]), low, high)


def parse_last_line_score(text: str, low: float = 1, high: float = 10) -> float:
    """Ditto's knowledge verdict: the score alone on the last line ('Score: 7' is accepted too)."""
    clean = _clean(text)
    last = _last_line(clean)
    lone = re.fullmatch(r"(?:score|rating)?\s*[:=]?\s*[\[\(]*\s*" + _NUMBER + r"\s*(?:/\s*\d+)?[\]\).]*",
                        last, flags=re.IGNORECASE)
    if lone:
        return _in_scale(_number(lone.group(1)), low, high)
    labelled = _LABELLED.findall(clean) or _FINAL.findall(clean)
    if labelled:
        return _in_scale(_number(labelled[-1]), low, high)
    fraction = _fraction_on(last, high)
    if fraction is not None:
        return _in_scale(fraction, low, high)
    raise InvalidOutput("no score found on the last line")


def parse_binary(text: str) -> int:
    """A 0/1 answer ('1', '**0**', 'Answer: 1'). Both digits standing alone on the last line is ambiguous."""
    clean = _clean(text).strip()
    for candidate in (_last_line(clean), clean):
        digits = set(re.findall(r"(?<![\d.])([01])(?![\d.]*\d)", candidate))
        if len(digits) == 1:
            return int(digits.pop())
        if len(digits) > 1 and candidate is not clean:
            break
    raise InvalidOutput("expected a single 0 or 1")


def _norm(name: str) -> str:
    return re.sub(r"[^\w]+", " ", name.casefold()).strip()


def parse_choice(text: str, candidates: Sequence[str]) -> str:
    """Ditto's identity verdict: 'The most suitable role is [NAME]'; returns the matching candidate.

    NAME is matched to a candidate exactly (case and punctuation aside), else the longest candidate it
    contains. Without the phrase, the one candidate named on the last line is taken.
    """
    clean = _clean(text)
    named = re.findall(r"most\s+suitable\s+(?:role|character|identity)\s+is\s*[:：]?\s*\[?([^\]\n]+)", clean,
                       flags=re.IGNORECASE)
    normalized = [(c, _norm(c)) for c in candidates]
    if named:
        said = _norm(named[-1])
        exact = [c for c, n in normalized if n == said]
        if exact:
            return exact[0]
        contained = sorted((c for c, n in normalized if n and re.search(rf"\b{re.escape(n)}\b", said)),
                           key=len, reverse=True)
        if contained:
            return contained[0]
        raise InvalidOutput(f"the chosen role {named[-1].strip()!r} is not one of the candidates")
    last = _norm(_last_line(clean))
    mentioned = [c for c, n in normalized if n and re.search(rf"\b{re.escape(n)}\b", last)]
    longest = [c for c in mentioned if not any(c != o and _norm(c) in _norm(o) for o in mentioned)]
    if len(longest) == 1:
        return longest[0]
    raise InvalidOutput("no role chosen (expected 'The most suitable role is [NAME]')")
