"""Shared fixtures: where the real public data lives, and a tiny model built on the spot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # for tests/tiny_model.py

SHARED_DATA = TESTS.parents[1] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"the shared data folder is missing: {SHARED_DATA} (CI clones the repo beside ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
