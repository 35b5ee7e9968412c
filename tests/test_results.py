"""Tidy frames from a real (small) study: coordinates, runs left out reported, metrics discovered, the main
table recomputed from the raw records, intervals over seeds, one figure's series."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from importlib import resources

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import yaml
from scipy import stats

from pspo_repro.analysis import aggregate, figures, results, style
from pspo_repro.study import runner


@pytest.fixture(scope="module")
def mini(tiny_model, tmp_path_factory):
    """A study of tiny-test x (clip, pspo) x seeds 0 and 1, every run trained and evaluated, and the
    profile written beside its tables."""
    root = tmp_path_factory.mktemp("mini-study")
    profile = yaml.safe_load((resources.files("pspo_repro") / "profiles" / "smoke.yaml").read_text())
    profile.update(name="mini", seeds=[0, 1])
    profile["objectives"] = {"clip": {"epsilon": 0.2}, "pspo": {"alpha": 0.1}}
    profile["train"].update(max_steps=2, validation_limit=8, batch_size=8, eval_every=1)
    profile["eval"].update(benchmarks=["synthetic", "synthetic-asdiv"], limit=6)
    path = root / "mini.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = runner.run_study(str(path), root / "runs", root / "results", progress=False)
    assert result.failed == []
    return root


def _copy(mini, tmp_path):
    shutil.copytree(mini / "runs", tmp_path / "runs")
    shutil.copytree(mini / "results", tmp_path / "results")
    return tmp_path


@pytest.mark.slow
def test_frames_have_coordinates_and_every_finished_run(mini):
    s = results.load("mini", mini / "runs", mini / "results")
    assert s.problems.empty
    runs = s.runs
    assert list(zip(runs["label"], runs["seed"], runs["status"], strict=True)) == [
        ("clip", 0, "done"),
        ("clip", 1, "done"),
        ("pspo", 0, "done"),
        ("pspo", 1, "done"),
    ]
    # settings that differ between runs are columns (epsilon: 0.2 for clip, the default 0.1 for pspo); the
    # others are not (alpha is 0.1 everywhere)
    assert list(runs["epsilon"]) == [0.2, 0.2, 0.1, 0.1] and "alpha" not in runs
    assert s.benchmarks == ["synthetic", "synthetic-asdiv"]
    assert s.metrics == ["paper", "strict", "flexible", "permissive"]
    assert (s.training_benchmark, s.out_of_distribution) == ("synthetic", ["synthetic-asdiv"])
    validation = s.validation()
    assert sorted(set(validation["step"])) == [0, 1, 2]
    assert len(validation) == 4 * 3
    probes = s.probes()
    assert len(probes) == 4 * 2 and {"grad_norm_attention", "ratio_q99", "zero_weight_frac"} <= set(probes)
    samples = s.probe_samples()
    assert set(samples.columns) >= {"ratio", "advantage", "weight", "staleness"} and len(samples) > 0
    records = s.records()
    # the starting model and four runs, each on 6 problems of two benchmarks
    assert len(records) == 5 * 2 * 6
    assert records.loc[records["label"] == "start", "seed"].isna().all()
    assert set(records.loc[records["benchmark"] == "synthetic", "category_transfer"].dropna()) <= {
        "0",
        "1",
        "2",
    }
    summaries = s.summaries()
    assert len(summaries) == 5 * 2 * 4  # runs x benchmarks x metrics
    cats = s.categories()
    assert {"transfer", "n_ops"} <= set(cats.loc[cats["benchmark"] == "synthetic", "category"])


@pytest.mark.slow
def test_missing_partial_and_failed_runs_are_reported(mini, tmp_path):
    root = _copy(mini, tmp_path)
    study_dir = root / "runs" / "mini" / "tiny-test"
    profile = yaml.safe_load((root / "results" / "mini" / "profile.yaml").read_text())
    profile["seeds"] = [0, 1, 2]  # seed 2 of each arm: never started
    (root / "results" / "mini" / "profile.yaml").write_text(yaml.safe_dump(profile))
    (study_dir / "clip" / "seed1" / "DONE").unlink()  # started, not finished
    (study_dir / "pspo" / "seed1" / "DONE").unlink()
    (study_dir / "pspo" / "seed1" / "FAILED").write_text("Traceback...\nRuntimeError: out of memory\n")
    (study_dir / "start" / "eval" / "synthetic-asdiv.jsonl").unlink()
    summary = json.loads((study_dir / "start" / "eval" / "summary.json").read_text())
    del summary["benchmarks"]["synthetic-asdiv"]
    (study_dir / "start" / "eval" / "summary.json").write_text(json.dumps(summary))

    s = results.load("mini", root / "runs", root / "results")
    problems = {
        (p.label, p.seed if p.seed == p.seed else None): (p.status, p.detail) for p in s.problems.itertuples()
    }
    assert problems == {
        ("clip", 1): ("partial", "started, not finished (no DONE)"),
        ("pspo", 1): ("failed", "RuntimeError: out of memory"),
        ("clip", 2): ("missing", "no run folder"),
        ("pspo", 2): ("missing", "no run folder"),
        ("start", None): ("not evaluated", "synthetic-asdiv"),
    }
    assert "2 of 6 runs finished" in s.status() and "2 missing" in s.status()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validation = s.validation()
    assert any("left out of the frames" in str(w.message) for w in caught)
    assert set(zip(validation["label"], validation["seed"], strict=True)) == {("clip", 0), ("pspo", 0)}


@pytest.mark.slow
def test_an_arm_is_missing_only_the_benchmarks_its_profile_entry_asks_for(mini, tmp_path):
    """An arm with its own ``benchmarks`` (the eps-0 clip tested on the test set only) is complete without the
    others; the profile's models are named by build, so a start is looked for under ``<model>@<build>``."""
    root = _copy(mini, tmp_path)
    study_dir = root / "runs" / "mini" / "tiny-test"
    profile_path = root / "results" / "mini" / "profile.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    profile["objectives"]["pspo"]["benchmarks"] = ["synthetic"]
    profile_path.write_text(yaml.safe_dump(profile))
    for arm in ("clip", "pspo"):  # both evaluated on the test set only
        for seed in (0, 1):
            evaluation = study_dir / arm / f"seed{seed}" / "eval"
            (evaluation / "synthetic-asdiv.jsonl").unlink()
            summary = json.loads((evaluation / "summary.json").read_text())
            del summary["benchmarks"]["synthetic-asdiv"]
            (evaluation / "summary.json").write_text(json.dumps(summary))
    problems = results.load("mini", root / "runs", root / "results").problems
    # clip lacks a benchmark the profile gives it; pspo lacks only one it was never to be tested on
    assert sorted(zip(problems["label"], problems["detail"], strict=True)) == [
        ("clip", "synthetic-asdiv"),
        ("clip", "synthetic-asdiv"),
    ]
    built = results.Study(
        "b", tmp_path, tmp_path, spec={**profile, "models": ["tiny-test"], "builds": [0, 1]}
    )
    assert built.models_in_profile == ["tiny-test@0", "tiny-test@1"]


@pytest.mark.slow
def test_metrics_are_discovered_from_the_records(mini, tmp_path):
    """Records written before the paper metric existed have three metrics, and the frames say so."""
    root = _copy(mini, tmp_path)
    for path in (root / "runs").rglob("eval/*.jsonl"):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for rec in lines:
            for g in rec["grades"]:
                del g["paper"], g["paper_answer"]
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = results.load("mini", root / "runs", root / "results")
    assert s.metrics == ["strict", "flexible", "permissive"]
    assert results.order_metrics(["x", "permissive", "strict", "paper"]) == [
        "paper",
        "strict",
        "permissive",
        "x",
    ]


def _raw_accuracy(run_dir, benchmark, metric):
    lines = (run_dir / "eval" / f"{benchmark}.jsonl").read_text().splitlines()
    grades = [json.loads(x)["grades"][0][metric] for x in lines]
    return sum(grades) / len(grades)


@pytest.mark.slow
def test_main_table_is_the_mean_over_seeds_of_the_raw_records(mini):
    s = results.load("mini", mini / "runs", mini / "results")
    table = aggregate.accuracy_table(s.records(), s.metrics)
    assert len(table) == 3 * 2 * 4  # (start, clip, pspo) x benchmarks x metrics
    base = mini / "runs" / "mini" / "tiny-test"
    for row in table.itertuples():
        if row.label == "start":
            expected = [_raw_accuracy(base / "start", row.benchmark, row.metric)]
            assert (row.seeds, row.n) == (0, 6)
        else:
            expected = [
                _raw_accuracy(base / row.label / f"seed{k}", row.benchmark, row.metric) for k in (0, 1)
            ]
            assert (row.seeds, row.n) == (2, 6)
        assert row.mean == pytest.approx(np.mean(expected))
        if len(expected) == 2 and expected[0] != expected[1]:
            assert (row.ci_low, row.ci_high) == pytest.approx((min(expected), max(expected)))
    wide = aggregate.wide(table)
    assert list(wide.columns[:5]) == ["model", "label", "seeds", "synthetic paper", "synthetic strict"]
    assert (
        wide.loc[wide["label"] == "start", "synthetic strict"].item()
        == f"{100 * _raw_accuracy(base / 'start', 'synthetic', 'strict'):.1f}"
    )


def test_seed_interval_is_scipys_bootstrap_and_one_seed_has_none():
    values = [0.61, 0.70, 0.66, 0.75, 0.58]
    mean, low, high = aggregate.seed_interval(values)
    direct = stats.bootstrap(
        (np.array(values),), np.mean, method="percentile", n_resamples=9999, rng=np.random.default_rng(0)
    ).confidence_interval
    assert (mean, low, high) == pytest.approx((0.66, direct.low, direct.high))
    assert min(values) < low < mean < high < max(values)
    one = aggregate.seed_interval([0.4])
    assert one[0] == 0.4 and math.isnan(one[1]) and math.isnan(one[2])
    assert aggregate.format_interval(*one, seeds=1) == "40.0 (1 seed)"
    assert aggregate.format_interval(0.5, 0.4, 0.6, seeds=3) == "50.0 [40.0, 60.0]"
    assert aggregate.seed_interval([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)


def test_a_study_profile_is_found_by_file_by_written_copy_or_by_package(tmp_path):
    """A profile file gives its name; a name gives the profile the study wrote beside its tables before the
    packaged one of that name; a name with neither has none."""
    spec = {"name": "mine", "extends": "smoke", "seeds": [3]}
    given = tmp_path / "anything.yaml"
    given.write_text(yaml.safe_dump(spec))
    name, loaded = results.study_profile(str(given), tmp_path / "results")
    assert (name, loaded["seeds"], loaded["train"]["dataset"]) == ("mine", [3], "synthetic")
    assert results.study_profile("mine", tmp_path / "results") == ("mine", None)
    (tmp_path / "results" / "mine").mkdir(parents=True)
    (tmp_path / "results" / "mine" / "profile.yaml").write_text(yaml.safe_dump(loaded))
    assert results.study_profile("mine", tmp_path / "results") == ("mine", loaded)
    packaged = results.study_profile("smoke", tmp_path / "results")
    assert packaged[0] == "smoke" and packaged[1]["name"] == "smoke" and packaged[1]["seeds"] != [3]


@pytest.mark.slow
def test_published_cells_are_never_invented(mini):
    s = results.load("mini", mini / "runs", mini / "results")
    table = aggregate.accuracy_table(s.records(), s.metrics)
    pub = aggregate.published()
    assert len(pub) == 6 and set(pub["label"]) == {"pspo", "clip"}
    comparison = aggregate.with_published(table, "flexible")
    ours = comparison[comparison["model"] == "tiny-test"]
    assert set(ours["published"]) == {"not reported"} and set(ours["difference"]) == {""}
    theirs = comparison[comparison["model"] != "tiny-test"]
    assert set(theirs["ours"]) == {"not run"}
    row = theirs[(theirs["model"] == "Qwen/Qwen2.5-0.5B") & (theirs["label"] == "pspo")]
    assert row["published"].item() == "39.7 (v1)"


@pytest.mark.slow
def test_a_curve_figure_has_one_line_per_arm_at_the_seed_means(mini):
    s = results.load("mini", mini / "runs", mini / "results")
    validation = s.validation()
    fig = figures.curves(validation, "strict", s.labels, s.models, "validation strict (%)", scale=100)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["clip", "pspo"]
    for line in lines:
        expected = validation[validation["label"] == line.get_label()].groupby("step")["strict"].mean()
        assert list(line.get_xdata()) == list(expected.index)
        assert list(line.get_ydata()) == pytest.approx(list(100 * expected.to_numpy()))
        assert line.get_color() == style.arm_style(line.get_label())["color"]
    matplotlib.pyplot.close(fig)


def test_each_arm_has_one_style():
    assert style.arm_style("clip-stress")["color"] == style.arm_style("clip")["color"]
    assert style.arm_style("clip-stress")["linestyle"] == "--"
    assert style.arm_style("noclip-onpolicy")["linestyle"] == ":"
    # a parameter in the label pales the objective's colour, the smaller value more; SGD has its own line
    assert style.arm_style("clip-eps0")["color"] == "#a6cee4"  # 0x00 + (0xff - 0x00) * 0.65 = 0xa6
    assert style.arm_style("clip-eps0.1")["color"] not in {"#a6cee4", style.COLOURS["clip"]}
    assert style.arm_style("clip-stress-eps0") == {**style.arm_style("clip-eps0"), "linestyle": "--"}
    assert style.arm_style("pspo-a0.9-sgd")["linestyle"] == style.LINESTYLES["sgd"]
    assert style.arm_style("clip-shuffled")["color"] == style.CONTROL_COLOUR
    assert style.arm_style("newobjective") == style.arm_style("newobjective")


def test_transfer_gains_pool_tagged_categories_and_subtract_each_models_start():
    """Tagged = any transfer steps (values 1 and 2 pooled by their counts); the gain is each seed's accuracy
    minus the start's on the same group, with the standard error over seeds."""
    import pandas as pd

    from pspo_repro.analysis import aggregate

    def row(label, seed, value, n, accuracy, metric="strict", category="transfer"):
        return {
            "model": "m", "label": label, "objective": label, "seed": seed, "benchmark": "synthetic-svamp",
            "category": category, "value": value, "n": n, "metric": metric, "accuracy": accuracy,
        }  # fmt: skip

    cats = pd.DataFrame(
        [
            row("start", None, "0", 60, 0.5),
            row("start", None, "1", 30, 0.1),
            row("start", None, "2", 10, 0.3),
            row("clip", 0, "0", 60, 0.5),
            row("clip", 0, "1", 30, 0.4),
            row("clip", 0, "2", 10, 0.4),
            row("clip", 1, "0", 60, 0.6),
            row("clip", 1, "1", 30, 0.6),
            row("clip", 1, "2", 10, 0.2),
            row("clip", 1, "0", 60, 0.9, metric="permissive"),
            row("clip", 1, "past", 60, 0.9, category="variant"),
        ]  # fmt: skip
    )
    out = aggregate.transfer_gains(cats, "strict").set_index("group")
    start_tagged = (30 * 0.1 + 10 * 0.3) / 40  # 0.15
    seeds_tagged = [(30 * 0.4 + 10 * 0.4) / 40, (30 * 0.6 + 10 * 0.2) / 40]  # 0.4, 0.5
    assert out.loc["tagged", "start"] == pytest.approx(start_tagged)
    assert out.loc["tagged", "gain"] == pytest.approx(sum(seeds_tagged) / 2 - start_tagged)
    assert out.loc["tagged", "gain_se"] == pytest.approx(0.05)  # sd of (0.25, 0.35) / sqrt(2)
    assert out.loc["untagged", "gain"] == pytest.approx(0.05) and out.loc["untagged", "n"] == 60
    assert out.loc["tagged", "seeds"] == 2 and out.loc["tagged", "n"] == 40
