"""A responder for `FakeOpenAIServer` that plays both the model under test and every judge.

It recognises each evaluation prompt (PersonaGym score examples and grades, MT-Bench ratings, the
Ditto-style identity / knowledge / rejection checks, question generation) and answers in the format
its parser expects, deterministically from a hash of the request (the model name included, so two
judges disagree). Anything else gets an in-character answer. `broken` names prompt kinds that get an
answer without any verdict, to exercise re-asking and failure records.

    from opencharacter.testing import FakeOpenAIServer
    with FakeOpenAIServer(make_eval_responder()) as server: ...
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection
from typing import Any

KINDS = ("examples", "grade", "rating", "identity", "knowledge", "rejection", "settings", "questions", "answer")


def _text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))


def _seed(body: dict[str, Any]) -> int:
    key = f"{body.get('model', '')}\x1f{_text(body)}"
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def kind_of(body: dict[str, Any]) -> str:
    """Which evaluation prompt this is (one of KINDS)."""
    text = _text(body)
    if "Output Format (example responses ONLY)" in text:
        return "examples"
    if "Evaluation Form:" in text:
        return "grade"
    if "[[rating]]" in text:
        return "rating"
    if "The most suitable role is [NAME]" in text:
        return "identity"
    if "write only the score" in text:
        return "knowledge"
    if "Reply with the single digit only" in text:
        return "rejection"
    if "JSON list of the chosen setting names" in text:
        return "settings"
    if re.search(r"Write exactly \d+ challenging", text):
        return "questions"
    return "answer"


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def _answer(body: dict[str, Any], seed: int) -> str:
    question = " ".join(_last_user(body).split())[:80]
    moods = ("leans back", "smiles", "taps the table", "laughs softly")
    return (f"*{moods[seed % len(moods)]}* You ask: \"{question}\" Well, from where I stand, I would start "
            f"with what I know best and take it one careful step at a time.")


def make_eval_responder(broken: Collection[str] = ()) -> Callable[[dict[str, Any]], str]:
    """A responder; prompt kinds in `broken` are answered with text that holds no verdict."""
    unknown = set(broken) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown prompt kinds {sorted(unknown)}; choose from {KINDS}")

    def respond(body: dict[str, Any]) -> str:
        kind, seed, text = kind_of(body), _seed(body), _text(body)
        if kind in broken:
            return "I have considered the response carefully and have some thoughts, but no verdict."
        if kind == "examples":
            return "\n\n".join(f"Score {n}:  Response - An answer that would earn a {n}." for n in range(1, 6))
        if kind == "grade":
            return f"The response mostly fits the persona.\n\nTherefore, the final score is {1 + seed % 5}"
        if kind == "rating":
            return f"The answer is vivid and stays in role. Rating: [[{1 + seed % 10}]]"
        if kind == "identity":
            candidates = re.findall(r"^- (.+)$", text.split("The speaker is one of these characters:")[-1], re.MULTILINE)
            pick = candidates[seed % len(candidates)] if candidates else "nobody"
            return f"The tone and the details point to one of them.\nThe most suitable role is [{pick}]."
        if kind == "knowledge":
            return f"The answer is partly supported by the facts.\n{1 + seed % 10}"
        if kind == "rejection":
            return str(seed % 2)
        if kind == "settings":
            listed = re.findall(r"^- (.+)$", text, re.MULTILINE)
            return json.dumps(listed[seed % 5 : seed % 5 + 8])
        if kind == "questions":
            count = int(re.search(r"Write exactly (\d+) challenging", text).group(1))  # type: ignore[union-attr]
            task = re.search(r"# Evaluation task: (.+)", text)
            name = task.group(1).strip() if task else "the task"
            return json.dumps([f"Question {i + 1} about {name}: what would you do, and why?" for i in range(count)])
        return _answer(body, seed)

    return respond


eval_responder = make_eval_responder()
