"""`opencharacter chat`: who the model plays, history within the context, commands, both backends, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opencharacter.chat import (
    ChatError,
    ChatIO,
    ChatSession,
    ContextOverflow,
    estimate_tokens,
    from_persona,
    model_context_length,
    model_token_counter,
    resolve_character,
    run_interactive,
    server_context_length,
)
from opencharacter.cli import app
from opencharacter.llm.base import ChatRequest, Completion
from opencharacter.prompts import build_system_prompt
from opencharacter.records import Character, Profile, character_id_for
from opencharacter.testing.fake_openai import FakeOpenAIServer

runner = CliRunner()

PROFILE = Profile(
    name="Mara Quill", age="61", gender="female", race="Human", born_place="Hobart, Australia",
    appearance="Weathered hands, a yellow raincoat.", general_experience="Kept the Cape Bruny lighthouse for 30 years.",
    personality="Dry, patient, fond of storms.",
)
PERSONA = "A retired lighthouse keeper who collects sea glass."


@pytest.fixture
def characters_file(tmp_path: Path) -> Path:
    other = PROFILE.model_copy(update={"name": "Tomas Rell", "general_experience": "Ran a night bakery in Lagos."})
    rows = [
        Character(character_id=character_id_for(PERSONA), persona=PERSONA, character=PROFILE.to_text(), profile=PROFILE),
        Character(character_id=character_id_for("A baker"), persona="A baker", character=other.to_text()),
    ]
    path = tmp_path / "characters.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    return path


class ScriptedModel:
    """A `ChatModel` that records requests and streams numbered replies."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        return Completion(text=f"reply {len(self.requests)}")

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        for piece in ("reply ", str(len(self.requests))):
            yield piece

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Who the model plays


def test_character_id_from_a_characters_file(characters_file: Path) -> None:
    spec = resolve_character(character_id_for(PERSONA), characters_file)
    assert spec.system_prompt == build_system_prompt(PERSONA, PROFILE.to_text())  # the one shared builder
    assert spec.label == "Mara Quill" and spec.character_id == character_id_for(PERSONA)

    with pytest.raises(ChatError, match="unknown character id 'nope'"):
        resolve_character("nope", characters_file)
    with pytest.raises(ChatError, match="--characters"):  # an id without the file that defines it
        resolve_character(character_id_for(PERSONA))
    with pytest.raises(ChatError, match="is a characters file"):
        resolve_character(str(characters_file))
    # Free text still works next to a characters file.
    assert "sea shanty singer" in resolve_character("a sea shanty singer from Cork", characters_file).system_prompt


def test_profile_files_json_and_yaml(tmp_path: Path) -> None:
    as_json = tmp_path / "mara.json"
    as_json.write_text(json.dumps({"persona": PERSONA, **PROFILE.model_dump()}))
    assert resolve_character(str(as_json)).system_prompt == build_system_prompt(PERSONA, PROFILE.to_text())

    as_yaml = tmp_path / "mara.yaml"  # profile fields only: the experience stands in for the persona
    as_yaml.write_text(yaml.safe_dump({"profile": PROFILE.model_dump()}))
    spec = resolve_character(str(as_yaml))
    assert spec.system_prompt == build_system_prompt(PROFILE.general_experience, PROFILE.to_text())
    assert spec.label == "Mara Quill"

    record = tmp_path / "record.json"  # a characters.jsonl line saved on its own
    record.write_text(json.dumps({"character_id": "x1", "persona": PERSONA, "character": PROFILE.to_text()}))
    assert resolve_character(str(record)).character_id == "x1"

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: Mara\nage: 61\n")
    with pytest.raises(ChatError, match=r"not a character profile.*gender"):
        resolve_character(str(broken))
    with pytest.raises(ChatError, match="does not exist"):
        resolve_character(str(tmp_path / "missing.yml"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    with pytest.raises(ChatError, match="cannot read profile file"):
        resolve_character(str(bad_json))


def test_free_text_persona_and_labelled_profile() -> None:
    assert "config.yaml" in resolve_character("A sysadmin who dreams in config.yaml").system_prompt  # not a file
    spec = resolve_character("A grumpy dwarven blacksmith")
    assert spec.system_prompt == build_system_prompt("A grumpy dwarven blacksmith", "A grumpy dwarven blacksmith")
    labelled = resolve_character(PROFILE.to_text())
    assert labelled.system_prompt == build_system_prompt(PROFILE.general_experience, PROFILE.to_text())
    with pytest.raises(ChatError, match="empty"):
        resolve_character("   ")


# --------------------------------------------------------------------------------------------------
# The conversation


def test_history_is_trimmed_to_the_context_oldest_first() -> None:
    model = ScriptedModel()
    session = ChatSession(model, from_persona("a captain", "a captain"), context_length=400, max_tokens=100)
    budget = 400 - 100
    dropped = []
    for i in range(12):
        reply = asyncio.run(session.send(f"message number {i} " + "words " * 30))
        dropped.append(reply.dropped_turns)
        sent = model.requests[-1].messages
        assert sent[0]["role"] == "system" and sent[1]["role"] == "user" and sent[-1]["role"] == "user"
        assert estimate_tokens(sent) <= budget
    assert sum(dropped) > 0 and dropped[0] == 0
    assert session.history[0]["role"] == "user" and "message number 11" in session.history[-2]["content"]
    assert session.history[-1] == {"role": "assistant", "content": "reply 12"}


def test_context_overflow_is_an_error_and_keeps_the_history() -> None:
    model = ScriptedModel()
    session = ChatSession(model, from_persona("a captain", "a captain"), context_length=300, max_tokens=100)
    asyncio.run(session.send("hello"))
    before = list(session.history)
    with pytest.raises(ContextOverflow, match="more than the"):
        asyncio.run(session.send("word " * 2000))
    assert session.history == before and len(model.requests) == 1


def test_interactive_commands(tmp_path: Path, characters_file: Path) -> None:
    lines = iter(["hello", "", "/save " + str(tmp_path / "chat.json"), "/help", "/character " + character_id_for("A baker"),
                  "/character nope", "who are you?", "/reset", "/bogus", "/quit", "never read"])
    written: list[str] = []
    notices: list[str] = []

    async def read(prompt: str) -> str | None:
        return next(lines, None)

    model = ScriptedModel()
    session = ChatSession(model, resolve_character(character_id_for(PERSONA), characters_file))
    io = ChatIO(read=read, write=written.append, notice=notices.append)
    asyncio.run(run_interactive(session, io, resolve=lambda spec: resolve_character(spec, characters_file)))

    text = "".join(written)
    assert "Mara Quill" in text and "reply 1" in text and "Tomas Rell" in text and "reply 2" in text  # streamed
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    assert saved["messages"][0]["content"] == build_system_prompt(PERSONA, PROFILE.to_text())
    assert saved["messages"][1:] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "reply 1"}]
    # After /character the new character starts afresh: its request holds no earlier turn.
    assert [m["role"] for m in model.requests[1].messages] == ["system", "user"]
    assert "Tomas Rell" in model.requests[1].messages[0]["content"]
    assert any("unknown character id 'nope'" in n for n in notices)
    assert any("/save FILE" in n for n in notices)  # /help and the unknown command list the commands
    assert session.history == [] and next(lines) == "never read"  # /reset cleared, /quit stopped reading


# --------------------------------------------------------------------------------------------------
# Over an OpenAI-compatible server (--base-url), streamed


def test_chat_over_the_fake_server() -> None:
    with FakeOpenAIServer(responder="echo", chunk_delay=0.001) as server:
        result = runner.invoke(app, ["chat", "--base-url", server.base_url, "--model", "fake-model",
                                     "--character", PERSONA, "--message", "Ahoy, who keeps the light?"])
        assert result.exit_code == 0, result.output
        assert result.stdout == "Ahoy, who keeps the light?\n"  # the echo server returns the user's message
        body = server.requests[-1]
        assert body["stream"] is True
        assert body["messages"][0] == {"role": "system", "content": build_system_prompt(PERSONA, PERSONA)}

        piped = runner.invoke(app, ["chat", "--base-url", server.base_url, "--model", "fake-model",
                                    "--character", PERSONA], input="Read from stdin\n")
        assert piped.exit_code == 0, piped.output
        assert piped.stdout == "Read from stdin\n"


def test_chat_bad_input_from_the_cli(characters_file: Path) -> None:
    unknown = runner.invoke(app, ["chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                  "--characters", str(characters_file), "--character", "nobody", "--message", "hi"])
    assert unknown.exit_code == 1 and "unknown character id 'nobody'" in unknown.output

    empty = runner.invoke(app, ["chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--character", "x"], input="")
    assert empty.exit_code == 1 and "no message" in empty.output

    # Port 9 (discard) has no server here: a clear error, not a traceback.
    down = runner.invoke(app, ["chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--character", "x",
                               "--message", "hi"])
    assert down.exit_code == 1 and "cannot connect" in " ".join(down.output.split())

    missing = runner.invoke(app, ["chat", "--model", "/no/such/model", "--backend", "transformers", "--character", "x",
                                  "--message", "hi"])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())


def test_context_length_from_vllm_models_listing() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "character", "max_model_len": 4096}]})

    async def go() -> tuple[int | None, int | None]:
        app_ = web.Application()
        app_.router.add_get("/v1/models", models)
        async with TestServer(app_, host="127.0.0.1") as server:
            base = str(server.make_url("/v1"))
            return await server_context_length(base, "character"), await server_context_length(base, "other")

    assert asyncio.run(go()) == (4096, None)


# --------------------------------------------------------------------------------------------------
# In process (transformers backend)


def test_in_process_model_counts_exactly_and_streams(tiny_llama: Path) -> None:
    from opencharacter.llm.local import TransformersChatModel, render_prompt

    async def go() -> tuple[list[str], list[str], ChatSession]:
        model = TransformersChatModel(str(tiny_llama), batch_size=1)
        try:
            counter = model_token_counter(model)
            assert counter is not None and model_context_length(model) == 1024
            messages = [{"role": "system", "content": "you are bob"}, {"role": "user", "content": "hello"}]
            assert counter(messages) == len(model.tokenizer(render_prompt(model.tokenizer, messages),
                                                            add_special_tokens=False)["input_ids"])
            session = ChatSession(model, from_persona("a good ai character", "name: bob"), context_length=1024,
                                  max_tokens=8, temperature=0.0, count_tokens=counter)
            lines = iter(["hello who are you?", "tell me about your life"])
            written: list[str] = []
            notices: list[str] = []

            async def read(prompt: str) -> str | None:
                return next(lines, None)

            await run_interactive(session, ChatIO(read=read, write=written.append, notice=notices.append))
            return written, notices, session
        finally:
            await model.aclose()

    written, notices, session = asyncio.run(go())
    assert notices[0].startswith("Chatting with")
    assert len(session.history) == 4 and all(m["role"] for m in session.history)
    assert written.count("\n") == 3  # two replies, each ended by a newline, and one at the end of input
