"""The committed full phase diagram (``results/cpu-full``, made by ``scripts/phase_grid.sh cpu-full``) is every
cell of the ``cpu-full`` profile's grid at the same seeds (the profile's first three or more), all trained and
evaluated by one clean commit of the code, and its table's accuracies are the means of the runs' own evaluation
summaries beside it."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest

from pspo_repro.analysis import run_logs
from pspo_repro.study import profiles, rundir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "cpu-full"
LOGS = RESULTS / run_logs.FOLDER
MODEL = "tiny-general-s@0"  # the grid's model: cpu-full's grid model at its first build


@functools.cache
def _grid_runs() -> dict[tuple[str, int], dict]:
    """(label, seed) -> the run's provenance, for every committed grid run (read once)."""
    found = {}
    for path in LOGS.rglob(rundir.PROVENANCE):
        seed_dir = path.parent
        found[(seed_dir.parent.name, int(seed_dir.name.removeprefix("seed")))] = json.loads(path.read_text())
    return found


def _strict(label: str, seed: int) -> float:
    summary = LOGS / MODEL / label / f"seed{seed}" / rundir.EVAL / rundir.SUMMARY
    return json.loads(summary.read_text())["benchmarks"]["synthetic"]["metrics"]["strict"]["accuracy"]


def _seeds() -> list[int]:
    return sorted({seed for _, seed in _grid_runs()})


def test_every_cell_of_the_cpu_full_grid_is_committed_at_the_same_seeds_from_one_clean_commit():
    profile = profiles.load_profile("cpu-full")
    labels = {r.label for r in profiles.expand(profile) if profiles.parse_grid_label(r.label)}
    assert len(labels) == 11 * 5 * 3  # objectives (the control included) x reuse x learning rates
    seeds = _seeds()
    assert len(seeds) >= 3 and seeds == profile["grid"]["seeds"][: len(seeds)]
    runs = _grid_runs()
    planned = {(label, seed) for label in labels for seed in seeds}
    assert set(runs) == planned, (
        f"missing {sorted(planned - set(runs))[:3]}, unplanned {sorted(set(runs) - planned)[:3]}"
    )
    assert {p["package_digest"] for p in runs.values()} == {runs[min(runs)]["package_digest"]}
    assert {p["git_commit"] for p in runs.values()} == {runs[min(runs)]["git_commit"]}
    assert not any(p["git_dirty"] for p in runs.values())
    assert {p["argv"][p["argv"].index("--profile") + 1] for p in runs.values()} == {"cpu-full"}


def test_the_full_grid_table_is_the_mean_of_its_runs_evaluations():
    with (RESULTS / "phase.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 * 5 * 3  # one row per (objective, reuse, learning rate), the controls included
    seeds = _seeds()
    for row in rows:
        label = profiles.grid_label(row["objective"], int(row["reuse"]), float(row["learning_rate"]))
        accuracies = [_strict(label, seed) for seed in seeds]
        assert int(row["runs"]) == len(seeds)
        assert float(row["accuracy"]) == pytest.approx(sum(accuracies) / len(seeds), abs=1e-12), label
