"""Shared fixtures: offline hub, the benchmark data folder, and the micro model built once per test run.

``PSPO_REQUIRE_DATA=1`` (set by CI) turns a skip for missing benchmark data into a failure, so a CI
machine without the data cannot pass by skipping the tests that read it."""

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
REQUIRE_DATA = "PSPO_REQUIRE_DATA"


def skip_for_missing_data(reason: str) -> None:
    """Skip the calling test because data it needs is absent; fail instead when ``PSPO_REQUIRE_DATA=1``."""
    if os.environ.get(REQUIRE_DATA) == "1":
        pytest.fail(f"{reason} ({REQUIRE_DATA}=1: missing data is an error)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder (../shared/data next to the repo); skips when it is absent."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        skip_for_missing_data(f"benchmark data not found at {SHARED_DATA} (set PSPO_TEST_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache for tiny models, so that tests never read or write the user's cache."""
    path = tmp_path_factory.mktemp("pspo-cache")
    os.environ["PSPO_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_cache) -> Path:
    """The micro model `tiny-test` (a few seconds of warm start), as a Hugging Face folder: built once per
    test run, in the session's cache, and shared by every test that trains, evaluates or inspects it."""
    from pspo_repro.models import tiny

    return tiny.ensure("tiny-test", progress=False)
