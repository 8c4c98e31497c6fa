"""`run.json`: what a run did, with what settings and versions — never an API key.

A stage's entry holds its latest status and what is still failed (by reason), and figures that add
up over every invocation (a resumed run's requests, tokens and cost count too).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from opencharacter.engine.store import dumps, iter_jsonl

_VERSIONED = ("opencharacter", "aiohttp", "pydantic", "jinja2", "transformers", "torch", "trl", "peft")
_SECRET_WORDS = ("key", "token", "secret", "password", "authorization", "credential")
# Figures that add up over the invocations of a stage (a resumed run spends more).
_CUMULATIVE = ("succeeded", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "elapsed_s")


def package_versions() -> dict[str, str]:
    """Versions of the packages this process actually uses (imported ones: cheap, and what matters)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) or getattr(module, "VERSION", None)
        if module is not None and not version:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        if version:
            versions[name] = str(version)
    return versions


def _is_secret(key: str) -> bool:
    words = key.lower().replace("-", "_").split("_")
    if words[-1] == "env":  # the *name* of a variable that holds a secret is fine
        return False
    return any(word in _SECRET_WORDS for word in words)  # "max_tokens" is not a token; "api_key" is


def scrub(settings: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a secret value; names of environment variables are kept."""
    return {
        key: scrub(value) if isinstance(value, dict) else value
        for key, value in settings.items()
        if not _is_secret(key)
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_manifest(run_dir: Path, stage: str, stage_info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Merge one stage's figures into `run.json`, keeping the other stages' entries."""
    path = run_dir / "run.json"
    manifest: dict[str, Any] = {}
    if path.exists():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}
    manifest.setdefault("created", now())
    manifest["updated"] = now()
    manifest["command"] = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    manifest["versions"] = package_versions()
    stages_by_name = manifest.setdefault("stages", {})
    previous = stages_by_name.get(stage) or {}
    entry = {**stage_info, "settings": scrub(settings), "invocations": previous.get("invocations", 0) + 1}
    for key in _CUMULATIVE:
        if key in stage_info:
            entry[key] = round(previous.get(key, 0) + stage_info[key], 6)
    stages_by_name[stage] = entry
    stages = stages_by_name.values()
    manifest["totals"] = {
        "requests": sum(s.get("requests", 0) for s in stages),
        "prompt_tokens": sum(s.get("prompt_tokens", 0) for s in stages),
        "completion_tokens": sum(s.get("completion_tokens", 0) for s in stages),
        "cost_usd": round(sum(s.get("cost_usd", 0.0) for s in stages), 6),
        "failed": sum(s.get("failed_now", s.get("failed", 0)) for s in stages),
    }
    write_json_atomic(path, manifest)
    return manifest


def compact_failures(failures_path: Path, stage: str, done: set[str]) -> Counter[str]:
    """Keep one (the latest) failure per task, and none for tasks (ids in `done`) that since succeeded.

    Returns `stage`'s tasks that are still failed, counted by reason.
    """
    if not failures_path.exists() or failures_path.stat().st_size == 0:
        return Counter()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in iter_jsonl(failures_path):
        key = (str(record.get("stage")), str(record.get("task_id")))
        if key[0] == stage and key[1] in done:
            continue
        latest.pop(key, None)  # keep insertion order of the latest occurrence
        latest[key] = record
    tmp = failures_path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in latest.values():
            f.write(dumps(record) + "\n")
    os.replace(tmp, failures_path)
    return Counter(str(record.get("reason")) for (s, _), record in latest.items() if s == stage)
