"""Find the JSON object in a model's answer: bare, fenced in ```json, or wrapped in prose."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_decoder = json.JSONDecoder()


def extract_json_object(text: str) -> dict[str, Any]:
    """Return the first JSON object found; raise ValueError saying why none was found."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        stripped = candidate.strip()
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        for match in re.finditer(r"\{", stripped):
            try:
                value, _ = _decoder.raw_decode(stripped, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    if "{" in text and "}" not in text[text.index("{"):]:
        raise ValueError("the JSON object is cut off (no closing brace)")
    raise ValueError("no JSON object in the answer")
