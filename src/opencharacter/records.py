"""The data contracts: what one line of `characters.jsonl`, `dialogues.jsonl` and `failures.jsonl` holds.

Field names are stable and documented in the README; they are a superset of the released
OpenCharacter files (`synthetic_character.jsonl`, `synthetic_dialogue.jsonl`).
"""

from __future__ import annotations

import hashlib
import re
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case- and whitespace-insensitive form, used for de-duplication and stable ids."""
    return _SPACE.sub(" ", text).strip().casefold()


def stable_id(*parts: str, length: int = 16) -> str:
    """A short hex id derived from the parts, so re-runs and resumes agree on identity."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def character_id_for(persona: str) -> str:
    return stable_id("persona", normalize_text(persona))


def question_id_for(question: str) -> str:
    return stable_id("question", normalize_text(question))


def dialogue_id_for(character_id: str, question_id: str, strategy: str) -> str:
    return stable_id("dialogue", character_id, question_id, strategy)


def _to_str(value: Any) -> Any:
    # Models often write the age as a number; the profile keeps every field as text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


# The BeforeValidator must come last to wrap the constraints (pydantic applies Annotated items in order).
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1), BeforeValidator(_to_str)]

# (field name, label in the paper's layout), in the paper's order.
PROFILE_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("age", "Age"),
    ("gender", "Gender"),
    ("race", "Race"),
    ("born_place", "Born Place"),
    ("appearance", "Appearance"),
    ("general_experience", "General Experience"),
    ("personality", "Personality"),
)
_LABEL_TO_FIELD = {label.casefold(): name for name, label in PROFILE_FIELDS}
_LABEL_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?(?:\*\*|#+\s*)?(" + "|".join(re.escape(label) for _, label in PROFILE_FIELDS)
    + r")\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)$",
    re.IGNORECASE,
)


class Profile(BaseModel):
    """A character profile with the paper's eight fields, each a non-empty text."""

    model_config = ConfigDict(extra="ignore")

    name: Text
    age: Text
    gender: Text
    race: Text
    born_place: Text
    appearance: Text
    general_experience: Text
    personality: Text

    def to_text(self) -> str:
        """The paper's labelled layout (`Name: ...`), as stored in the `character` field."""
        return "\n".join(f"{label}: {getattr(self, name)}" for name, label in PROFILE_FIELDS)

    @classmethod
    def from_text(cls, text: str) -> Profile:
        """Parse the labelled layout; a value may run over several lines until the next label.

        Raises pydantic's ValidationError when a field is missing or empty.
        """
        values: dict[str, list[str]] = {}
        current: str | None = None
        for line in text.splitlines():
            match = _LABEL_LINE.match(line)
            if match:
                current = _LABEL_TO_FIELD[match.group(1).casefold()]
                values[current] = [match.group(2).strip().strip("*").strip()]
            elif current is not None and line.strip():
                values[current].append(line.strip())
        return cls.model_validate({k: " ".join(v).strip() for k, v in values.items()})

    @classmethod
    def json_schema_for_llm(cls) -> dict[str, Any]:
        """A strict JSON schema for `response_format` (all fields required, no extras)."""
        return {
            "type": "object",
            "properties": {name: {"type": "string"} for name, _ in PROFILE_FIELDS},
            "required": [name for name, _ in PROFILE_FIELDS],
            "additionalProperties": False,
        }


class Character(BaseModel):
    """One line of `characters.jsonl`."""

    model_config = ConfigDict(extra="allow")

    character_id: str
    persona: str
    character: str
    profile: Profile | None = None
    source: str = ""
    model: str = ""


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DialogueStrategy(str, Enum):
    GENERATE = "generate"  # OpenCharacter-G: a new in-character answer
    REWRITE = "rewrite"  # OpenCharacter-R: the original answer re-voiced in character
    DITTO = "ditto"  # Ditto self-alignment


class Question(BaseModel):
    """One instruction question, from any supported source format."""

    question_id: str
    question: str
    answer: str | None = None
    source: str = ""


class Dialogue(BaseModel):
    """One line of `dialogues.jsonl`."""

    model_config = ConfigDict(extra="allow")

    dialogue_id: str
    character_id: str
    question_id: str
    question: str
    question_source: str = ""
    character_answer: str
    strategy: DialogueStrategy
    messages: list[dict[str, str]] = Field(default_factory=list)
    model: str = ""
    usage: TokenUsage = Field(default_factory=TokenUsage)


class Failure(BaseModel):
    """One line of `failures.jsonl`: a task that produced no record, and why."""

    task_id: str
    stage: str
    reason: str
    error: str
    attempts: int
    meta: dict[str, Any] = Field(default_factory=dict)
