"""The phase diagram's numbers from constructed run folders: effects over each cell's own control, Holm over
the cells, a winner only where the difference is significant, and the figures written."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_runs import correct, write_run, write_start

from pspo_repro.analysis import phase
from pspo_repro.study import profiles


@pytest.fixture
def study(tmp_path: Path) -> Path:
    study = tmp_path / "cpu"
    write_start(study, "tiny-general-s@0", 0.40)
    # two cells: at reuse 1 clip and noclip learn alike; at reuse 16 noclip collapses and the clip holds
    rates = {
        ("clip", 1): 0.60,
        ("noclip", 1): 0.61,
        ("clip-shuffled", 1): 0.42,
        ("clip", 16): 0.55,
        ("noclip", 16): 0.05,
        ("clip-shuffled", 16): 0.40,
    }
    for (objective, reuse), rate in rates.items():
        label = profiles.grid_label(objective, reuse, 4e-4)
        for seed in range(3):
            zero = 0.0 if objective == "noclip" or reuse == 1 else 0.05
            end = rate if rate > 0.1 else 0.02
            write_run(
                study, "tiny-general-s@0", label, seed, correct(rate, 100 * seed + reuse), zero, (0.41, end)
            )
    return study


def test_effects_are_over_the_cells_own_control_and_collapses_are_counted(study):
    rows = {(r["objective"], r["reuse"]): r for r in phase.table(study)}
    assert len(rows) == 6
    clip16, noclip16 = rows[("clip", 16)], rows[("noclip", 16)]
    assert clip16["start"] == pytest.approx(0.40) and clip16["runs"] == 3
    assert clip16["effect_over_control"] == pytest.approx(0.15, abs=0.04)
    assert noclip16["effect_over_control"] == pytest.approx(-0.35, abs=0.04)
    assert noclip16["effect_ci_high"] < 0 < clip16["effect_ci_low"]
    assert noclip16["p_holm"] < 0.05 and noclip16["collapsed"] == 3 and clip16["collapsed"] == 0
    assert (
        clip16["zero_gradient_fraction"] == pytest.approx(0.05) and noclip16["zero_gradient_fraction"] == 0.0
    )
    assert rows[("clip-shuffled", 1)]["effect_over_control"] is None  # a control is not compared with itself


def test_the_start_is_measured_on_the_problems_the_cell_was_tested_on(tmp_path):
    # the start was tested on 800 problems, right on the first 320 (40%); a cell tests the first 400 only,
    # where the start was right on 320 of 400 (80%): its gain is over 80%, not 40%
    study = tmp_path / "cpu"
    write_start(study, "tiny-general-s@0", 0.40, n=800)
    for objective in ("clip", "clip-shuffled"):
        label = profiles.grid_label(objective, 1, 1e-4)
        for seed in range(2):
            write_run(study, "tiny-general-s@0", label, seed, correct(0.9, seed, n=400))
    rows = {r["objective"]: r for r in phase.table(study)}
    assert rows["clip"]["start"] == pytest.approx(0.80)
    assert rows["clip"]["gain"] == pytest.approx(rows["clip"]["accuracy"] - 0.80)


def test_a_cell_has_a_winner_only_where_the_difference_is_significant(study, tmp_path):
    wins = {w["reuse"]: w for w in phase.winners(study)}
    assert wins[16]["best"] == "clip" and wins[16]["winner"] == "clip"
    assert wins[16]["difference"] == pytest.approx(0.50, abs=0.05)
    assert wins[1]["winner"] is None and wins[1]["mdd"] > abs(wins[1]["difference"])
    out = tmp_path / "results"
    out.mkdir()
    assert phase.write(study, out) == out / "phase.md"
    text = (out / "phase.md").read_text()
    assert "| noclip | 16 | 0.0004 | 3 |" in text and "| 16 | 0.0004 | clip | noclip |" in text
    assert "none (a difference under" in text
    for name in ("phase-gain.png", "phase-zero-gradient.png", "phase-winners.png", "phase.csv"):
        assert (out / name).stat().st_size > 1000


def test_a_study_without_a_grid_has_no_phase_tables(tmp_path):
    assert phase.write(tmp_path, tmp_path) is None and not (tmp_path / "phase.md").exists()
