"""The headline's decomposition from constructed run folders: PSPO equal to noclip run for run, above the
eps-0 clip by a significant margin, and the share of that gap the intended eps closes."""

from __future__ import annotations

import pytest
from fake_runs import correct, write_run

from pspo_repro.analysis import headline


@pytest.fixture
def study(tmp_path):
    study = tmp_path / "cpu"
    for build in (0, 1):
        model = f"tiny-general-l@{build}"
        for seed in (0, 1, 2):
            same = correct(0.70, 10 * build + seed)
            write_run(study, model, "pspo", seed, same)
            write_run(study, model, "noclip", seed, same)  # the identity: the same answers, run for run
            write_run(study, model, "clip", seed, correct(0.66, 100 + 10 * build + seed))
            write_run(study, model, "clip-eps0", seed, correct(0.50, 200 + 10 * build + seed))
    return study


def test_the_decomposition_reads_the_identity_the_clip_and_the_eps0_clip(study, tmp_path):
    rows = {r["against"]: r for r in headline.table(study)}
    assert set(rows) == {"noclip", "clip", "clip-eps0"}
    noclip, clip, eps0 = rows["noclip"], rows["clip"], rows["clip-eps0"]
    assert noclip["effect"] == 0.0 and (noclip["identical_runs"], noclip["paired_runs"]) == (6, 6)
    assert noclip["verdict"] == "no detectable difference"
    assert eps0["verdict"] == "a > b" and eps0["effect"] == pytest.approx(20, abs=3) and eps0["p_holm"] < 0.01
    assert eps0["ci_low"] > 10 and clip["runs"] == 6 and clip["builds"] == 2
    share = headline.gap_share(list(rows.values()), "tiny-general-l")
    assert share == pytest.approx((clip["other"] - eps0["other"]) / (eps0["pspo"] - eps0["other"]), abs=1e-9)
    assert 0.6 < share < 0.95
    path = headline.write(study, tmp_path)
    text = path.read_text()
    assert "| tiny-general-l | the unclipped surrogate | 6 |" in text
    assert "every paired run identical (6 of 6)" in text and "tiny-general-l: " in text


def test_no_share_is_stated_where_pspo_does_not_beat_the_eps0_clip():
    rows = [
        {"model": "m", "against": "clip", "effect": 1.0, "verdict": "no detectable difference"},
        {"model": "m", "against": "clip-eps0", "effect": 2.0, "verdict": "no detectable difference"},
    ]
    assert headline.gap_share(rows, "m") is None
    rows[1]["verdict"] = "a > b"
    assert headline.gap_share(rows, "m") == pytest.approx(0.5)
