"""Append-only JSONL result files that survive a crash at any moment.

Each record is one `write()` of one line followed by a flush to the OS, so a SIGKILL loses at most
the requests in flight; a torn last line (power loss, disk full) is cut off when the file is
reopened, and that task simply runs again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson


def dumps(record: Any) -> str:
    """One compact JSON line (orjson: several times faster than json on the hot path)."""
    return orjson.dumps(record).decode("utf-8")


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by a crash). Returns bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the previous newline in blocks.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            idx = block.rfind(b"\n")
            if idx != -1:
                keep = pos - step + idx + 1
                break
            pos -= step
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file, skipping a torn (undecodable) line instead of failing."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue


def read_ids(path: Path, id_field: str) -> set[str]:
    """The ids already stored in `path`, read fast: records are written with their id first."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    prefix = re.compile(r'^\{"' + re.escape(id_field) + r'":\s*"([^"\\]+)"')
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            match = prefix.match(line)
            if match and line.endswith("\n"):
                ids.add(match.group(1))
                continue
            try:
                value = orjson.loads(line).get(id_field)
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, str):
                ids.add(value)
    return ids


class JsonlAppender:
    """Opened once per stage; `append` writes a whole line and flushes it to the OS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(path)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(dumps(record) + "\n")
        self._file.flush()

    def close(self, sync: bool = True) -> None:
        if self._file.closed:
            return
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
