"""The committed reference results were made by the code that ships: every run's and every evaluation's
provenance carries the digest of the package it ran with, and it must equal this checkout's; every run came
from a profile inside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pspo_repro.analysis import run_logs
from pspo_repro.study import profiles, rundir

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "results" / "cpu" / run_logs.FOLDER


def _profile_of(argv: list[str]) -> str | None:
    return argv[argv.index("--profile") + 1] if "--profile" in argv else None


def test_every_committed_run_and_evaluation_ran_the_shipped_code():
    digest = rundir.package_digest()
    runs = sorted(LOGS.rglob(rundir.PROVENANCE))
    summaries = sorted(LOGS.rglob(f"{rundir.EVAL}/{rundir.SUMMARY}"))
    assert len(runs) >= 100 and len(summaries) >= len(runs)
    stale = [
        p.parent.relative_to(LOGS).as_posix()
        for p in runs
        if json.loads(p.read_text()).get("package_digest") != digest
    ]
    assert not stale, f"{len(stale)} runs trained with other code than this checkout's, e.g. {stale[:3]}"
    stale = [
        s.parent.parent.relative_to(LOGS).as_posix()
        for s in summaries
        if json.loads(s.read_text())["provenance"].get("package_digest") != digest
    ]
    assert not stale, f"{len(stale)} evaluations made with other code than this checkout's, e.g. {stale[:3]}"
    outside = {_profile_of(json.loads(p.read_text())["argv"]) for p in runs} - set(profiles.profile_names())
    assert not outside, f"runs from profiles outside the repository: {sorted(map(str, outside))}"


def test_the_digest_changes_with_any_package_file(tmp_path, monkeypatch):
    before = rundir.package_digest()
    assert len(before) == 20 and before == rundir.package_digest()
    rundir.package_digest.cache_clear()
    marker = Path(rundir.__file__).resolve().parents[1] / "profiles" / "zz-digest-test.yaml"
    try:
        marker.write_text("name: zz\n")
        assert rundir.package_digest() != before
    finally:
        marker.unlink()
        rundir.package_digest.cache_clear()
    assert rundir.package_digest() == before


@pytest.mark.parametrize("argv", [["x", "study", "--profile", "cpu"], ["x", "audit"]])
def test_the_profile_is_read_from_the_command_line(argv):
    assert _profile_of(argv) == ("cpu" if "--profile" in argv else None)
