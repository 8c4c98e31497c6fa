"""Chat training samples from every shape OpenCharacter data comes in, as one stream.

Training, export and evaluation all want the same thing — a list of chat messages with the system
prompt first — but the data arrives as a run folder, our `dialogues.jsonl`, exported `messages` /
OpenAI / ShareGPT files (JSONL, JSON or Parquet), or the released OpenCharacter pair
`synthetic_dialogue.jsonl` + `synthetic_character.jsonl`. `load_chat_samples` hides the difference.

The format is detected per file from the first row's fields; every later row must fit it. A bad
row raises `InputError` naming the file and line, so a trainer never silently learns from half a
sample. Files are streamed; only the character map (persona + profile per character) is held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencharacter.io.readers import InputError, iter_rows
from opencharacter.prompts import build_system_prompt
from opencharacter.records import Profile, dialogue_id_for, question_id_for, stable_id

SUFFIXES = (".jsonl", ".json", ".parquet")
# Looked for, in this order, inside a folder given as the source.
RUN_DIALOGUES = ("dialogues.jsonl", "synthetic_dialogue.jsonl")
# Looked for beside a dialogues file when no characters file is given.
CHARACTER_FILES = ("characters.jsonl", "synthetic_character.jsonl")

ROLES = ("system", "user", "assistant")
# ShareGPT speaker names seen in the wild (LLaMA-Factory, FastChat, Vicuna) → chat roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
}
RELEASED_FIELDS = ("character_id", "question", "character_answer")


@dataclass(frozen=True, slots=True)
class ChatSample:
    """One training conversation: `messages` (role/content, system first when present)."""

    messages: list[dict[str, str]]
    sample_id: str
    character_id: str | None = None
    source: str = ""  # the file it was read from
    line: int | None = None  # its line (JSONL), item (JSON) or row (Parquet) number, 1-based

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None


def detect_format(row: Any) -> str | None:
    """'messages' | 'sharegpt' | 'lima' | 'released', or None when the fields fit no format."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:  # ours (dialogues.jsonl, export), OpenAI fine-tuning, HF chat
        return "messages"
    if "conversations" in row:
        turns = row["conversations"]
        if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
            return "lima"
        return "sharegpt"
    if all(f in row for f in RELEASED_FIELDS):
        return "released"
    return None


def resolve_dialogues(source: str | Path) -> Path:
    """The data file behind `source`: itself, or the dialogues file inside a run folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in RUN_DIALOGUES:
            if (path / name).is_file():
                return path / name
        raise InputError(str(path), None, f"folder has no {' or '.join(RUN_DIALOGUES)} (run the dialogues stage first?)")
    if not path.exists():
        raise InputError(str(source), None, "no such file or folder")
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(str(path), None, f"unsupported file type {path.suffix!r} (expected {', '.join(SUFFIXES)} or a run folder)")
    return path


def find_characters_file(dialogues: Path) -> Path | None:
    """The characters file released or written beside a dialogues file, if there is one."""
    candidates = []
    if "dialogue" in dialogues.name:  # synthetic_dialogue.jsonl → synthetic_character.jsonl
        candidates.append(dialogues.with_name(dialogues.name.replace("dialogues", "characters").replace("dialogue", "character")))
    candidates += [dialogues.with_name(name) for name in CHARACTER_FILES]
    return next((c for c in candidates if c != dialogues and c.is_file()), None)


class CharacterPrompts:
    """character_id → system prompt, built once per character on first use.

    Holds persona and profile text of every character (the only thing not streamed: the released
    file is 20k characters, ~34 MB).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._texts: dict[str, tuple[str, str]] = {}
        self._prompts: dict[str, str] = {}
        src = str(self.path)
        if not self.path.is_file():
            raise InputError(src, None, "characters file not found")
        for line, row in iter_rows(src):
            if not isinstance(row, dict):
                raise InputError(src, line, f"expected a JSON object, got {type(row).__name__}")
            cid, persona, character = row.get("character_id"), row.get("persona"), row.get("character")
            if character is None and isinstance(row.get("profile"), dict):
                character = _profile_text(row["profile"], src, line)
            for name, value in (("character_id", cid), ("persona", persona), ("character", character)):
                if not isinstance(value, str) or not value.strip():
                    raise InputError(src, line, f"missing or empty field '{name}' (a character needs character_id, persona, character)")
            assert isinstance(cid, str) and isinstance(persona, str) and isinstance(character, str)
            known = self._texts.get(cid)
            if known is not None and known != (persona, character):
                raise InputError(src, line, f"character_id {cid!r} appears twice with different persona or profile")
            self._texts[cid] = (persona, character)
        if not self._texts:
            raise InputError(src, None, "no characters in the file")

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, character_id: object) -> bool:
        return character_id in self._texts

    def system_prompt(self, character_id: str) -> str:
        prompt = self._prompts.get(character_id)
        if prompt is None:
            persona, character = self._texts[character_id]
            prompt = self._prompts[character_id] = build_system_prompt(persona, character)
        return prompt


def _profile_text(profile: dict[str, Any], src: str, line: int) -> str:
    try:
        return Profile.model_validate(profile).to_text()
    except ValueError as exc:
        raise InputError(src, line, f"invalid profile ({exc})") from exc


def load_chat_samples(source: str | Path, characters: str | Path | None = None) -> Iterator[ChatSample]:
    """Stream the chat samples of a run folder or data file (see module doc for the formats).

    `characters` is needed only for the released dialogue layout (question + character_answer,
    no messages); when omitted, a characters file beside the dialogues is used. The path is checked
    now; rows are checked as they are read. Raises `InputError` for a bad row, and at the end for a
    source with no samples at all.
    """
    path = resolve_dialogues(source)
    characters_path = Path(characters).expanduser() if characters is not None else None
    if characters_path is not None and not characters_path.is_file():
        raise InputError(str(characters_path), None, "characters file not found")
    return _iter_samples(path, characters_path)


def count_chat_samples(source: str | Path, characters: str | Path | None = None) -> int:
    """How many samples `source` holds, reading (and so checking) every one of them."""
    return sum(1 for _ in load_chat_samples(source, characters))


def _iter_samples(path: Path, characters_path: Path | None) -> Iterator[ChatSample]:
    src = str(path)
    fmt: str | None = None
    first_line = 0
    prompts: CharacterPrompts | None = None
    count = 0
    for line, row in iter_rows(src):
        if not isinstance(row, dict):
            raise InputError(src, line, f"expected a JSON object, got {type(row).__name__}")
        if fmt is None:
            fmt, first_line = detect_format(row), line
            if fmt is None:
                raise InputError(src, line, (
                    f"unrecognised chat data (fields: {', '.join(sorted(row)) or 'none'}); expected 'messages', "
                    "'conversations' (ShareGPT), or character_id + question + character_answer (released layout)"
                ))
        row_fmt = fmt
        if fmt == "messages" and row.get("messages") == [] and all(f in row for f in RELEASED_FIELDS):
            row_fmt = "released"  # a dialogue record whose messages were not filled in: rebuild them
        if row_fmt == "released":
            if prompts is None:
                prompts = CharacterPrompts(_characters_for(path, characters_path))
            sample = _from_released(row, prompts, src, line)
        else:
            sample = _PARSERS[row_fmt](row, src, line, fmt, first_line)
        count += 1
        yield sample
    if count == 0:
        raise InputError(src, None, "no chat samples (the file is empty)")


def _characters_for(dialogues: Path, given: Path | None) -> Path:
    found = given or find_characters_file(dialogues)
    if found is None:
        raise InputError(str(dialogues), None, (
            "dialogues in the released layout need their characters file: none of "
            f"{', '.join(CHARACTER_FILES)} beside it; pass it with --characters (or characters=)"
        ))
    return found


def _missing(src: str, line: int, field: str, fmt: str, first_line: int) -> InputError:
    return InputError(src, line, f"missing field '{field}' (the file is in {fmt} format, detected from line {first_line})")


def _ids(row: dict[str, Any], messages: list[dict[str, str]]) -> tuple[str, str | None]:
    sample_id = next((str(row[k]) for k in ("sample_id", "dialogue_id", "id") if row.get(k) not in (None, "")), None)
    if sample_id is None:  # content-derived, so the same conversation gets the same id in any file
        sample_id = stable_id("messages", json.dumps(messages, ensure_ascii=False, sort_keys=True))
    character_id = row.get("character_id")
    return sample_id, (str(character_id) if character_id not in (None, "") else None)


def _from_messages(row: dict[str, Any], src: str, line: int, fmt: str, first_line: int) -> ChatSample:
    raw = row.get("messages")
    if raw is None:
        raise _missing(src, line, "messages", fmt, first_line)
    if not isinstance(raw, list):
        raise InputError(src, line, f"'messages' must be a list, got {type(raw).__name__}")
    messages = []
    for i, m in enumerate(raw, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(src, line, f"message {i} needs 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})
    _check(messages, src, line)
    sample_id, character_id = _ids(row, messages)
    return ChatSample(messages, sample_id, character_id, src, line)


def _from_sharegpt(row: dict[str, Any], src: str, line: int, fmt: str, first_line: int) -> ChatSample:
    turns = row.get("conversations")
    if turns is None:
        raise _missing(src, line, "conversations", fmt, first_line)
    if not isinstance(turns, list):
        raise InputError(src, line, f"'conversations' must be a list, got {type(turns).__name__}")
    messages: list[dict[str, Any]] = []
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError(src, line, f"'system' must be a string, got {type(system).__name__}")
    if system and system.strip():  # LLaMA-Factory keeps the system prompt in its own column
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise InputError(src, line, f"turn {i} must be an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if speaker is None or content is None:
            raise InputError(src, line, f"turn {i} needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise InputError(src, line, f"turn {i}: unsupported speaker {speaker!r} (expected one of: {', '.join(SHAREGPT_ROLES)})")
        messages.append({"role": role, "content": content})
    _check(messages, src, line)
    sample_id, character_id = _ids(row, messages)
    return ChatSample(messages, sample_id, character_id, src, line)


def _from_lima(row: dict[str, Any], src: str, line: int, fmt: str, first_line: int) -> ChatSample:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise InputError(src, line, f"'conversations' must be a list of strings (the file is in {fmt} format, detected from line {first_line})")
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    _check(messages, src, line)
    sample_id, character_id = _ids(row, messages)
    return ChatSample(messages, sample_id, character_id, src, line)


def _from_released(row: dict[str, Any], prompts: CharacterPrompts, src: str, line: int) -> ChatSample:
    for field in RELEASED_FIELDS:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise InputError(src, line, f"missing or empty field '{field}' (released layout needs {', '.join(RELEASED_FIELDS)})")
    cid = row["character_id"]
    if cid not in prompts:
        raise InputError(src, line, f"unknown character_id {cid!r}: not in {prompts.path} ({len(prompts)} characters)")
    messages = [
        {"role": "system", "content": prompts.system_prompt(cid)},
        {"role": "user", "content": row["question"]},
        {"role": "assistant", "content": row["character_answer"]},
    ]
    sample_id = row.get("dialogue_id") or dialogue_id_for(cid, question_id_for(row["question"]), "released")
    return ChatSample(messages, str(sample_id), cid, src, line)


_PARSERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "lima": _from_lima}


def _check(messages: list[dict[str, Any]], src: str, line: int) -> None:
    """What a trainer needs: known roles, text content, system only first, an answer to learn."""
    if not messages:
        raise InputError(src, line, "empty conversation")
    has_answer = False
    for i, m in enumerate(messages, start=1):
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise InputError(src, line, f"message {i}: unsupported role {role!r} (expected one of: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise InputError(src, line, f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise InputError(src, line, f"message {i} ({role}): empty content")
        if role == "system" and i != 1:
            raise InputError(src, line, f"message {i}: a system message may only come first")
        has_answer = has_answer or role == "assistant"
    if not has_answer:
        raise InputError(src, line, "no assistant turn: nothing to train on")
