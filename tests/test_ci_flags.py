"""The CI flag PSPO_REQUIRE_DATA: a test that would skip for missing benchmark data fails instead."""

from __future__ import annotations

import pytest
from conftest import REQUIRE_DATA, skip_for_missing_data


def test_missing_data_skips_by_default(monkeypatch):
    monkeypatch.delenv(REQUIRE_DATA, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no data here"):
        skip_for_missing_data("no data here")


def test_missing_data_fails_when_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_DATA, "1")
    with pytest.raises(pytest.fail.Exception, match="no data here .PSPO_REQUIRE_DATA=1"):
        skip_for_missing_data("no data here")
