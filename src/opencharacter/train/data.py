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
from opencharacter.train.masking import IGNORE_INDEX, mask_dialogue


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


def tokenize_samples(samples: list[ChatSample], tokenizer: Any, max_length: int) -> tuple[list[dict[str, list[int]]], int, int]:
    """Rows of `input_ids` + `labels` (answers only); also how many were skipped or truncated."""
    rows: list[dict[str, list[int]]] = []
    skipped = truncated = 0
    for sample in samples:
        full = mask_dialogue(tokenizer, sample.messages)
        if len(full.input_ids) > max_length:
            cut = full.input_ids[:max_length], full.labels[:max_length]
            if all(label == IGNORE_INDEX for label in cut[1]):
                skipped += 1
                continue
            truncated += 1
            rows.append({"input_ids": cut[0], "labels": cut[1]})
        else:
            rows.append({"input_ids": full.input_ids, "labels": full.labels})
    return rows, skipped, truncated


def build_datasets(config: TrainConfig, tokenizer: Any) -> tuple[Any, Any, DataStats]:
    """(train Dataset, eval Dataset or None, stats), tokenized and masked, ready for `SFTTrainer`."""
    from datasets import Dataset

    samples, stats = read_samples(config)
    train, held_out = split_samples(samples, config.eval_fraction, config.seed)
    train_rows, skipped, truncated = tokenize_samples(train, tokenizer, config.max_length)
    eval_rows, eval_skipped, eval_truncated = tokenize_samples(held_out, tokenizer, config.max_length)
    stats.skipped_too_long = skipped + eval_skipped
    stats.truncated = truncated + eval_truncated
    if not train_rows:
        raise TrainError(
            f"context overflow: the prompt of every training dialogue is longer than --max-length "
            f"{config.max_length} tokens, so no answer token is left to learn; raise --max-length"
        )
    stats.train_dialogues, stats.eval_dialogues = len(train_rows), len(eval_rows)
    stats.train_tokens = sum(len(r["input_ids"]) for r in train_rows)
    stats.train_answer_tokens = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in train_rows)
    train_ds = Dataset.from_list(train_rows)
    eval_ds = Dataset.from_list(eval_rows) if eval_rows else None
    return train_ds, eval_ds, stats
