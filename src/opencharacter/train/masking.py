"""Loss on the answers only, for any chat template — with or without `{% generation %}` markers.

TRL's `assistant_only_loss` needs the template to mark assistant text with `{% generation %}`, and
ships patched copies only for templates it knows. Llama-3's has no markers, and neither does a
custom one. So we find the answers ourselves, the way a server sees them: the answer to turn *i*
starts where `render(messages[:i], add_generation_prompt=True)` ends and stops where
`render(messages[:i+1])` ends. That span holds the answer *and* the template's end-of-turn token
(`<|eot_id|>`, `<end_of_turn>`...), so the model also learns to stop. Token labels come from the
tokenizer's character offsets over the full rendering, so the ids are exactly those that
`apply_chat_template(..., tokenize=True)` gives at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opencharacter.train.config import TrainError

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and TRL) skip

Message = dict[str, str]


@dataclass
class MaskedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token is not part of an assistant answer

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_char_spans(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the [start, end) character span of every assistant answer in it.

    A template that renders a prefix differently from the same turns inside the whole dialogue
    (some drop earlier reasoning, for instance) still works: a span is clipped to where the two
    renderings agree, as TRL's `common_prefix_length` does for prompt-completion data.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TrainError(
            "the base model's tokenizer has no chat template, so dialogues cannot be rendered; pick an "
            "instruct/chat model or one whose tokenizer_config.json defines `chat_template`"
        )
    text = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i == 0:
            continue
        start = _common_prefix(_render(tokenizer, messages[:i], add_generation_prompt=True), text)
        end = _common_prefix(_render(tokenizer, messages[: i + 1]), text)
        if end > start:
            spans.append((start, end))
    return text, spans


def mask_dialogue(tokenizer: Any, messages: list[Message], max_length: int | None = None) -> MaskedExample:
    """Token ids of the rendered dialogue, with labels only on assistant answers (others -100).

    Cut to `max_length` tokens, keeping the start (the system prompt and the first answer).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TrainError(
            "assistant-only loss needs a fast (Rust) tokenizer for character offsets; this base model only "
            "has a slow one"
        )
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (token_start, token_end) in enumerate(encoded["offset_mapping"]):
        if token_end <= token_start:  # tokens that cover no text (some special tokens)
            continue
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= token_start < spans[span_index][1]:
            labels[position] = input_ids[position]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return MaskedExample(input_ids=input_ids, labels=labels)


def end_of_turn_token_id(tokenizer: Any) -> int | None:
    """The token the template closes an assistant answer with (`<|eot_id|>`, `<end_of_turn>`...).

    Generation must stop there, and for many base models it is not the tokenizer's `eos_token`.
    """
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    try:
        example = mask_dialogue(tokenizer, probe)
    except Exception:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    answer_ids = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    for token in reversed(answer_ids):
        if token in special:
            return token
    return None
