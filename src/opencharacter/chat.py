"""Chat with any character: who the model plays, the conversation kept within its context, commands.

Everything here is plain logic with injected input/output, so tests drive a whole session without
a terminal; `opencharacter chat` only wires it to stdin/stdout. The system prompt comes from
`build_system_prompt`, the one builder train, export and eval use, so a trained model is served
exactly what it was trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opencharacter.llm.base import ChatModel, ChatRequest, Message
from opencharacter.prompts import build_system_prompt
from opencharacter.records import Profile

DEFAULT_CONTEXT = 8192  # when the server does not say (vLLM does, in GET /models: max_model_len)
PROFILE_SUFFIXES = (".json", ".yaml", ".yml")
_CHARACTER_ID = re.compile(r"^[0-9a-f]{16}$")  # records.character_id_for
_NAME_LINE = re.compile(r"^Name:\s*(.+)$", re.MULTILINE)

HELP = """Commands:
  /reset          forget the conversation (same character)
  /save FILE      write the conversation as chat JSON (messages, system prompt first)
  /character C    switch character (an id, a profile file or a persona), fresh conversation
  /help           this list
  /quit           leave (Ctrl-D works too)"""


class ChatError(Exception):
    """Bad input to a chat (unknown character, unreadable profile, a message too long for the model)."""


class ContextOverflow(ChatError):
    """The system prompt and the new message alone do not fit in the model's context."""


# --------------------------------------------------------------------------------------------------
# Who the model plays


@dataclass(frozen=True)
class CharacterSpec:
    """A character ready to chat: its system prompt and a short label for the user."""

    system_prompt: str
    label: str
    character_id: str | None = None


def _label(system_prompt: str, fallback: str) -> str:
    match = _NAME_LINE.search(system_prompt)
    name = match.group(1).strip() if match else fallback
    return name if len(name) <= 60 else name[:57] + "..."


def from_persona(persona: str, character: str, character_id: str | None = None) -> CharacterSpec:
    prompt = build_system_prompt(persona, character)
    return CharacterSpec(prompt, _label(prompt, persona), character_id)


def _from_profile_mapping(data: dict[str, Any], source: str) -> CharacterSpec:
    """A characters.jsonl-style record (`persona` + `character`) or the profile fields themselves."""
    persona = data.get("persona")
    if isinstance(data.get("character"), str) and data["character"].strip():
        character = data["character"]
        if not (isinstance(persona, str) and persona.strip()):
            persona = character
        return from_persona(persona, character, data.get("character_id"))
    fields = data.get("profile") if isinstance(data.get("profile"), dict) else data
    try:
        profile = Profile.model_validate(fields)
    except ValueError as exc:
        missing = ", ".join(str(e["loc"][0]) for e in getattr(exc, "errors", list)() if e.get("loc"))
        raise ChatError(
            f"{source}: not a character profile (needs `persona` + `character`, or the fields name, age, gender, "
            f"race, born_place, appearance, general_experience, personality; missing or empty: {missing or exc})"
        ) from exc
    # Without a persona line, the profile's experience is the closest thing to one.
    if not (isinstance(persona, str) and persona.strip()):
        persona = profile.general_experience
    return from_persona(persona, profile.to_text(), data.get("character_id"))


def load_profile_file(path: Path) -> CharacterSpec:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ChatError(f"cannot read profile file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ChatError(f"profile file {path} must hold one object (a mapping), not {type(data).__name__}")
    return _from_profile_mapping(data, str(path))


def resolve_character(spec: str, characters: str | Path | None = None) -> CharacterSpec:
    """`spec` is a character id (from `characters`), a JSON/YAML profile file, or free text.

    Free text is a persona; if it is laid out as a labelled profile (`Name: ...` lines) it is read
    as one. A word that looks like an id but is not found is an error, never a persona.
    """
    spec = spec.strip()
    if not spec:
        raise ChatError("empty --character: give a character id, a profile file or a persona")
    path = Path(spec).expanduser()
    one_word = not any(c.isspace() for c in spec)
    if path.suffix.lower() in PROFILE_SUFFIXES and (one_word or path.is_file()):
        if not path.is_file():
            raise ChatError(f"profile file {path} does not exist")
        return load_profile_file(path)
    if path.suffix.lower() == ".jsonl" and path.is_file():
        raise ChatError(f"{path} is a characters file: pass it as --characters {path} and pick one with --character ID")
    if characters is not None:
        from opencharacter.io.chat_data import CharacterPrompts
        from opencharacter.io.readers import InputError

        try:
            prompts = CharacterPrompts(characters)
        except InputError as exc:
            raise ChatError(f"cannot read --characters: {exc}") from exc
        if spec in prompts:
            prompt = prompts.system_prompt(spec)
            return CharacterSpec(prompt, _label(prompt, spec), spec)
        if one_word:
            raise ChatError(f"unknown character id {spec!r}: not in {characters} ({len(prompts)} characters)")
    elif _CHARACTER_ID.match(spec):
        raise ChatError(f"{spec!r} looks like a character id: pass the characters file with --characters FILE")
    try:
        profile = Profile.from_text(spec)
    except ValueError:
        return from_persona(spec, spec)
    return from_persona(profile.general_experience, profile.to_text())


# --------------------------------------------------------------------------------------------------
# Token counting


def estimate_tokens(messages: list[Message]) -> int:
    """About 3.5 characters per token plus a few per message for the template: a safe overestimate."""
    return sum(int(len(m["content"]) / 3.5) + 8 for m in messages) + 8


def model_token_counter(model: ChatModel) -> Callable[[list[Message]], int] | None:
    """An exact counter for in-process models (their own chat template and tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None
    try:
        from opencharacter.llm.local import render_prompt
    except ImportError:
        return None

    def count(messages: list[Message]) -> int:
        return len(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])

    return count


def model_context_length(model: ChatModel) -> int | None:
    """The context of an in-process model, from its config."""
    inner = getattr(model, "model", None)
    config = getattr(inner, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


async def server_context_length(base_url: str, model: str, timeout: float = 5.0) -> int | None:
    """vLLM lists `max_model_len` per model in `GET /models`; other servers may not say."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(base_url.rstrip("/") + "/models") as response,
        ):
            if response.status != 200:
                return None
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    for entry in data.get("data") or [] if isinstance(data, dict) else []:
        if isinstance(entry, dict) and entry.get("id") == model and entry.get("max_model_len"):
            return int(entry["max_model_len"])
    return None


# --------------------------------------------------------------------------------------------------
# The conversation


@dataclass
class Reply:
    text: str
    dropped_turns: int = 0  # oldest user+assistant pairs dropped to fit this request


@dataclass
class ChatSession:
    """One conversation with one character, kept within `context_length - max_tokens` tokens."""

    model: ChatModel
    character: CharacterSpec
    context_length: int = DEFAULT_CONTEXT
    max_tokens: int = 512
    temperature: float = 0.7
    count_tokens: Callable[[list[Message]], int] = estimate_tokens
    history: list[Message] = field(default_factory=list)  # user/assistant turns, no system prompt

    def messages(self, extra: list[Message] | None = None) -> list[Message]:
        return [{"role": "system", "content": self.character.system_prompt}, *self.history, *(extra or [])]

    def fit(self, user_text: str) -> tuple[list[Message], int]:
        """The request for `user_text`: oldest exchanges dropped until it fits, and how many were."""
        budget = self.context_length - self.max_tokens
        new = [{"role": "user", "content": user_text}]
        alone = self.count_tokens(self.messages()[:1] + new)
        if alone > budget:
            raise ContextOverflow(
                f"the system prompt and this message take {alone:,} tokens, more than the {budget:,} this model "
                f"has for them ({self.context_length:,} context − {self.max_tokens:,} for the answer); send a "
                "shorter message, lower --max-tokens, or use a model with a longer context"
            )
        dropped = 0
        while self.history and self.count_tokens(self.messages(new)) > budget:
            # Drop whole exchanges from the front so the history never starts with an answer.
            cut = 2 if len(self.history) >= 2 and self.history[1]["role"] == "assistant" else 1
            del self.history[:cut]
            dropped += 1
        return self.messages(new), dropped

    async def send(self, user_text: str, on_text: Callable[[str], Any] | None = None) -> Reply:
        """Ask the model; stream pieces to `on_text` when the backend can. History grows only on success."""
        messages, dropped = self.fit(user_text)
        request = ChatRequest(messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
        stream = getattr(self.model, "stream", None)
        if stream is not None and on_text is not None:
            pieces = []
            async for piece in stream(request):
                pieces.append(piece)
                on_text(piece)
            text = "".join(pieces)
        else:
            text = (await self.model.complete(request)).text
            if on_text is not None:
                on_text(text)
        self.history += [messages[-1], {"role": "assistant", "content": text}]
        return Reply(text=text, dropped_turns=dropped)

    def reset(self) -> None:
        self.history.clear()

    def switch(self, character: CharacterSpec) -> None:
        self.character = character
        self.reset()

    def save(self, path: str | Path) -> Path:
        """The conversation as chat JSON: `{"messages": [...]}`, the training format, system prompt first."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"messages": self.messages(), "character_id": self.character.character_id, "model": self.model.name}
        path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path


# --------------------------------------------------------------------------------------------------
# The interactive loop


@dataclass
class ChatIO:
    """Where the loop reads and writes: a terminal in the CLI, lists in tests."""

    read: Callable[[str], Awaitable[str | None]]  # prompt → a line, or None at end of input
    write: Callable[[str], None]  # model text, streamed (no newline added)
    notice: Callable[[str], None]  # one line of status for the user


async def run_interactive(
    session: ChatSession, io: ChatIO, resolve: Callable[[str], CharacterSpec] = resolve_character
) -> None:
    """Read lines until /quit or end of input; lines starting with / are commands."""
    who = session.character.label + (f" ({session.character.character_id})" if session.character.character_id else "")
    io.notice(f"Chatting with {who}. Type /help for commands, /quit to leave.")
    while True:
        line = await io.read("you> ")
        if line is None:  # end of input (Ctrl-D): end the prompt's line
            io.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            arg = arg.strip()
            if command in ("/quit", "/exit", "/q"):
                return
            if command == "/help":
                io.notice(HELP)
            elif command == "/reset":
                session.reset()
                io.notice("Conversation cleared.")
            elif command == "/save":
                if not arg:
                    io.notice("Usage: /save FILE")
                    continue
                try:
                    io.notice(f"Saved the system prompt and {len(session.history)} messages to {session.save(arg)}")
                except OSError as exc:
                    io.notice(f"Could not save: {exc}")
            elif command == "/character":
                if not arg:
                    io.notice(f"Now playing {session.character.label}. Usage: /character ID|FILE|PERSONA")
                    continue
                try:
                    session.switch(resolve(arg))
                except ChatError as exc:
                    io.notice(f"error: {exc}")
                    continue
                io.notice(f"Now playing {session.character.label}; the conversation starts afresh.")
            else:
                io.notice(f"Unknown command {command}. {HELP}")
            continue
        await _answer(session, io, line)


async def _answer(session: ChatSession, io: ChatIO, text: str) -> None:
    from opencharacter.llm.base import LLMError

    try:
        _, dropped = session.fit(text)  # trim first, so the notice comes before the answer
    except ChatError as exc:
        io.notice(f"error: {exc}")
        return
    if dropped:
        io.notice(
            f"(dropped the {dropped} oldest exchange(s) to stay within the model's context of "
            f"{session.context_length:,} tokens)"
        )
    io.write(f"{session.character.label}> ")
    try:
        await session.send(text, on_text=io.write)
    except LLMError as exc:  # the server hiccupped: keep the session, the message can be sent again
        io.write("\n")
        io.notice(f"error from the model ({exc.reason}): {exc}")
        return
    io.write("\n")
