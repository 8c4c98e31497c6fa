"""Read personas and instruction questions from the shapes they come in.

Personas: JSONL/JSON with `persona` or `input persona`, plain text one per line, CSV/TSV, Parquet,
or a Hugging Face dataset id. Questions: Alpaca, LIMA, ShareGPT, chat `messages`, self-instruct,
PH-Instruct, a plain `question`/`prompt` field, text lines, or a Hugging Face dataset id.

Every reader streams, and a bad row raises `InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from opencharacter.records import Question, question_id_for

PERSONA_FIELDS = ("persona", "input persona", "input_persona")


class InputError(ValueError):
    """A malformed input row. Raised before any model call, so nothing is spent on bad data."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class PersonaRow:
    persona: str
    source: str
    line: int


def is_hub_id(src: str) -> bool:
    """`owner/name` that is not a local path is taken as a Hugging Face dataset id."""
    return not Path(src).exists() and src.count("/") == 1 and not src.startswith((".", "/", "~"))


def iter_rows(src: str, *, config: str | None = None, split: str = "train") -> Iterator[tuple[int, Any]]:
    """(line number, row) pairs; a row is a dict, or a str for plain text lines."""
    if is_hub_id(src):
        yield from _iter_hub(src, config, split)
        return
    path = Path(src).expanduser()
    if not path.exists():
        raise InputError(src, None, "no such file (and not a Hugging Face dataset id of the form owner/name)")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for i, row in enumerate(reader, start=2):  # line 1 is the header
                yield i, row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        line = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                line += 1
                yield line, row
    else:  # plain text, one item per line
        with path.open(encoding="utf-8") as f:
            for i, text in enumerate(f, start=1):
                yield i, text.rstrip("\n")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                hint = "" if line.endswith("\n") else (
                    "; it is the last line and has no newline: a write cut off by a crash? Running the "
                    "command that wrote the file again repairs it"
                )
                raise InputError(str(path), i, f"invalid JSON ({exc.msg} at column {exc.colno}){hint}") from exc


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, f"invalid JSON ({exc.msg})") from exc
    if isinstance(data, dict):  # {"data": [...]} or similar single-key wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(str(path), None, "expected a JSON list of records")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(str(path), None, "expected a JSON list of records")
    yield from enumerate(data, start=1)  # "line" is the 1-based item index here


def _iter_hub(src: str, config: str | None, split: str) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise InputError(src, None, "reading a Hugging Face dataset needs: pip install 'opencharacter[hub]'") from exc
    try:
        dataset = datasets.load_dataset(src, config, split=split, streaming=True)
    except Exception as exc:  # the hub raises many types: network, auth, missing config
        raise InputError(src, None, f"cannot load Hugging Face dataset ({type(exc).__name__}: {exc})") from exc
    yield from enumerate(dataset, start=1)


def iter_personas(src: str, *, config: str | None = None, split: str = "train") -> Iterator[PersonaRow]:
    for line, row in iter_rows(src, config=config, split=split):
        if isinstance(row, str):
            if not row.strip():
                continue  # blank lines in text files are layout, not data
            persona = row
        elif isinstance(row, dict):
            field = next((f for f in PERSONA_FIELDS if f in row), None)
            if field is None:
                raise InputError(src, line, f"no persona field (expected one of: {', '.join(PERSONA_FIELDS)})")
            persona = row[field]
        else:
            raise InputError(src, line, f"expected an object or a text line, got {type(row).__name__}")
        if not isinstance(persona, str) or not persona.strip():
            raise InputError(src, line, "empty persona")
        yield PersonaRow(persona=persona.strip(), source=src, line=line)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _join(instruction: str, extra: Any) -> str:
    extra_text = _text(extra)
    return f"{instruction}\n\n{extra_text}" if extra_text else instruction


def parse_question_row(row: Any) -> tuple[str | None, str | None, str]:
    """(question, answer, format) from any supported row shape; question None if absent."""
    if isinstance(row, str):
        return _text(row), None, "text"
    if not isinstance(row, dict):
        return None, None, "unknown"
    if "instances" in row and "instruction" in row:  # self-instruct
        instances = row.get("instances") or [{}]
        first = instances[0] if isinstance(instances[0], dict) else {}
        q = _text(row.get("instruction"))
        return (_join(q, first.get("input")) if q else None), _text(first.get("output")), "self-instruct"
    if "instruction" in row:  # Alpaca
        q = _text(row.get("instruction"))
        return (_join(q, row.get("input")) if q else None), _text(row.get("output")), "alpaca"
    if "synthesized text" in row:  # PH-Instruct: the synthesized user prompt, no answer
        return _text(row.get("synthesized text")), None, "ph-instruct"
    if "messages" in row and isinstance(row["messages"], list):
        return _first_exchange([(m.get("role"), m.get("content")) for m in row["messages"] if isinstance(m, dict)], "messages")
    if "conversations" in row and isinstance(row["conversations"], list):
        turns = row["conversations"]
        if turns and all(isinstance(t, str) for t in turns):  # LIMA: alternating strings
            return _text(turns[0]), (_text(turns[1]) if len(turns) > 1 else None), "lima"
        pairs = [(t.get("from") or t.get("role"), t.get("value") or t.get("content")) for t in turns if isinstance(t, dict)]
        return _first_exchange(pairs, "sharegpt")
    for key in ("question", "prompt", "query", "text"):
        if key in row:
            answer = next((_text(row.get(k)) for k in ("answer", "response", "output", "completion") if _text(row.get(k))), None)
            return _text(row.get(key)), answer, "plain"
    return None, None, "unknown"


def _first_exchange(turns: list[tuple[Any, Any]], fmt: str) -> tuple[str | None, str | None, str]:
    question = answer = None
    for role, content in turns:
        role = str(role).lower()
        if question is None and role in ("user", "human"):
            question = _text(content)
        elif question is not None and role in ("assistant", "gpt", "bot", "model"):
            answer = _text(content)
            break
    return question, answer, fmt


def iter_questions(src: str, *, config: str | None = None, split: str = "train") -> Iterator[Question]:
    for line, row in iter_rows(src, config=config, split=split):
        if isinstance(row, str) and not row.strip():
            continue
        question, answer, fmt = parse_question_row(row)
        if fmt == "unknown":
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise InputError(src, line, f"unrecognised question format (fields: {keys}); see `opencharacter dialogues --help`")
        if not question:
            raise InputError(src, line, f"empty question ({fmt} format)")
        source = Path(src).stem if not is_hub_id(src) else src
        yield Question(question_id=question_id_for(question), question=question, answer=answer, source=source)


RecordT = TypeVar("RecordT", bound=BaseModel)


def iter_run_records(path: Path, model: type[RecordT], kind: str) -> Iterator[tuple[int, RecordT]]:
    """Validated records of a JSONL file the pipeline wrote, with their line numbers.

    A torn last line (a crash mid-write) is skipped: its task was never finished and runs again.
    Anything else that does not fit is an `InputError` naming the file and line.
    """
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, model.model_validate(json.loads(line))
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    continue
                raise InputError(str(path), line_no, f"invalid JSON ({exc.msg})") from exc
            except ValidationError as exc:
                error = exc.errors()[0]
                raise InputError(str(path), line_no, f"not a {kind} record: {error['msg']} at {error['loc']}") from exc
