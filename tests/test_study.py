"""Profiles expand into runs with layered settings; a small study trains, evaluates and tabulates."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from pspo_repro.study import profiles, runner


def test_shipped_profiles_expand():
    assert {"paper", "smoke", "cpu"} <= set(profiles.profile_names())
    paper = profiles.expand(profiles.load_profile("paper"))
    assert len(paper) == 3 * 5 * 5 + 2 * 5  # clip-eps0 at the two Qwen2.5 sizes
    by_key = {(r.model, r.label, r.seed): r.settings for r in paper}
    # the released script's clip: eps 0 and lr 5e-7 at both sizes, beside the intended eps
    for model in ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B"):
        eps0 = by_key[(model, "clip-eps0", 2)]
        assert (eps0.objective, eps0.epsilon, eps0.learning_rate, eps0.num_iterations) == (
            "clip",
            0.0,
            5e-7,
            2,
        )
    assert ("Qwen/Qwen2-Math-1.5B", "clip-eps0", 0) not in by_key
    # layering: train < models < objectives < cells
    assert by_key[("Qwen/Qwen2.5-0.5B", "clip", 0)].epsilon == 0.1
    assert by_key[("Qwen/Qwen2.5-1.5B", "clip", 0)].epsilon == 0.2
    assert by_key[("Qwen/Qwen2.5-0.5B", "clip", 0)].learning_rate == 1e-6
    assert by_key[("Qwen/Qwen2.5-1.5B", "clip", 0)].learning_rate == 5e-7
    assert by_key[("Qwen/Qwen2-Math-1.5B", "pspo", 3)].alpha == 0.4
    assert by_key[("Qwen/Qwen2.5-0.5B", "noclip", 0)].num_iterations == 1
    assert by_key[("Qwen/Qwen2.5-0.5B", "pspo", 0)].num_iterations == 2
    assert by_key[("Qwen/Qwen2.5-0.5B", "pspo", 0)].grad_accum == 16


def test_the_field_profile_runs_each_objective_as_its_paper_does():
    """The field's objectives beside PSPO on tiny-general-l; clip-higher is a label over the clip."""
    from pspo_repro.training import objectives

    runs = profiles.expand(profiles.load_profile("field"))
    by_label = {r.label: r.settings for r in runs if r.seed == 0}
    assert {r.model for r in runs} == {"tiny-general-l@0", "tiny-general-l@1"} and len(runs) == 17 * 3 * 2
    assert {s.objective for s in by_label.values()} == {
        "clip",
        "dualclip",
        "gspo",
        "cispo",
        "vespo",
        "pspo",
        "noclip",
    }
    higher = by_label["clip-higher"]
    assert (higher.objective, higher.epsilon, higher.epsilon_high) == ("clip", 0.2, 0.28)
    gspo = by_label["gspo"]
    assert (gspo.epsilon, gspo.epsilon_high, gspo.loss_type) == (3e-4, 4e-4, "grpo")
    assert objectives.level_of(gspo.objective, gspo.ratio_level) == "sequence"
    assert by_label["cispo"].objective_params() == {"epsilon_high": 5.0}
    assert by_label["dualclip"].objective_params() == {"epsilon": 0.2, "clip_ratio_c": 3.0}
    stress = by_label["gspo-stress"]
    assert (stress.objective, stress.loss_type, stress.num_iterations) == ("gspo", "grpo", 4)
    # the cpu profile's runs are not touched by it
    cpu = {r.label for r in profiles.expand(profiles.load_profile("cpu"))}
    assert not cpu & {"clip-higher", "dualclip", "gspo", "cispo", "vespo"}


def test_labelled_variants_run_their_objective():
    profile = {
        "models": ["tiny-test"],
        "train": {"learning_rate": 1e-4},
        "objectives": {
            "clip": {},
            "clip-shuffled": {"objective": "clip", "shuffle_advantages": True},
            "pspo-sgd": {"objective": "pspo", "optimizer": "sgd", "learning_rate": 0.5},
        },
    }
    runs = {r.label: r for r in profiles.expand(profile)}
    assert set(runs) == {"clip", "clip-shuffled", "pspo-sgd"}
    assert runs["clip-shuffled"].settings.objective == "clip"
    assert runs["clip-shuffled"].settings.shuffle_advantages is True
    assert runs["clip"].settings.shuffle_advantages is False
    assert (runs["pspo-sgd"].settings.objective, runs["pspo-sgd"].settings.optimizer) == ("pspo", "sgd")
    assert runs["pspo-sgd"].settings.learning_rate == 0.5 and runs["clip"].settings.learning_rate == 1e-4
    assert runs["pspo-sgd"].name == "tiny-test/pspo-sgd/seed0"
    assert runs["pspo-sgd"].settings.label == "pspo-sgd"  # the label travels in config.json
    with pytest.raises(ValueError, match="'cilp'"):
        profiles.expand({**profile, "objectives": {"typo": {"objective": "cilp"}}})


def test_builds_nest_seeds_in_independent_warm_starts_of_each_tiny_model():
    profile = {
        "models": {"tiny-general-s": {"alpha": 0.3}, "tiny-math-l": {}, "Qwen/Qwen2.5-0.5B": {}},
        "seeds": [0, 1],
        "builds": [0, 1, 2],
        "objectives": {"clip": {}, "pspo": {"models": ["tiny-math-l"]}},
        "cells": [{"model": "tiny-general-s", "objective": "clip", "set": {"learning_rate": 3e-4}}],
    }
    runs = profiles.expand(profile)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 3 * 2 + 3 * 2 * 2 + 2  # hub models have no builds
    assert "tiny-general-s@2/clip/seed1" in names and "Qwen--Qwen2.5-0.5B/clip/seed1" in names
    by_name = {r.name: r.settings for r in runs}
    # model settings, objective restrictions and cells name the model without its build
    assert by_name["tiny-general-s@1/clip/seed0"].alpha == 0.3
    assert by_name["tiny-general-s@1/clip/seed0"].learning_rate == 3e-4
    assert by_name["tiny-general-s@1/clip/seed0"].model == "tiny-general-s@1"
    assert {r.model for r in runs if r.label == "pspo"} == {"tiny-math-l@0", "tiny-math-l@1", "tiny-math-l@2"}
    # selecting a model without its build selects every build; with it, that build alone
    assert len(profiles.select(runs, models=["tiny-math-l"])) == 3 * 2 * 2
    assert {r.model for r in profiles.select(runs, models=["tiny-math-l@1"])} == {"tiny-math-l@1"}
    for bad in ([], [0, 0], [-1], "two"):
        with pytest.raises(ValueError, match="profile builds must"):
            profiles.expand({**profile, "builds": bad})


def test_select_a_slice_of_a_profile():
    runs = profiles.expand(profiles.load_profile("cpu"))
    picked = profiles.select(runs, models=["tiny-math-l"], objectives=["clip", "pspo"], seeds=[1])
    assert [(r.model, r.label, r.seed) for r in picked] == [
        ("tiny-math-l@0", "clip", 1),
        ("tiny-math-l@1", "clip", 1),
        ("tiny-math-l@0", "pspo", 1),
        ("tiny-math-l@1", "pspo", 1),
    ]
    grid = [r for r in runs if r.label.startswith(profiles.GRID_PREFIX)]
    assert len(profiles.select(runs, seeds=[0])) == (len(runs) - len(grid)) // 2 + len(grid) // 2
    with pytest.raises(ValueError, match=r"model\(s\) \['tiny-nope'\] not in the profile"):
        profiles.select(runs, models=["tiny-nope"])


def test_bad_profiles_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'nope'; known profiles: .*paper"):
        profiles.load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": ["tiny-test"], "objectives": {"clip": {}}, "trian": {}}))
    with pytest.raises(ValueError, match=r"unknown keys \['trian'\]"):
        profiles.load_profile(str(bad))
    typo = {"models": ["tiny-test"], "objectives": {"clip": {"learning_rat": 1}}}
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rat'\]"):
        profiles.expand(typo)
    cell = {
        "models": ["tiny-test"],
        "objectives": {"clip": {}},
        "cells": [{"model": "x", "objective": "clip"}],
    }
    with pytest.raises(ValueError, match=r"cell \('x', 'clip'\) names a model or objective"):
        profiles.expand(cell)


@pytest.mark.slow
def test_small_study_end_to_end(tiny_model, tmp_path):
    profile = yaml.safe_load((resources.files("pspo_repro") / "profiles" / "smoke.yaml").read_text())
    profile["objectives"] = {"clip": {"epsilon": 0.2}, "pspo": {"alpha": 0.1}}
    profile["train"].update(max_steps=2, validation_limit=8, batch_size=8)
    profile["eval"].update(benchmarks=["synthetic", "synthetic-asdiv"], limit=6)
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = runner.run_study(str(path), tmp_path / "runs", tmp_path / "results", progress=False)
    assert (result.failed, result.busy) == ([], [])
    table = result.table
    rows = list(csv.DictReader((table.parent / "accuracy.csv").read_text().splitlines()))
    assert len(rows) == 3 * 2 * 4  # (starting model + 2 objectives) x benchmarks x metrics
    assert {r["objective"] for r in rows} == {"start", "clip", "pspo"}
    assert all(r["n"] == "6" and 0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    md = table.read_text()
    assert md.splitlines()[0].startswith("| model | objective | seeds | synthetic strict |")
    assert md.splitlines()[2].startswith("| tiny-test | start | - |")  # the starting model comes first
    assert "| tiny-test | pspo | 1 |" in md
    control = list(csv.DictReader((table.parent / "control.csv").read_text().splitlines()))
    assert {(r["objective"], r["benchmark"]) for r in control} == {
        (o, b) for o in ("clip", "pspo") for b in ("synthetic", "synthetic-asdiv")
    }
    staleness = list(csv.DictReader((table.parent / "staleness.csv").read_text().splitlines()))
    assert {(r["objective"], r["staleness"]) for r in staleness} == {
        (o, s) for o in ("clip", "pspo") for s in ("0", "1")
    }
    training = list(csv.DictReader((table.parent / "training.csv").read_text().splitlines()))
    assert sorted(r["objective"] for r in training) == ["clip", "pspo"]
    for r in training:
        run = tmp_path / "runs" / table.parent.name / "tiny-test" / r["objective"] / "seed0"
        history = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
        assert float(r["validation_first"]) == history[0]["strict"]
        assert float(r["validation_last"]) == history[-1]["strict"]
        assert r["steps"] == "2" and float(r["seconds_per_step"]) > 0
        best = max(history[1:], key=lambda h: h["reward"])  # chosen among the steps after 0
        assert (int(r["best_step"]), float(r["validation_best"])) == (best["step"], best["strict"])
    assert float(next(r for r in training if r["objective"] == "pspo")["zero_weight_frac"]) == 0.0
    assert "| tiny-test | clip | 1 |" in (table.parent / "training.md").read_text()
    # a second call finds every run and evaluation finished and only rewrites the table
    done = sorted(p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("DONE"))
    runner.run_study(str(path), tmp_path / "runs", tmp_path / "results", progress=False)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("DONE")) == done


def test_a_profile_extends_another(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump(
            {"name": "child", "extends": "cpu", "seeds": [0, 1, 2, 3, 4], "train": {"max_steps": 7}}
        )
    )
    profile = profiles.load_profile(str(child))
    base = profiles.load_profile("cpu")
    assert profile["seeds"] == [0, 1, 2, 3, 4] and profile["name"] == "child"
    assert profile["train"] == {**base["train"], "max_steps": 7}
    assert profile["objectives"] == base["objectives"] and profile["eval"] == base["eval"]
    runs = profiles.expand(profile)
    main = [r for r in profiles.expand(base) if not r.label.startswith(profiles.GRID_PREFIX)]
    assert len(runs) == len(main) // 2 * 5 + len(profiles.expand(base)) - len(
        main
    )  # the grid keeps its seeds
    assert {r.settings.max_steps for r in runs if r.label == "clip"} == {7}
    full = profiles.load_profile("cpu-full")
    assert full["seeds"] == [0, 1, 2, 3, 4] and "extends" not in full


@pytest.mark.slow
def test_a_failing_run_fails_alone_and_the_study_exits_non_zero(tiny_model, tmp_path):
    """A model that cannot be loaded (a hub id, offline) fails its runs; the tiny model's run finishes and is
    tabulated; the command lists the failure and exits with status 1."""
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    profile = yaml.safe_load((resources.files("pspo_repro") / "profiles" / "smoke.yaml").read_text())
    profile.update(
        name="mixed", models=["tiny-test", "nobody/no-such-model"], objectives={"clip": {"epsilon": 0.2}}
    )
    profile["train"].update(max_steps=1, validation_limit=4, batch_size=8)
    profile["eval"].update(benchmarks=["synthetic"], limit=4)
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(profile))
    args = [
        "study",
        "--profile",
        str(path),
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "res"),
    ]
    result = CliRunner().invoke(app, [*args, "--workers", "1", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "2 run(s) failed" in result.output
    assert (
        "nobody--no-such-model/clip/seed0: OSError" in result.output
        and "nobody/no-such-model/start" in result.output
    )
    failed = tmp_path / "runs" / "mixed" / "nobody--no-such-model" / "clip" / "seed0"
    assert "Traceback" in (failed / "FAILED").read_text() and not (failed / "DONE").exists()
    rows = list(csv.DictReader((tmp_path / "res" / "mixed" / "accuracy.csv").read_text().splitlines()))
    assert {(r["model"], r["objective"]) for r in rows} == {("tiny-test", "start"), ("tiny-test", "clip")}


def test_task_order_keeps_workers_busy_during_warm_starts(tmp_path):
    """Independent models' starts first (they build side by side), a continued model's start just before its
    parent's runs (the parent is built by then), and its own runs last."""
    runs = profiles.expand(profiles.load_profile("cpu"))
    names = [t.name for t in runner.tasks(runs, tmp_path, ["synthetic"], {}, None)]
    starts = [f"{m}@{b}/start" for m in ("tiny-general-s", "tiny-general-l") for b in (0, 1)]
    assert names[:4] == starts
    for build in (0, 1):  # each build of tiny-math-l continues the same build of tiny-general-l
        math_start = names.index(f"tiny-math-l@{build}/start")
        assert names[math_start + 1] == f"tiny-general-l@{build}/clip/seed0"
    math_runs = [r for r in runs if r.model.startswith("tiny-math-l")]
    assert all(n.startswith("tiny-math-l@") for n in names[-len(math_runs) :]) and len(names) == len(runs) + 6
    kinds = {t.name: t.kind for t in runner.tasks(runs, tmp_path, ["synthetic"], {}, None)}
    assert kinds["tiny-math-l@1/start"] == "base" and kinds["tiny-math-l@1/clip/seed0"] == "train"


@pytest.mark.slow
def test_slurm_launcher_submits_one_job_per_run_under_the_locks(tiny_model, tmp_path):
    """The slurm launcher with submitit's local executor (real jobs, each its own process) on the smoke
    profile (one objective, one step): a run whose lock is held is not submitted and is reported busy; the other job trains and
    evaluates; re-running submits only what is left, and never trains a finished run again."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from pspo_repro.cli import app

    profile = yaml.safe_load((resources.files("pspo_repro") / "profiles" / "smoke.yaml").read_text())
    profile["objectives"] = {"clip": {"epsilon": 0.2}}
    profile["train"].update(max_steps=1, validation_limit=4, batch_size=8)
    profile["eval"].update(benchmarks=["synthetic"], limit=4)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(profile))
    runs = tmp_path / "runs"
    start = runs / "smoke" / "tiny-test" / "start"
    hold = "import sys, time\nfrom pathlib import Path\nfrom pspo_repro.study.launch import folder_lock\n"
    hold += "with folder_lock(Path(sys.argv[1])) as held:\n    print(held, flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(start)], stdout=subprocess.PIPE, text=True)
    args = ["study", "--profile", str(path), "--runs", str(runs)]
    args += ["--results", str(tmp_path / "res"), "--launcher", "slurm", "--quiet"]
    args += ["--slurm", "cluster=local", "--slurm", "poll_s=0.5"]
    try:
        assert holder.stdout.readline().strip() == "True"
        first = CliRunner().invoke(app, args)
    finally:
        holder.kill()
        holder.wait()
    assert first.exit_code == 0, first.output
    assert "1 run(s) were being trained by another process: tiny-test/start" in first.output
    clip = runs / "smoke" / "tiny-test" / "clip" / "seed0"
    assert (clip / "DONE").is_file() and not (start / "eval").exists()
    job = json.loads((clip / "job.json").read_text())
    assert job["cluster"] == "local" and (runs / "smoke" / "jobs" / f"{job['job_id']}_0_log.out").is_file()
    done = (clip / "DONE").stat().st_mtime_ns

    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert (start / "eval" / "summary.json").is_file()
    assert (clip / "DONE").stat().st_mtime_ns == done  # finished: not submitted again
    assert json.loads((start / "job.json").read_text())["job_id"] != job["job_id"]
    rows = list(csv.DictReader((tmp_path / "res" / "smoke" / "accuracy.csv").read_text().splitlines()))
    assert {r["objective"] for r in rows} == {"start", "clip"}


def test_bad_launcher_settings_are_clear_errors(tmp_path):
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    base = ["study", "--profile", "smoke", "--runs", str(tmp_path), "--results", str(tmp_path)]
    result = CliRunner().invoke(app, [*base, "--launcher", "slurm", "--slurm", "partiton=gpu"])
    assert result.exit_code == 2
    assert "unknown slurm setting(s) ['partiton']; allowed: partition" in result.output
    result = CliRunner().invoke(app, [*base, "--launcher", "pbs"])
    assert result.exit_code == 2 and "launcher must be one of local, slurm, got 'pbs'" in result.output
    assert not (tmp_path / "smoke").exists()


def test_time_limits_come_from_the_profile_and_the_command_line(tmp_path):
    """Each task carries its phases' time limits: the defaults, then the profile's ``limits`` (merged key by
    key through ``extends``), then the command line's; a bad one stops the study before any run folder."""
    from typer.testing import CliRunner

    from pspo_repro.cli import app
    from pspo_repro.study import launch

    assert profiles.load_profile("cpu")["limits"] == profiles.load_profile("cpu-full")["limits"]
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"name": "child", "extends": "smoke", "limits": {"eval": None}}))
    profile = profiles.load_profile(str(child))
    assert profile["limits"] == {**profiles.load_profile("smoke")["limits"], "eval": None}
    limits = launch.time_limits(profile.get("limits"), {"train": 90})
    tasks = runner.tasks(profiles.expand(profile), tmp_path, ["synthetic"], {}, None, limits)
    assert {(t.kind, t.time_limits["train"], t.time_limits["eval"]) for t in tasks} == {
        ("base", 90.0, None),
        ("train", 90.0, None),
    }
    base = ["study", "--profile", "smoke", "--runs", str(tmp_path), "--results", str(tmp_path)]
    result = CliRunner().invoke(app, [*base, "--time-limit", "eval=-1"])
    assert result.exit_code == 2 and "time limit of eval is -1" in result.output, result.output
    result = CliRunner().invoke(app, [*base, "--time-limit", "evaluation=60"])
    assert result.exit_code == 2 and "unknown phase(s) ['evaluation']" in result.output
    assert not (tmp_path / "smoke").exists()


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed here"
)
def test_a_profile_that_needs_vllm_fails_before_any_run_where_it_is_missing(tmp_path):
    """The paper profile evaluates with vLLM: without vLLM the study stops at once, naming the profile and
    the fix, and creates no run folder (rather than failing at the first evaluation, after hours)."""
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    with pytest.raises(
        ImportError, match=r"profile 'paper' needs vLLM \(its evaluation backend is vllm\)"
    ) as err:
        runner.run_study("paper", tmp_path / "runs", tmp_path / "results", progress=False)
    assert "pip install -e '.[vllm]'" in str(err.value) and "scripts/setup_env.sh" in str(err.value)
    with pytest.raises(ImportError, match=r"profile 'paper-vllm' needs vLLM \(.*rollouts use vLLM"):
        runner.run_study("paper-vllm", tmp_path / "runs", tmp_path / "results", progress=False)
    args = [
        "study",
        "--profile",
        "paper",
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "res"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: profile 'paper' needs vLLM"), result.output
    # a Slurm job checks on its node, whose environment may not be this one, and fails before any work
    from pspo_repro.study import slurm

    task = runner.tasks(
        profiles.expand(profiles.load_profile("paper")),
        tmp_path / "runs",
        ["gsm8k"],
        {"backend": "vllm"},
        None,
    )[0]
    outcome = slurm.run_job(task)
    assert outcome.status == "failed" and outcome.error.startswith(f"run {task.name} needs vLLM")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


GRID = {
    "models": {"tiny-general-s": {"learning_rate": 2e-4}, "tiny-general-l": {}},
    "seeds": [0, 1, 2],
    "builds": [0, 1],
    "train": {
        "max_steps": 20,
        "eval_every": 5,
        "warmup_steps": 4,
        "steps_per_generation": 2,
        "batch_size": 64,
    },
    "objectives": {"clip": {}},
    "grid": {
        "model": "tiny-general-s",
        "seeds": [0, 1],
        "reuse": [1, 4, 16],
        "learning_rates": [1e-4, 4e-4],
        "generations": 3,
        "benchmarks": ["synthetic"],
        "objectives": {"clip": {"epsilon": 0.2}, "ctl": {"objective": "clip", "shuffle_advantages": True}},
    },
}


def test_the_grid_changes_only_staleness_along_reuse_and_runs_generations_not_steps():
    runs = profiles.expand(GRID)
    grid = [r for r in runs if r.label.startswith(profiles.GRID_PREFIX)]
    assert len(runs) - len(grid) == 2 * 2 * 3  # the main arm: two models x two builds x three seeds
    assert len(grid) == 2 * 3 * 2 * 2  # objectives x reuse x learning rates x seeds, on the first build only
    assert {r.model for r in grid} == {"tiny-general-s@0"}
    cell = {(r.label, r.seed): r for r in grid}[("grid-ctl-r16-lr0.0004", 1)]
    s = cell.settings
    # one mini-batch per generation used `reuse` times: the same completions per update, only staleness grows
    assert (s.num_iterations, s.steps_per_generation, s.batch_size) == (16, 1, 64)
    assert (s.max_steps, s.eval_every, s.warmup_steps) == (3 * 16, 3 * 16, 0)  # validated at start and end
    assert (s.learning_rate, s.objective, s.shuffle_advantages) == (4e-4, "clip", True)
    assert cell.benchmarks == ("synthetic",)
    assert profiles.parse_grid_label(cell.label) == ("ctl", 16, 4e-4)
    assert profiles.parse_grid_label("clip-shuffled") is None
    main = next(r for r in runs if r.label == "clip")
    assert (main.settings.num_iterations, main.settings.max_steps, main.benchmarks) == (2, 20, None)
    assert (cell.eval_limit, main.eval_limit) == (None, None)
    limited = profiles.expand({**GRID, "grid": {**GRID["grid"], "eval_limit": 512}})
    assert {r.eval_limit for r in limited if r.label.startswith(profiles.GRID_PREFIX)} == {512}
    # the grid's own probe_every replaces the profile's (here TrainSettings' 11), raised past multiples of a
    # cell's reuse so that the probes rotate through staleness; 0 turns the cosine probes off at every reuse
    quiet = profiles.expand({**GRID, "grid": {**GRID["grid"], "probe_every": 0}})
    assert {r.settings.probe_every for r in quiet if r.label.startswith(profiles.GRID_PREFIX)} == {0}
    assert {r.settings.probe_every for r in quiet if r.label == "clip"} == {11}
    every_fourth = profiles.expand({**GRID, "grid": {**GRID["grid"], "probe_every": 4}})
    assert {
        (r.settings.num_iterations, r.settings.probe_every)
        for r in every_fourth
        if r.label.startswith("grid-")
    } == {
        (1, 4),
        (4, 5),
        (16, 4),
    }
    # an objective evaluated on some benchmarks only
    narrow = profiles.expand({**GRID, "objectives": {"clip": {"benchmarks": ["synthetic"]}}, "grid": None})
    assert {r.benchmarks for r in narrow} == {("synthetic",)}
    tasks = runner.tasks(narrow[:1], Path("/tmp/x"), ["synthetic", "synthetic-asdiv"], {"limit": None}, None)
    assert tasks[-1].benchmarks == ("synthetic",)
    limited_tasks = runner.tasks(
        [r for r in limited if r.label.startswith(profiles.GRID_PREFIX)][:1],
        Path("/tmp/x"),
        ["synthetic"],
        {},
        None,
    )
    assert limited_tasks[-1].eval_options == {"limit": 512}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "tiny-math-l"}, "grid model 'tiny-math-l' is not among"),
        ({"reuse": []}, "grid needs a non-empty 'reuse'"),
        ({"reuse": [0, 4]}, r"grid reuse must be integers >= 1, got \[0, 4\]"),
        ({"generations": 0}, "grid generations must be an integer >= 1, got 0"),
        ({"steps": 3}, r"grid has unknown keys \['steps'\]"),
        ({"eval_limit": 0}, "grid eval_limit must be an integer >= 1 or absent, got 0"),
        ({"probe_every": -1}, "grid probe_every must be an integer >= 0 or absent, got -1"),
    ],
)
def test_bad_grids_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        profiles.expand({**GRID, "grid": {**GRID["grid"], **change}})


@pytest.mark.slow
def test_a_grid_study_end_to_end_keeps_its_cells_out_of_the_main_tables(tiny_model, tmp_path):
    profile = yaml.safe_load((resources.files("pspo_repro") / "profiles" / "smoke.yaml").read_text())
    profile["objectives"] = {"clip": {"epsilon": 0.2}}
    profile["train"].update(max_steps=2, validation_limit=8, batch_size=8)
    profile["eval"].update(benchmarks=["synthetic", "synthetic-asdiv"], limit=6)
    profile["grid"] = {
        "model": "tiny-test",
        "seeds": [0, 1],
        "reuse": [1, 2],
        "learning_rates": [1e-3],
        "generations": 1,
        "benchmarks": ["synthetic"],
        "objectives": {
            "clip": {"epsilon": 0.2},
            "noclip": {},
            "clip-shuffled": {"objective": "clip", "shuffle_advantages": True},
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = runner.run_study(str(path), tmp_path / "runs", tmp_path / "results", progress=False)
    assert (result.failed, result.busy) == ([], [])
    out = result.table.parent
    main = list(csv.DictReader((out / "accuracy.csv").read_text().splitlines()))
    assert {r["objective"] for r in main} == {"start", "clip"}  # the grid's cells have their own tables
    cells = list(csv.DictReader((out / "phase.csv").read_text().splitlines()))
    assert sorted((r["objective"], r["reuse"], r["runs"]) for r in cells) == [
        ("clip", "1", "2"),
        ("clip", "2", "2"),
        ("clip-shuffled", "1", "2"),
        ("clip-shuffled", "2", "2"),
        ("noclip", "1", "2"),
        ("noclip", "2", "2"),
    ]
    winners = list(csv.DictReader((out / "phase-winners.csv").read_text().splitlines()))
    assert [(w["reuse"], {w["best"], w["runner_up"]}) for w in winners] == [
        ("1", {"clip", "noclip"}),
        ("2", {"clip", "noclip"}),
    ]
    study = tmp_path / "runs" / out.name / "tiny-test"
    cell = study / "grid-clip-r2-lr0.001" / "seed1"
    history = [json.loads(line) for line in (cell / "validation.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2]  # one generation used twice: validated at start and end
    assert sorted(p.name for p in (cell / "eval").glob("*.jsonl")) == ["synthetic.jsonl"]
    assert (out / "phase-winners.png").is_file() and "| clip | 2 | 0.001 | 2 |" in (
        out / "phase.md"
    ).read_text()
