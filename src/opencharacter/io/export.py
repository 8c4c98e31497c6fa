"""Write chat samples as training files other tools read: messages, ShareGPT, OpenAI fine-tuning.

Every input `load_chat_samples` takes can be exported, so the released OpenCharacter files convert
as easily as our own run folders. Output is streamed (JSONL line by line, Parquet in row-group
batches) into a temporary file that replaces `out` only when every row was written, so a bad row
half-way never leaves a half file that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from opencharacter.engine.store import dumps
from opencharacter.io.chat_data import ChatSample, load_chat_samples
from opencharacter.io.readers import InputError


class ExportFormat(str, Enum):
    MESSAGES = "messages"  # {"messages": [...], "sample_id", "character_id"}: HF chat / TRL
    SHAREGPT = "sharegpt"  # {"conversations": [{"from", "value"}], "system"}: LLaMA-Factory
    OPENAI = "openai"  # exactly {"messages": [...]}: OpenAI fine-tuning


class ExportError(Exception):
    """A problem with the export itself (output path, dataset_info.json, Hub), not with a row."""


SUFFIXES = (".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 4096
_SPEAKER = {"user": "human", "assistant": "gpt"}

# LLaMA-Factory's description of our ShareGPT layout (its data/README: "sharegpt" formatting).
SHAREGPT_DATASET_INFO: dict[str, Any] = {
    "formatting": "sharegpt",
    "columns": {"messages": "conversations", "system": "system"},
    "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    format: ExportFormat
    dataset_info: Path | None = None  # written for ShareGPT, for LLaMA-Factory


def output_kind(out: Path) -> str:
    """'jsonl' or 'parquet', from the output's suffix."""
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(f"{out}: output must end in {' or '.join(SUFFIXES)} (got {suffix or 'no suffix'!r})")
    return suffix[1:]


def to_record(sample: ChatSample, fmt: ExportFormat | str) -> dict[str, Any]:
    """One output row for `sample` in `fmt`."""
    fmt = ExportFormat(fmt)
    if fmt is ExportFormat.OPENAI:
        return {"messages": sample.messages}
    if fmt is ExportFormat.MESSAGES:
        return {"messages": sample.messages, "sample_id": sample.sample_id, "character_id": sample.character_id}
    system = sample.system
    turns = sample.messages[1:] if system is not None else sample.messages
    # LLaMA-Factory drops, with only a warning, a conversation that does not alternate human/gpt
    # starting with human; refuse it here instead, naming the row.
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise InputError(sample.source, sample.line, (
                f"ShareGPT needs turns alternating user/assistant starting with user; turn {i + 1} is {m['role']!r}"
            ))
    record: dict[str, Any] = {"conversations": [{"from": _SPEAKER[m["role"]], "value": m["content"]} for m in turns]}
    if system is not None:
        record["system"] = system
    return record


def _parquet_schema(fmt: ExportFormat) -> Any:
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if fmt is ExportFormat.OPENAI:
        return pa.schema([("messages", messages)])
    if fmt is ExportFormat.MESSAGES:
        return pa.schema([("messages", messages), ("sample_id", pa.string()), ("character_id", pa.string())])
    conversations = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    return pa.schema([("conversations", conversations), ("system", pa.string())])


def write_samples(
    samples: Iterable[ChatSample],
    out: str | Path,
    fmt: ExportFormat | str,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Stream `samples` into `out` (JSONL or Parquet by suffix). Returns the rows written."""
    out, fmt = Path(out), ExportFormat(fmt)
    kind = output_kind(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        rows = _write_parquet(samples, tmp, fmt, on_progress) if kind == "parquet" else _write_jsonl(samples, tmp, fmt, on_progress)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _write_jsonl(samples: Iterable[ChatSample], path: Path, fmt: ExportFormat, on_progress: Callable[[int], None] | None) -> int:
    rows = 0
    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(dumps(to_record(sample, fmt)) + "\n")
            rows += 1
            if on_progress and rows % 1000 == 0:
                on_progress(rows)
    return rows


def _write_parquet(samples: Iterable[ChatSample], path: Path, fmt: ExportFormat, on_progress: Callable[[int], None] | None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema(fmt)
    rows = 0
    batch: list[dict[str, Any]] = []
    # zstd: system prompts repeat once per dialogue of a character, and compress to almost nothing.
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for sample in samples:
            batch.append(to_record(sample, fmt))
            if len(batch) >= PARQUET_BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
                batch.clear()
                if on_progress:
                    on_progress(rows)
        if batch or rows == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
    return rows


def write_dataset_info(out: Path, name: str | None = None) -> Path:
    """Add (or replace) `out`'s entry in the `dataset_info.json` beside it, keeping other entries.

    LLaMA-Factory finds datasets through this file in its `dataset_dir`; the entry is named after
    the output file's stem unless `name` is given.
    """
    info_path = out.parent / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{info_path}:{exc.lineno}: invalid JSON ({exc.msg}); fix or remove it, it was left as is") from exc
        if not isinstance(info, dict):
            raise ExportError(f"{info_path}: expected a JSON object of dataset entries; it was left as is")
    info[name or out.stem] = {"file_name": out.name, **SHAREGPT_DATASET_INFO}
    tmp = info_path.with_name(".dataset_info.json.tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, info_path)
    return info_path


def export(
    source: str | Path,
    out: str | Path,
    fmt: ExportFormat | str = ExportFormat.MESSAGES,
    *,
    characters: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Convert anything `load_chat_samples` reads into one training file (+ dataset_info.json for ShareGPT)."""
    out, fmt = Path(out), ExportFormat(fmt)
    output_kind(out)  # fail on a bad suffix before reading anything
    rows = write_samples(load_chat_samples(source, characters), out, fmt, on_progress=on_progress)
    info = write_dataset_info(out) if fmt is ExportFormat.SHAREGPT else None
    return ExportResult(path=out, rows=rows, format=fmt, dataset_info=info)


def load_exported_dataset(path: Path, cache_dir: str | Path | None = None) -> Any:
    """The exported file as a `datasets.Dataset` (memory-mapped through the datasets cache)."""
    try:
        import datasets
    except ImportError as exc:
        raise ExportError("pushing to the Hub needs: pip install 'opencharacter[hub]'") from exc
    loader = datasets.Dataset.from_parquet if output_kind(path) == "parquet" else datasets.Dataset.from_json
    return loader(str(path), cache_dir=str(cache_dir) if cache_dir else None)


def push_to_hub(
    path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> str:
    """Upload an exported file as a Hub dataset (train split). Returns the dataset's URL.

    The token comes from `token` or $HF_TOKEN; without one, fail before loading anything.
    """
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise ExportError(
            "--push-to-hub needs a Hugging Face write token in $HF_TOKEN "
            "(create one at https://huggingface.co/settings/tokens); the file was written locally"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"--push-to-hub expects a dataset id of the form owner/name, got {repo_id!r}")
    dataset = load_exported_dataset(Path(path), cache_dir)
    try:
        dataset.push_to_hub(repo_id, private=private, token=token)
    except Exception as exc:  # network, auth, permissions: hub errors come in many types
        raise ExportError(f"push to {repo_id} failed ({type(exc).__name__}: {exc}); the file was written locally") from exc
    return f"https://huggingface.co/datasets/{repo_id}"
