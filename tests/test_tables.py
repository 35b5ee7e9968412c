"""The study tables' arithmetic on hand-made rows: gains over the starting model against the control."""

from __future__ import annotations

import json

import pytest
from fake_runs import correct, write_run

from pspo_repro.analysis import tables


def _rows(model: str, label: str, accuracies: list[float]) -> list[dict]:
    seeds = [None] if label == tables.START else range(len(accuracies))
    return [
        {
            "model": model,
            "objective": label,
            "seed": seed,
            "benchmark": "synthetic",
            "metric": "strict",
            "accuracy": a,
        }
        for seed, a in zip(seeds, accuracies, strict=True)
    ]


def test_gains_against_the_shuffled_control():
    rows = (
        _rows("m", "start", [0.50])
        + _rows("m", "clip", [0.70, 0.68, 0.72])
        + _rows("m", "pspo", [0.52, 0.40, 0.61])
        + _rows("m", "clip-shuffled", [0.30, 0.32, 0.28])
    )
    by_label = {g["objective"]: g for g in tables.gains(rows, "synthetic")}
    clip = by_label["clip"]
    assert clip["gain_mean"] == pytest.approx(0.20)
    assert clip["gain_sd"] == pytest.approx(0.02)
    assert clip["control_gain_mean"] == pytest.approx(-0.20)
    assert clip["difference"] == pytest.approx(0.40)
    assert clip["beats_control"] is None  # judged only from the runs themselves (study_dir)
    assert by_label["pspo"]["difference"] == pytest.approx(0.21)
    assert by_label["clip-shuffled"]["difference"] is None  # the control is not compared with itself


def _judged_study(tmp_path, arm_rates: dict[str, float], control_rate: float):
    study = tmp_path / "study"
    rows = _rows("m", "start", [0.5])
    for index, (label, rate) in enumerate({**arm_rates, "clip-shuffled": control_rate}.items()):
        for seed in (0, 1):
            vector = correct(rate, seed=10 * index + seed)
            write_run(study, "m", label, seed, vector)
            rows.append(
                {
                    "model": "m",
                    "objective": label,
                    "seed": seed,
                    "benchmark": "synthetic",
                    "metric": "strict",
                    "accuracy": float(vector.mean()),
                    "run": f"m/{label}/seed{seed}",
                }
            )
    return {g["objective"]: g for g in tables.gains(rows, "synthetic", study_dir=study)}


def test_the_control_verdict_comes_from_the_inference_module_and_can_say_each_thing(tmp_path):
    judged = _judged_study(tmp_path, {"clip": 0.75, "pspo": 0.51, "topr": 0.30}, control_rate=0.5)
    clip, pspo, topr = judged["clip"], judged["pspo"], judged["topr"]
    assert clip["beats_control"] is True and clip["p_holm"] < 0.05
    assert clip["difference_ci_low"] > 0.15 and clip["difference_ci_high"] < 0.35
    # one point above the control on 400 problems and two seeds: not detectable, and the table says how much
    # would have been
    assert pspo["beats_control"] is False and pspo["difference_ci_low"] < 0 < pspo["difference_ci_high"]
    assert 0.02 < pspo["mdd"] < 0.2
    assert topr["beats_control"] is False and topr["difference_ci_high"] < 0  # lower than the control
    assert topr["below_control"] is True and pspo["below_control"] is False and clip["below_control"] is False
    assert judged["clip-shuffled"]["beats_control"] is None
    table = tables.control_table(list(judged.values()))
    assert "| m | pspo | synthetic | 2 | 50.0 |" in table
    assert f"no (one above {100 * pspo['mdd']:.1f} would likely show) |" in table
    assert "| yes |" in table
    assert "| topr | synthetic | 2 | 50.0 |" in table and "| no: below the control |" in table


def test_builds_give_each_builds_start_and_gain_and_the_spread_between_them():
    rows = []
    for build, start, clip in ((0, 0.30, [0.60, 0.64]), (1, 0.36, [0.58, 0.62]), (2, 0.33, [0.45, 0.47])):
        model = f"tiny-general-s@{build}"
        rows += _rows(model, "start", [start]) + _rows(model, "clip", clip)
        rows += _rows(model, "clip-shuffled", [start + 0.01, start - 0.01])
    rows += _rows("Qwen/Qwen2.5-0.5B", "start", [0.3]) + _rows("Qwen/Qwen2.5-0.5B", "clip", [0.4, 0.5])

    def judged(rows):  # every compared arm beats its control unless it gains under 5 points more
        out = tables.gains(rows, "synthetic")
        for g in out:
            if g["difference"] is not None:
                g["beats_control"] = g["difference"] > 0.05
        return out

    by_arm = {r["objective"]: r for r in tables.builds(judged(rows))}
    assert set(by_arm) == {"clip", "clip-shuffled"}  # hub models have no builds
    clip = by_arm["clip"]
    assert clip["model"] == "tiny-general-s" and clip["builds"] == 3
    assert clip["starts"] == [0.30, 0.36, 0.33]
    assert clip["gains"] == pytest.approx([0.32, 0.24, 0.13])
    assert clip["gain_mean"] == pytest.approx(0.23)
    assert clip["gain_between_build_sd"] == pytest.approx(0.0953939, abs=1e-6)
    assert clip["beats_control_on_every_build"] is True
    assert by_arm["clip-shuffled"]["beats_control_on_every_build"] is None
    # a build where the arm does not beat its control makes the verdict no
    rows += _rows("tiny-general-s@3", "start", [0.3]) + _rows("tiny-general-s@3", "clip", [0.31, 0.29])
    rows += _rows("tiny-general-s@3", "clip-shuffled", [0.3, 0.31])
    clip = next(r for r in tables.builds(judged(rows)) if r["objective"] == "clip")
    assert clip["builds"] == 4 and clip["beats_control_on_every_build"] is False
    table = tables.builds_table(tables.builds(judged(rows)))
    assert (
        "| tiny-general-s | clip | synthetic | 4 | 30.0 / 36.0 / 33.0 / 30.0 | 32.0 / 24.0 / 13.0 / 0.0 |"
        in table
    )


def test_staleness_table_shows_the_stalest_level():
    rows = [
        {
            "model": "m",
            "objective": "clip",
            "seed": s,
            "staleness": k,
            "steps": 2,
            "zero_weight_frac": 0.01 * k,
            "zero_weight_frac_max": 0.02 * k,
            "ratio_outside": 0.03 * k,
        }
        for s in (0, 1)
        for k in range(16)
    ]
    table = tables.staleness_table(rows)
    assert (
        "| m | clip | 0.00 ± 0.00 | 1.00 ± 0.00 | 2.00 ± 0.00 | 3.00 ± 0.00 | 15 | 15.00 ± 0.00 (30.00) | 45.00 ± 0.00 |"
        in table
    )


def test_written_files_are_readable_by_everyone(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay owner-only."""
    from pspo_repro.study import rundir

    rundir.atomic_write_text(tmp_path / "t.md", "x")
    assert (tmp_path / "t.md").stat().st_mode & 0o777 == 0o644


def _summary(accuracies: dict[str, float]) -> dict:
    metrics = {m: {"accuracy": a, "ci95": [a - 0.1, a + 0.1]} for m, a in accuracies.items()}
    return {"settings": {"model": "m"}, "benchmarks": {"synthetic": {"n_problems": 10, "metrics": metrics}}}


def test_accuracy_table_has_a_paper_column(tmp_path):
    """Every metric of the graders is a column, the paper's included; a summary written before the paper
    metric existed gives its other columns and an empty paper cell."""
    from pspo_repro.evaluation import grading
    from pspo_repro.study import rundir

    rundir.atomic_write_json(
        tmp_path / "m/start/eval/summary.json",
        _summary({"strict": 0.5, "flexible": 0.6, "permissive": 0.7, "paper": 0.55}),
    )
    for seed, paper in ((0, 0.8), (1, None)):
        run = tmp_path / f"m/clip/seed{seed}"
        rundir.atomic_write_json(run / "config.json", {"model": "m", "seed": seed, "label": "clip"})
        rundir.mark_done(run)
        accuracies = {"strict": 0.7, "flexible": 0.75, "permissive": 0.9}
        rundir.atomic_write_json(
            run / "eval/summary.json", _summary({**accuracies, **({"paper": paper} if paper else {})})
        )
    rows = tables.collect(tmp_path)
    assert tables.METRICS == grading.METRICS
    assert sorted(r["accuracy"] for r in rows if r["metric"] == "paper") == [0.55, 0.8]
    table = tables.accuracy_table(rows).splitlines()
    assert table[0] == (
        "| model | objective | seeds | synthetic strict | synthetic flexible | synthetic permissive "
        "| synthetic paper |"
    )
    assert table[2] == "| m | start | - | 50.0 | 60.0 | 70.0 | 55.0 |"
    assert table[3] == "| m | clip | 2 | 70.0 ± 0.0 | 75.0 ± 0.0 | 90.0 ± 0.0 | 80.0 |"


def test_timing_counts_each_build_the_runs_started_from_once(tmp_path, monkeypatch):
    """Warm starts: the build of every run's own marker, each once (two runs of one build, one of another);
    training: the runs' seconds; evaluation: the generation seconds of every summary, starts included."""
    monkeypatch.setenv("PSPO_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    for build, seconds in (("tiny-a-000", 60.0), ("tiny-a@1-111", 90.0)):
        (tmp_path / "cache" / "tiny" / build).mkdir(parents=True)
        (tmp_path / "cache" / "tiny" / build / "recipe.json").write_text(
            json.dumps({"build_seconds": seconds})
        )
    for model, seed, build in (
        ("tiny-a@0", 0, "tiny-a-000"),
        ("tiny-a@0", 1, "tiny-a-000"),
        ("tiny-a@1", 0, "tiny-a@1-111"),
    ):
        folder = study / model / "clip" / f"seed{seed}"
        (folder / "eval").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model": model, "seed": seed, "label": "clip"}))
        (folder / "DONE").write_text(json.dumps({"seconds": 10.0}))
        (folder / "model_build.json").write_text(json.dumps({"build": build}))
        summary = {"benchmarks": {"synthetic": {"generation_seconds": 2.0}}}
        (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    (study / "tiny-a@0" / "start" / "eval").mkdir(parents=True)
    summary = {"benchmarks": {"synthetic": {"generation_seconds": 3.0}, "other": {"generation_seconds": 1.0}}}
    (study / "tiny-a@0" / "start" / "eval" / "summary.json").write_text(json.dumps(summary))
    rows = {r["stage"]: r for r in tables.collect_timing(study)}
    assert rows["warm starts"]["core_seconds"] == 150.0 and rows["warm starts"]["tasks"] == 2
    assert rows["training (with validation)"]["core_seconds"] == 30.0
    assert rows["evaluation"]["core_seconds"] == 10.0
