"""Training data: read dialogues from any supported source, split, and tokenize with answer-only labels.

The system prompt is whatever the data carries; released files without one get it from
`build_system_prompt` (inside `load_chat_samples`), the same builder chat and eval use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from opencharacter.io.chat_data import ChatSample, load_chat_samples
from opencharacter.io.readers import InputError
from opencharacter.train.config import TrainConfig, TrainError
from opencharacter.train.masking import MaskedExample, mask_dialogue


@dataclass
class DataStats:
    """What the model card and the summary say about the data."""

    sources: dict[str, int] = field(default_factory=dict)  # file → dialogues read from it
    dialogues: int = 0
    characters: int = 0  # distinct character ids (0 when the data carries none)
    skipped_too_long: int = 0  # prompt alone longer than max_length: no answer token left
    truncated: int = 0  # cut at max_length, some answer tokens kept
    train_dialogues: int = 0
    eval_dialogues: int = 0
    train_tokens: int = 0
    train_answer_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_samples(config: TrainConfig) -> tuple[list[ChatSample], DataStats]:
    """All dialogues of every `--data` source; malformed data is a `TrainError` naming file and line."""
    samples: list[ChatSample] = []
    stats = DataStats()
    for source in config.data:
        before = len(samples)
        try:
            for sample in load_chat_samples(source, config.characters):
                samples.append(sample)
                if config.max_samples is not None and len(samples) >= config.max_samples:
                    break
        except InputError as exc:
            raise TrainError(f"bad training data: {exc}") from exc
        stats.sources[samples[before].source if len(samples) > before else str(source)] = len(samples) - before
        if config.max_samples is not None and len(samples) >= config.max_samples:
            break
    stats.dialogues = len(samples)
    stats.characters = len({s.character_id for s in samples if s.character_id})
    return samples, stats


def split_samples(samples: list[ChatSample], eval_fraction: float, seed: int) -> tuple[list[ChatSample], list[ChatSample]]:
    """A seeded random hold-out; at least one dialogue on each side when a fraction is asked for."""
    if eval_fraction <= 0 or len(samples) < 2:
        return list(samples), []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(samples) - 1, max(1, round(len(samples) * eval_fraction)))
    held = set(order[:n_eval])
    train = [s for i, s in enumerate(samples) if i not in held]
    return train, [samples[i] for i in sorted(held)]


@dataclass
class Tokenized:
    """One side of the split, tokenized: an Arrow dataset (int32 columns) and what was dropped or cut."""

    dataset: Any  # datasets.Dataset of input_ids + labels, or None when nothing was left
    skipped: int = 0
    truncated: int = 0
    tokens: int = 0
    answer_tokens: int = 0


def tokenize_samples(
    samples: list[ChatSample], tokenizer: Any, max_length: int, desc: str = "Masking answers", chunk: int = 2000
) -> Tokenized:
    """`input_ids` + `labels` (answers only) for every sample that keeps an answer token within `max_length`.

    Rows go to Arrow in chunks of int32: the paper's 306k dialogues as Python int lists would take
    tens of GB, as Arrow a few.
    """
    from datasets import Dataset, Features, List, Value, concatenate_datasets
    from tqdm.auto import tqdm

    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32"))})
    out = Tokenized(dataset=None)
    parts, ids, labels = [], [], []
    for sample in tqdm(samples, desc=desc, unit=" dialogues", disable=len(samples) < 5000):
        example = mask_dialogue(tokenizer, sample.messages)
        if len(example.input_ids) > max_length:
            example = MaskedExample(example.input_ids[:max_length], example.labels[:max_length])
            if example.answer_tokens == 0:
                out.skipped += 1
                continue
            out.truncated += 1
        ids.append(example.input_ids)
        labels.append(example.labels)
        out.tokens += len(example.input_ids)
        out.answer_tokens += example.answer_tokens
        if len(ids) >= chunk:
            parts.append(Dataset.from_dict({"input_ids": ids, "labels": labels}, features=features))
            ids, labels = [], []
    if ids:
        parts.append(Dataset.from_dict({"input_ids": ids, "labels": labels}, features=features))
    if parts:
        out.dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return out


def build_datasets(config: TrainConfig, tokenizer: Any) -> tuple[Any, Any, DataStats]:
    """(train Dataset, eval Dataset or None, stats), tokenized and masked, ready for `SFTTrainer`."""
    samples, stats = read_samples(config)
    train, held_out = split_samples(samples, config.eval_fraction, config.seed)
    del samples
    train_part = tokenize_samples(train, tokenizer, config.max_length)
    eval_part = tokenize_samples(held_out, tokenizer, config.max_length, desc="Masking held-out answers")
    stats.skipped_too_long = train_part.skipped + eval_part.skipped
    stats.truncated = train_part.truncated + eval_part.truncated
    if train_part.dataset is None:
        raise TrainError(
            f"context overflow: the prompt of every training dialogue is longer than --max-length "
            f"{config.max_length} tokens, so no answer token is left to learn; raise --max-length"
        )
    stats.train_dialogues = len(train_part.dataset)
    stats.eval_dialogues = len(eval_part.dataset) if eval_part.dataset is not None else 0
    stats.train_tokens, stats.train_answer_tokens = train_part.tokens, train_part.answer_tokens
    return train_part.dataset, eval_part.dataset, stats
