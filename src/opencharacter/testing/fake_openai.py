"""A fake OpenAI-compatible chat server for tests, benchmarks and dry runs.

Real servers are slow, cost money and fail at random; this one answers at a chosen latency with
deterministic text and fails exactly when a test says so. It speaks the wire format
(`POST /v1/chat/completions`, streaming SSE, `GET /v1/models`), so every client — the `openai`
package, raw aiohttp, our own backends — is exercised over a real socket.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, and `GET /fake/stats`
(request count, status counts, count by key as JSON, for a test in another process).

Two ways to run it:

    with FakeOpenAIServer(latency=0.05, faults=[Fault.rate_limited(retry_after=1)]) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="x")   # background thread
        ...
        assert max(server.answered_by_key.values()) == 1   # no finished task was asked twice

    python -m opencharacter.testing.fake_openai --port 0 --latency 0.5 --log requests.jsonl

The second runs in its own process (own core, own GIL), so benchmarks measure the client alone and a
test can SIGKILL a *client* process while the server keeps counting in its `--log`.

Faults (`Fault`), and where they are chosen from for each request, first match wins:
1. `fail_key(key, *faults)`: a queue per request key ("the next requests for this prompt fail");
2. `fail_first_per_key(k, fault)`: the first k requests of *every* key fail;
3. `faults=[...]` / `add_faults(...)`: a queue applied to the next requests, whatever their key;
4. `fault_fn(index, body) -> Fault | None`: anything else (see `every(n, fault)`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

try:  # orjson is optional: about 5x faster serialisation on the hot path when present.
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads

    def _dumps_sorted(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

except ImportError:  # pragma: no cover - exercised only where orjson is missing
    # Encoders built once: json.dumps(**options) would build a new one on every call.
    _ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    _SORTED_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    _DECODER = json.JSONDecoder()

    def _dumps(obj: Any) -> bytes:
        return _ENCODER.encode(obj).encode("utf-8")

    def _loads(data: bytes | str) -> Any:
        return _DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)

    def _dumps_sorted(obj: Any) -> bytes:
        return _SORTED_ENCODER.encode(obj).encode("utf-8")


Responder = Callable[[dict[str, Any]], str]
FaultFn = Callable[[int, dict[str, Any]], "Fault | None"]
FaultKind = Literal["http", "drop", "hang", "truncated_json", "length"]

DEFAULT_MODEL = "fake-model"
PROFILE_KEYS = (
    "name", "age", "gender", "race", "born_place", "appearance", "general_experience", "personality",
)


# --------------------------------------------------------------------------------------------------
# Request identity


def request_key(messages: Sequence[Any] | dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a request's messages (or of a whole body's `messages`).

    Tests compute the same key from the messages they send, to count or script faults per task.
    """
    if isinstance(messages, dict):
        messages = messages.get("messages") or []
    return hashlib.blake2b(_dumps_sorted(list(messages)), digest_size=8).hexdigest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: keep the text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(_content_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _pick(options: Sequence[str], seed: int, salt: int) -> str:
    # Different salts read different bits of the seed, so fields vary independently.
    return options[((seed >> (salt * 5)) ^ (seed * (salt + 1))) % len(options)]


# --------------------------------------------------------------------------------------------------
# Responders: (body) -> assistant text, deterministic from the request


def echo(body: dict[str, Any]) -> str:
    """Return the last user message verbatim, so a test can assert what reached the model."""
    return _last_user_text(body)


_FIRST_NAMES = (
    "Aiko", "Amara", "Anders", "Aurelio", "Bao", "Beatriz", "Bodhi", "Caius", "Celeste", "Dalia",
    "Darius", "Elif", "Emeka", "Esme", "Farid", "Freya", "Gideon", "Hana", "Ilse", "Imani", "Ivo",
    "Jonah", "Kaveh", "Kiri", "Lena", "Lior", "Mateo", "Mira", "Nadia", "Nikolai", "Noor", "Odile",
    "Oren", "Priya", "Quinn", "Rafael", "Ren", "Rosa", "Saoirse", "Selim", "Sunniva", "Tariq",
    "Thea", "Tomas", "Uma", "Valen", "Wren", "Xiomara", "Yara", "Yusuf", "Zane", "Zora", "Malik",
    "Ingrid", "Kenji", "Lucia", "Marek", "Nell", "Omar", "Petra", "Ravi", "Sade", "Teodor", "Vida",
)
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "th")
_VOWELS = ("a", "e", "i", "o", "u")
_SURNAME_ENDINGS = ("", "son", "ez", "ova", "ski", "ian", "ara", "elli")
_GENDERS = ("female", "male", "non-binary")
_RACES = (
    "Human (East Asian)", "Human (West African)", "Human (Northern European)", "Human (South Asian)",
    "Human (Latin American)", "Human (Middle Eastern)", "Human (Pacific Islander)", "Human (mixed heritage)",
    "Elf", "Half-elf", "Dwarf", "Android",
)
_PLACES = (
    "Lagos, Nigeria", "Osaka, Japan", "Bergen, Norway", "Cusco, Peru", "Marseille, France",
    "Pune, India", "Halifax, Canada", "Tbilisi, Georgia", "Valparaíso, Chile", "Hobart, Australia",
    "a mining town in the Silver Hills", "the floating city of Aster",
)
_HAIR = ("cropped black hair", "a silver braid", "wild auburn curls", "close-shaved head", "sun-bleached waves")
_EYES = ("warm brown eyes", "grey eyes", "green eyes behind round glasses", "dark, watchful eyes")
_STYLE = (
    "a patched canvas jacket", "a tailored charcoal coat", "ink-stained fingers", "a faded festival scarf",
    "work boots that have seen better days", "a brass pocket watch on a chain",
)
_TRAITS = (
    "curious", "patient", "blunt", "warm", "sardonic", "meticulous", "restless", "generous", "stubborn",
    "playful", "earnest", "shy", "quick-witted", "principled", "dreamy", "pragmatic",
)
_PERSONA_LINE = re.compile(r"^\s*#*\s*persona\s*[:：]?\s*(.*)$", re.IGNORECASE)


def _persona_of(body: dict[str, Any]) -> str:
    """The persona line, best effort: after a 'Persona:' label, else the last non-empty user line."""
    lines = [line.strip() for line in _last_user_text(body).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = _PERSONA_LINE.match(line)
        if match:
            rest = match.group(1).strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            if rest:
                return rest[:200]
    return lines[-1][:200] if lines else "someone with an ordinary life"


def _surname(seed: int) -> str:
    parts = []
    for _ in range(4):
        parts.append(_ONSETS[seed % len(_ONSETS)] + _VOWELS[(seed // len(_ONSETS)) % len(_VOWELS)])
        seed //= len(_ONSETS) * len(_VOWELS)
    return ("".join(parts) + _SURNAME_ENDINGS[seed % len(_SURNAME_ENDINGS)]).capitalize()


def profile_dict(body: dict[str, Any]) -> dict[str, str]:
    """The character profile `profile` answers with, as a dict (all eight fields, all strings).

    The name spends ~36 bits of the prompt's hash, so different personas get different names
    (a collision is expected about once per ~250,000 personas).
    """
    seed = _seed(_prompt_text(body))
    persona = _persona_of(body)
    name = f"{_FIRST_NAMES[seed % len(_FIRST_NAMES)]} {_surname(seed >> 6)}"
    traits = [_pick(_TRAITS, seed, 3), _pick(_TRAITS, seed, 4), _pick(_TRAITS, seed, 5)]
    traits = list(dict.fromkeys(traits))
    return {
        "name": name,
        "age": str(18 + (seed >> 40) % 63),
        "gender": _pick(_GENDERS, seed, 1),
        "race": _pick(_RACES, seed, 2),
        "born_place": _pick(_PLACES, seed, 6),
        "appearance": f"{_pick(_HAIR, seed, 7).capitalize()}, {_pick(_EYES, seed, 8)} and {_pick(_STYLE, seed, 9)}.",
        "general_experience": (
            f"{name.split()[0]} is {persona.rstrip('.')}. Years of that life left a head full of stories, "
            "a few hard lessons and a habit of noticing what others miss."
        ),
        "personality": f"{', '.join(traits).capitalize()}; speaks plainly and keeps promises.",
    }


def profile(body: dict[str, Any]) -> str:
    """A valid JSON character profile, deterministic from a hash of the prompt."""
    return _dumps(profile_dict(body)).decode("utf-8")


def make_judge(
    score: int | None = None,
    *,
    style: Literal["final", "brackets"] = "final",
    low: int = 1,
    high: int = 10,
) -> Responder:
    """A judge responder: a short rationale ending with a verdict the eval parsers look for.

    `style="final"` ends with "Therefore, the final score is N"; `style="brackets"` with "Rating: [[N]]"
    (MT-Bench). `score=None` derives N from the prompt's hash, within [low, high].
    """

    def judge(body: dict[str, Any]) -> str:
        seed = _seed(_prompt_text(body))
        n = score if score is not None else low + seed % (high - low + 1)
        verdict = f"Therefore, the final score is {n}" if style == "final" else f"Rating: [[{n}]]"
        return (
            "The response stays mostly consistent with the character's persona and profile, "
            f"answers the question {('directly', 'in part', 'with some digressions')[seed % 3]}, "
            f"and its tone is {('convincing', 'uneven', 'a little generic')[(seed >> 3) % 3]}.\n{verdict}"
        )

    return judge


judge = make_judge()

_GESTURES = ("leans back", "smiles", "taps the table", "laughs softly", "raises an eyebrow", "nods slowly")
_OPENERS = ("Ah, now that's a question.", "Well, let me tell you.", "Funny you should ask.", "Hm. Fair enough.")
_CLOSERS = (
    "That's how I see it, anyway.", "Ask me again over dinner and I'll tell you more.",
    "Does that help?", "Take it from someone who's been there.",
)
_NAME_LINE = re.compile(r"^\s*Name\s*[:：]\s*(.+)$", re.MULTILINE)


_QUESTION_SECTION = re.compile(r"^#+\s*Question\s*\n(.*?)(?:\n\s*\n#|\n\s*\n[A-Z]|\Z)", re.MULTILINE | re.DOTALL)


def in_character(body: dict[str, Any]) -> str:
    """An answer that looks in character: the profile's name (from 'Name: ...') and the question.

    Works for a served character (profile in the system prompt, question as the user turn) and for a
    synthesis prompt (profile and a `# Question` section inside one user turn).
    """
    seed = _seed(_prompt_text(body))
    match = _NAME_LINE.search(_prompt_text(body))
    name = match.group(1).strip() if match else "The character"
    user = _last_user_text(body)
    section = _QUESTION_SECTION.search(user)
    question = " ".join((section.group(1) if section else user).split())
    topic = question if len(question) <= 80 else question[:77] + "..."
    return (
        f"*{name} {_pick(_GESTURES, seed, 1)}* {_pick(_OPENERS, seed, 2)} You ask: \"{topic}\" "
        f"In my experience the honest answer starts with what you already know and ends with what you "
        f"are willing to try. {_pick(_CLOSERS, seed, 3)}"
    )


def _response_format_type(body: dict[str, Any]) -> str | None:
    rf = body.get("response_format")
    return rf.get("type") if isinstance(rf, dict) else None


def _fill_schema(schema: dict[str, Any], known: dict[str, str], seed: int, name: str = "") -> Any:
    """A value that satisfies a simple JSON schema; named string fields reuse the profile values."""
    if schema.get("enum"):
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _fill_schema(v if isinstance(v, dict) else {}, known, seed >> 1, k) for k, v in props.items()}
    if kind == "array":
        item = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_fill_schema(item, known, seed + i, name) for i in range(max(1, schema.get("minItems", 1)))]
    if kind == "integer":
        return int(schema.get("minimum", 1)) + seed % 5
    if kind == "number":
        return float(schema.get("minimum", 0)) + (seed % 100) / 10
    if kind == "boolean":
        return bool(seed & 1)
    return known.get(name, f"{name or 'value'} {seed % 1000}")


def auto(body: dict[str, Any]) -> str:
    """The default: profile JSON for profile/JSON requests, a verdict for judge prompts, else in character.

    - `response_format` json_object / json_schema → JSON (a profile; a json_schema whose properties are
      not the profile's gets an object filled to fit it);
    - "[[" or "final score" in the prompt → `judge`;
    - a `# Question` section in the user turn (a dialogue-synthesis prompt) → `in_character`;
    - "profile" or "json" in the user turn, or in a system prompt that is not the role-play one → profile;
    - anything else → `in_character`.
    """
    rf_type = _response_format_type(body)
    if rf_type == "json_schema":
        schema = (body["response_format"].get("json_schema") or {}).get("schema") or {}
        props = schema.get("properties") if isinstance(schema, dict) else None
        if props and set(props) != set(PROFILE_KEYS):
            value = _fill_schema(schema, profile_dict(body), _seed(_prompt_text(body)))
            return _dumps(value).decode("utf-8")
        return profile(body)
    if rf_type == "json_object":
        return profile(body)
    text = _prompt_text(body).lower()
    if "[[" in text or "final score" in text:
        return judge(body)
    asks = _last_user_text(body).lower()
    if "# question" in asks:  # a dialogue-synthesis prompt: the character answers the question
        return in_character(body)
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "system":
            content = _content_text(m.get("content"))
            if "# Character Profile" not in content and "stay in your character" not in content:
                asks += "\n" + content.lower()
    if "profile" in asks or "json" in asks:
        return profile(body)
    return in_character(body)


RESPONDERS: dict[str, Responder] = {"auto": auto, "echo": echo, "profile": profile, "judge": judge}


# --------------------------------------------------------------------------------------------------
# Faults


_ERRORS: dict[int, tuple[str, str, str | None]] = {  # status -> (message, type, code), as OpenAI sends them
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The server is overloaded, please try again later.", "server_error", "service_unavailable"),
}


@dataclass(frozen=True)
class Fault:
    """One way for one request to go wrong. Build with the class methods; `Fault.parse` reads CLI specs.

    Order within one request: an `http` fault, then the server's own checks (api_key, strict_models,
    reject_response_format), then `drop`, then latency (+ `hang`), then the responder and content faults.

    - `http`: answer at once (no latency) with `status` and an OpenAI-shaped error body (`{"error": {...}}`), plus a
      `Retry-After: <retry_after>` header when set (429 and 503 typically carry one).
    - `drop`: close the connection without a response (mid-stream for `stream: true`, after the first
      chunks), so the client sees a disconnect / connection error.
    - `hang`: wait `seconds` (default an hour) before answering normally: a client timeout must fire.
    - `truncated_json`: HTTP 200, `finish_reason: "stop"`, but the content is cut in half, so a JSON
      answer does not parse (the nasty case: the server claims success).
    - `length`: HTTP 200 with the content cut in half and `finish_reason: "length"`.
    """

    kind: FaultKind
    status: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    message: str = ""

    @classmethod
    def http(cls, status: int, message: str = "", retry_after: float | None = None) -> Fault:
        return cls("http", status=status, retry_after=retry_after, message=message)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0) -> Fault:
        """HTTP 429 with `Retry-After` (seconds; fractions are sent as-is, the openai client reads them)."""
        return cls.http(429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> Fault:
        """HTTP 500 (or 502/503/504): worth retrying."""
        return cls.http(status, retry_after=retry_after)

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        """HTTP 503, as an overloaded or still-loading server answers."""
        return cls.http(503, retry_after=retry_after)

    @classmethod
    def bad_key(cls) -> Fault:
        """HTTP 401: nothing will work, the run should stop."""
        return cls.http(401)

    @classmethod
    def model_not_found(cls) -> Fault:
        """HTTP 404 `model_not_found`: nothing will work, the run should stop."""
        return cls.http(404)

    @classmethod
    def bad_request(cls, message: str = "") -> Fault:
        """HTTP 400: this one request is refused; retrying it cannot help."""
        return cls.http(400, message=message)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Fault:
        return cls("hang", seconds=seconds)

    @classmethod
    def truncated_json(cls) -> Fault:
        return cls("truncated_json")

    @classmethod
    def length(cls) -> Fault:
        return cls("length")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Read a spec: `429[:RETRY_AFTER]`, any other status `NNN[:RETRY_AFTER]`, `drop`,
        `hang[:SECONDS]`, `truncated_json`, `length`."""
        head, _, arg = spec.strip().partition(":")
        if head.isdigit():
            return cls.http(int(head), retry_after=float(arg) if arg else (1.0 if head == "429" else None))
        if head == "hang":
            return cls.hang(float(arg)) if arg else cls.hang()
        if head in ("drop", "truncated_json", "length"):
            return cls(head)  # type: ignore[arg-type]
        raise ValueError(f"unknown fault spec {spec!r} (use NNN[:retry_after], drop, hang[:s], truncated_json, length)")


def every(n: int, fault: Fault) -> FaultFn:
    """A `fault_fn` that fails every n-th request (1-based: requests n, 2n, ...), e.g. a 1% error rate."""
    return lambda index, body: fault if (index + 1) % n == 0 else None


class _Dropped(asyncio.CancelledError):
    """Ends a handler whose connection we cut on purpose; aiohttp lets CancelledError pass quietly."""


def _error_payload(status: int, message: str = "", param: str | None = None) -> bytes:
    default_message, kind, code = _ERRORS.get(status, ("Request failed.", "server_error", None))
    return _dumps({"error": {"message": message or default_message, "type": kind, "param": param, "code": code}})


# --------------------------------------------------------------------------------------------------
# The server


class FakeOpenAIServer:
    """An OpenAI-compatible chat server on 127.0.0.1, scripted per test.

    Use as a context manager (runs in a background thread with its own event loop), or await
    `astart()` / `astop()` inside a running loop (the CLI does). State is guarded by a lock, so the
    test thread may read counters and add faults while requests are in flight.

    Args:
        responder: `(body) -> str` for the assistant text, or a name in `RESPONDERS`.
        latency: seconds to wait before each answer (asyncio.sleep: thousands can wait at once).
        jitter: extra uniform [0, jitter) seconds per request, from a `random.Random(seed)`.
        chunk_delay: seconds between streamed chunks (latency is the time to the first one).
        faults: a queue of faults for the next requests, whatever their key (`None` = answer normally).
        fault_fn: `(request_index, body) -> Fault | None`, consulted after the queues.
        host, port: where to listen; port 0 picks a free one.
        models: ids listed by `GET /v1/models`; the first is the default `model` in answers.
        strict_models: answer 404 `model_not_found` for a model not in `models`.
        api_key: if set, any other bearer token gets 401.
        reject_response_format: answer 400 to a json_schema / json_object `response_format`, like servers
            without structured output.
        record_requests: keep every body in `.requests` (turn off for 100k-request benchmarks).
        log: a path for a JSONL event log, each line written at once so another process can count:
            `{"event": "request", "i", "key", "t", "fault"}` when a chat request arrives and
            `{"event": "answer", "i", "key", "t", "status": 200}` when its HTTP 200 answer is sent.
        seed: seeds the jitter.
    """

    def __init__(
        self,
        responder: Responder | str = "auto",
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        chunk_delay: float = 0.0,
        faults: Iterable[Fault | None] = (),
        fault_fn: FaultFn | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        strict_models: bool = False,
        api_key: str | None = None,
        reject_response_format: bool = False,
        record_requests: bool = True,
        log: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.responder: Responder = RESPONDERS[responder] if isinstance(responder, str) else responder
        self.latency = latency
        self.jitter = jitter
        self.chunk_delay = chunk_delay
        self.fault_fn = fault_fn
        self.host = host
        self.port = port
        self.models = list(models)
        self.strict_models = strict_models
        self.api_key = api_key
        self.reject_response_format = reject_response_format
        self.record_requests = record_requests
        self.log_path = Path(log) if log else None

        self._lock = threading.RLock()  # re-entrant: a fault_fn may read the counters
        self._random = random.Random(seed)
        self._fault_queue: deque[Fault | None] = deque(faults)
        self._key_faults: dict[str, deque[Fault]] = {}
        self._first_per_key: tuple[int, Fault] | None = None
        self._log_fd: int | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self.reset()

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget received requests and counters (faults that are still queued stay)."""
        with self._lock:
            self._requests: list[dict[str, Any]] = []
            self._count_by_key: Counter[str] = Counter()
            self._answered_by_key: Counter[str] = Counter()
            self._status_counts: Counter[int | str] = Counter()
            self._response_formats: Counter[str] = Counter()
            self._request_count = 0
            self._in_flight = 0
            self._peak_in_flight = 0

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of every chat request received, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        return self._request_count

    @property
    def count_by_key(self) -> Counter[str]:
        """How many chat requests arrived per `request_key(messages)`, whatever their outcome."""
        with self._lock:
            return Counter(self._count_by_key)

    @property
    def answered_by_key(self) -> Counter[str]:
        """How many HTTP 200 answers went out per key: >1 means a finished task was asked again."""
        with self._lock:
            return Counter(self._answered_by_key)

    @property
    def status_counts(self) -> Counter[int | str]:
        """Outcomes: HTTP status codes, "drop" (cut on purpose), "hang" (a hang fault began) and
        "cancelled" (the client left before the answer, e.g. on its timeout)."""
        with self._lock:
            return Counter(self._status_counts)

    @property
    def response_formats(self) -> Counter[str]:
        """How often each `response_format` type (json_schema, json_object, text) was asked for."""
        with self._lock:
            return Counter(self._response_formats)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests being answered at once: lets a test check the client's concurrency bound."""
        return self._peak_in_flight

    # -- scripting faults -------------------------------------------------------------------------

    def add_faults(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests, one each, whatever their key; `None` lets one through."""
        with self._lock:
            self._fault_queue.extend(faults)

    def fail_key(self, key: str, *faults: Fault, times: int = 1) -> None:
        """The next requests for `key` fail with `faults` in order (each repeated `times`)."""
        with self._lock:
            queue = self._key_faults.setdefault(key, deque())
            for fault in faults:
                queue.extend([fault] * times)

    def fail_first_per_key(self, k: int, fault: Fault) -> None:
        """The first `k` requests of every key fail with `fault` (counted since the last `reset`)."""
        with self._lock:
            self._first_per_key = (k, fault) if k > 0 else None

    def _choose_fault(self, index: int, key: str, body: dict[str, Any]) -> Fault | None:
        # Caller holds the lock.
        queue = self._key_faults.get(key)
        if queue:
            return queue.popleft()
        if self._first_per_key and self._count_by_key[key] <= self._first_per_key[0]:
            return self._first_per_key[1]
        if self._fault_queue:
            queued = self._fault_queue.popleft()
            if queued is not None:
                return queued
        return self.fault_fn(index, body) if self.fault_fn else None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give a client, e.g. `http://127.0.0.1:PORT/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/fake/stats", self._stats)
        return app

    async def astart(self) -> None:
        """Start listening in the running event loop; `port` and `base_url` then hold the real port."""
        if self.log_path:
            # One O_APPEND write per line: no buffer to flush, and lines stay whole if a process dies.
            self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # handler_cancellation: a client that gives up (timeout) cancels its hung handler, as vLLM aborts.
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.2
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def start(self) -> FakeOpenAIServer:
        """Run the server in a daemon thread with its own event loop; returns once it listens."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve_in_thread, args=(ready,), name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def _serve_in_thread(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.astart())
        except BaseException as exc:
            self._start_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.astop())
            loop.close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- handlers ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "opencharacter"} for m in self.models]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type="application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        with self._lock:
            stats = {
                "requests": self._request_count,
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "status_counts": {str(k): v for k, v in self._status_counts.items()},
                "count_by_key": dict(self._count_by_key),
            }
        return web.Response(body=_dumps(stats), content_type="application/json")

    def _error(self, status: int, message: str = "", retry_after: float | None = None,
               param: str | None = None) -> web.Response:
        headers = None
        if retry_after is not None:
            headers = {"Retry-After": str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)}
        with self._lock:
            self._status_counts[status] += 1
        return web.Response(status=status, body=_error_payload(status, message, param),
                            content_type="application/json", headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = _loads(await request.read())
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return self._error(400, "'messages' must be a non-empty array.", param="messages")
        key = request_key(body["messages"])
        rf_type = _response_format_type(body)
        with self._lock:
            index = self._request_count
            self._request_count += 1
            self._count_by_key[key] += 1
            if self.record_requests:
                self._requests.append(body)
            if rf_type:
                self._response_formats[rf_type] += 1
            fault = self._choose_fault(index, key, body)
            self._in_flight += 1
            if self._in_flight > self._peak_in_flight:
                self._peak_in_flight = self._in_flight
        if self._log_fd is not None:
            kind = f'"{fault.kind}"' if fault else "null"  # hand-built: this line is on the hot path
            line = f'{{"event":"request","i":{index},"key":"{key}","t":{time.time():.6f},"fault":{kind}}}\n'
            os.write(self._log_fd, line.encode())
        try:
            return await self._answer(request, body, key, index, fault)
        except _Dropped:
            raise
        except asyncio.CancelledError:  # the client went away first (its timeout, or it was killed)
            with self._lock:
                self._status_counts["cancelled"] += 1
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any], key: str, index: int,
                      fault: Fault | None) -> web.StreamResponse:
        if fault is not None and fault.kind == "http":
            return self._error(fault.status, fault.message, fault.retry_after)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401)
        model = body.get("model") or self.models[0]
        rf_type = _response_format_type(body)
        if self.strict_models and model not in self.models:
            return self._error(404, f"The model `{model}` does not exist or you do not have access to it.")
        if self.reject_response_format and rf_type in ("json_schema", "json_object"):
            return self._error(400, "response_format is not supported by this server.", param="response_format")
        if fault is not None and fault.kind == "drop" and not body.get("stream"):  # streams drop mid-way
            with self._lock:
                self._status_counts["drop"] += 1
            return self._drop(request)

        delay = self.latency
        if self.jitter:
            with self._lock:
                delay += self._random.random() * self.jitter
        if fault is not None and fault.kind == "hang":
            with self._lock:
                self._status_counts["hang"] += 1
            delay += fault.seconds
        if delay > 0:
            await asyncio.sleep(delay)

        try:
            text = self.responder(body)
        except Exception as exc:  # a broken responder is a test bug: make it loud, not a hang
            return self._error(500, f"responder failed: {exc!r}")
        finish_reason = "stop"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if fault is not None and fault.kind in ("truncated_json", "length"):
            text = text[: max(1, len(text) // 2)]
            finish_reason = "length" if fault.kind == "length" else "stop"
        elif isinstance(max_tokens, int) and len(text) > 4 * max_tokens:
            text, finish_reason = text[: 4 * max_tokens], "length"  # ~4 characters a token
        n = body.get("n") or 1
        usage = {"prompt_tokens": sum(len(_content_text(m.get("content"))) // 4 + 4 for m in body["messages"]
                                      if isinstance(m, dict)),
                 "completion_tokens": max(1, len(text) // 4) * n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-fake{index:08x}{key[:8]}"
        created = int(time.time())

        if body.get("stream"):
            return await self._stream(request, body, key, index, completion_id, created, model, text, finish_reason,
                                      usage, drop=fault is not None and fault.kind == "drop")
        self._mark_answered(index, key)
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason} for i in range(n)]
        payload = {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                   "choices": choices, "usage": usage}
        return web.Response(body=_dumps(payload), content_type="application/json")

    def _drop(self, request: web.Request) -> web.StreamResponse:
        # Closing the transport makes the client see the server disconnect before any status line.
        # The handler is then cancelled (handler_cancellation) or its reply is discarded unwritten.
        if request.transport is not None:
            request.transport.close()
        raise _Dropped

    async def _stream(self, request: web.Request, body: dict[str, Any], key: str, index: int, completion_id: str,
                      created: int, model: str, text: str, finish_reason: str, usage: dict[str, int],
                      drop: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

        def event(delta: dict[str, str], finish: str | None, **extra: Any) -> bytes:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                     **extra}
            return b"data: " + _dumps(chunk) + b"\n\n"

        words = re.findall(r"\S*\s*", text)[:-1] or [text]
        step = max(1, len(words) // 16)  # at most ~16 content chunks: realistic shape, bounded cost
        events = [event({"role": "assistant", "content": ""}, None)]
        events += [event({"content": "".join(words[i : i + step])}, None) for i in range(0, len(words), step)]
        events.append(event({}, finish_reason))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        if drop:  # send the role chunk and about half of the content, then cut the connection
            await response.write(b"".join(events[: max(2, len(events) // 2)]))
            with self._lock:
                self._status_counts["drop"] += 1
            self._drop(request)
        if self.chunk_delay:
            for i, data in enumerate(events):
                if 1 < i < len(events) - 1:
                    await asyncio.sleep(self.chunk_delay)
                await response.write(data)
        else:  # one write: the client still parses separate SSE events, at a fraction of the cost
            await response.write(b"".join(events))
        self._mark_answered(index, key)
        await response.write_eof()
        return response

    def _mark_answered(self, index: int, key: str) -> None:
        with self._lock:
            self._answered_by_key[key] += 1
            self._status_counts[200] += 1
        if self._log_fd is not None:
            line = f'{{"event":"answer","i":{index},"key":"{key}","t":{time.time():.6f},"status":200}}\n'
            os.write(self._log_fd, line.encode())


# --------------------------------------------------------------------------------------------------
# Subprocess mode


class FakeOpenAIProcess:
    """Runs the CLI in a child process: the server survives when a test SIGKILLs its *client*.

    `args` are extra CLI flags (e.g. "--fault", "500"). Counting happens through `--log`, which this
    helper always passes (a temporary file unless `log` is given).
    """

    def __init__(self, *args: str, latency: float = 0.0, responder: str = "auto", port: int = 0,
                 log: str | Path | None = None, startup_timeout: float = 20.0) -> None:
        self.log_path = Path(log) if log else None
        self.args = [*args, "--latency", str(latency), "--responder", responder, "--port", str(port)]
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._tmpdir: Any = None

    def __enter__(self) -> FakeOpenAIProcess:
        if self.log_path is None:
            import tempfile

            self._tmpdir = tempfile.TemporaryDirectory(prefix="fake-openai-")
            self.log_path = Path(self._tmpdir.name) / "requests.jsonl"
        env = dict(os.environ)
        # The child must import this very package, even when it is not installed (src layout in tests).
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opencharacter.testing.fake_openai", *self.args, "--log", str(self.log_path)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.startup_timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"fake OpenAI server did not start (first line: {line!r})")
        self.base_url = line
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def logged(self) -> list[dict[str, Any]]:
        """The log's events so far (see `FakeOpenAIServer`'s `log`); a half-written last line is skipped."""
        if self.log_path is None or not self.log_path.exists():
            return []
        entries = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def count_by_key(self) -> Counter[str]:
        """Requests received per key, from the log."""
        return Counter(e["key"] for e in self.logged() if e.get("event") == "request")

    def answered_by_key(self) -> Counter[str]:
        """HTTP 200 answers sent per key, from the log."""
        return Counter(e["key"] for e in self.logged() if e.get("event") == "answer")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m opencharacter.testing.fake_openai",
        description="A fake OpenAI-compatible chat server for tests and benchmarks. Prints its base URL "
        "once listening.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform [0, J) seconds per request")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--responder", default="auto", choices=sorted(RESPONDERS))
    parser.add_argument("--judge-score", type=int, default=None, help="fixed score for --responder judge")
    parser.add_argument("--judge-style", default="final", choices=("final", "brackets"))
    parser.add_argument("--model", action="append", default=None, help="model id to list (repeatable)")
    parser.add_argument("--strict-models", action="store_true", help="404 for models not listed")
    parser.add_argument("--api-key", default=None, help="require this bearer token (401 otherwise)")
    parser.add_argument("--reject-response-format", action="store_true", help="400 for response_format")
    parser.add_argument("--log", default=None,
                        help="append a JSONL line per request received and per answer sent (flushed)")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="queue a fault for the next request (repeatable, in order): NNN[:retry_after], "
                        "drop, hang[:seconds], truncated_json, length, or ok (no fault)")
    parser.add_argument("--fail-first-per-key", default=None, metavar="K:SPEC",
                        help="the first K requests of every key fail with SPEC, e.g. 2:500")
    parser.add_argument("--fault-every", default=None, metavar="N:SPEC",
                        help="every N-th request fails with SPEC, e.g. 100:429:1")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


async def _serve(server: FakeOpenAIServer) -> None:
    await server.astart()
    print(server.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.astop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    responder: Responder = RESPONDERS[args.responder]
    if args.responder == "judge":
        responder = make_judge(args.judge_score, style=args.judge_style)
    fault_fn = None
    if args.fault_every:
        n, _, spec = args.fault_every.partition(":")
        fault_fn = every(int(n), Fault.parse(spec))
    server = FakeOpenAIServer(
        responder, latency=args.latency, jitter=args.jitter, chunk_delay=args.chunk_delay,
        faults=[None if spec == "ok" else Fault.parse(spec) for spec in args.fault], fault_fn=fault_fn, host=args.host, port=args.port,
        models=args.model or (DEFAULT_MODEL,), strict_models=args.strict_models, api_key=args.api_key,
        reject_response_format=args.reject_response_format, record_requests=False, log=args.log, seed=args.seed,
    )
    if args.fail_first_per_key:
        k, _, spec = args.fail_first_per_key.partition(":")
        server.fail_first_per_key(int(k), Fault.parse(spec))
    asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
