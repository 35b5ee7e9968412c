"""Shared fixtures: offline hub, the benchmark data folder, and a scratch cache for tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PSPO_TEST_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder (../shared/data next to the repo); skips when it is absent."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (set PSPO_TEST_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache for tiny models, so that tests never read or write the user's cache."""
    path = tmp_path_factory.mktemp("pspo-cache")
    os.environ["PSPO_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_cache) -> Path:
    """The micro model `tiny-test` (a few seconds of warm start), as a Hugging Face folder."""
    from pspo_repro import tiny

    return tiny.ensure("tiny-test", progress=False)
