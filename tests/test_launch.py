"""Study tasks under per-folder locks: a held lock keeps a second worker off, a dead worker's lock is free
again, and a failing task fails alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pspo_repro.study import launch, rundir

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pspo_repro.study.launch import folder_lock
with folder_lock(Path(sys.argv[1])) as held:
    print("held" if held else "busy", flush=True)
    time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _task(folder: Path, **overrides) -> launch.Task:
    values = dict(
        name="tiny-test/clip/seed0",
        kind="train",
        folder=folder,
        model="tiny-test",
        benchmarks=("synthetic",),
        eval_options={"limit": 4, "batch_size": 4},
        settings={
            "model": "tiny-test",
            "dataset": "synthetic",
            "objective": "clip",
            "label": "clip",
            "max_steps": 1,
            "batch_size": 8,
            "grad_accum": 1,
            "num_generations": 4,
            "warmup_steps": 0,
            "max_completion_length": 12,
            "eval_every": 1,
            "validation_limit": 4,
            "eval_batch_size": 4,
        },
    )
    values.update(overrides)
    return launch.Task(**values)


def test_a_held_lock_keeps_other_workers_off(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with launch.folder_lock(folder) as held:
            assert held is False
        outcome = launch.execute(_task(folder))
        assert (outcome.status, outcome.error) == ("busy", None)
        assert not (folder / "config.json").exists()  # nothing was trained
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_worker_is_free_again(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
    holder.wait()
    with launch.folder_lock(folder) as held:
        assert held is True
        assert (folder / rundir.LOCK).read_text().strip() == str(__import__("os").getpid())


@pytest.mark.slow
def test_tasks_run_and_a_failing_one_fails_alone(tiny_model, tmp_path):
    good = _task(tmp_path / "good")
    bad = _task(tmp_path / "bad", name="tiny-test/bad/seed0", settings={**good.settings, "objective": "cilp"})
    messages: list[dict] = []
    outcomes: list[launch.Outcome] = []
    launch.run_tasks([bad, good], 1, messages.append, outcomes.append)
    assert [(o.name, o.status) for o in outcomes] == [("tiny-test/bad/seed0", "failed"), (good.name, "done")]
    assert "cilp" in outcomes[0].error
    assert "cilp" in (tmp_path / "bad" / rundir.FAILED).read_text()
    assert launch.is_finished(good) and not launch.is_finished(bad)
    phases = [m["phase"] for m in messages if m["task"] == good.name]
    assert phases[0] == "train" and phases[-1] == "eval"
    steps = [m["step"] for m in messages if m["task"] == good.name and m["phase"] == "train"]
    assert steps == [0, 1] and {m["max_steps"] for m in messages if m.get("max_steps")} == {1}


@pytest.mark.slow
def test_worker_processes_run_every_task_once(tiny_model, tmp_path):
    """Two spawned single-threaded workers: every task done once, progress messages reach this process."""
    tasks = [_task(tmp_path / f"run{i}", name=f"tiny-test/clip/seed{i}") for i in range(3)]
    tasks = [
        launch.Task(**{**t.__dict__, "settings": {**t.settings, "seed": i}}) for i, t in enumerate(tasks)
    ]
    messages: list[dict] = []
    outcomes: list[launch.Outcome] = []
    started = time.time()
    launch.run_tasks(tasks, 2, messages.append, outcomes.append)
    assert sorted((o.name, o.status) for o in outcomes) == [(t.name, "done") for t in tasks]
    assert all(launch.is_finished(t) for t in tasks)
    assert {m["task"] for m in messages} == {t.name for t in tasks}
    # a finished task is recognised; the study would not submit it again
    assert all((t.folder / "DONE").stat().st_mtime > started for t in tasks)


@pytest.mark.slow
def test_a_changed_tiny_recipe_makes_finished_tasks_stale(tiny_model, tmp_path, monkeypatch):
    """Results record the build of the tiny model they start from; after a recipe change the task is
    unfinished again and is redone from scratch, so a resumed study never mixes two builds."""
    from dataclasses import replace

    from pspo_repro.models import tiny

    task = _task(tmp_path / "run")
    assert launch.execute(task).status == "done"
    assert launch.is_finished(task)
    built_from = json.loads((task.folder / rundir.MODEL_BUILD).read_text())["build"]
    assert built_from == tiny.folder("tiny-test").name
    first_done = (task.folder / "DONE").stat().st_mtime_ns
    # a task cut short during its evaluation resumes there: the run of the same build is kept
    shutil.rmtree(task.folder / "eval")
    assert not launch.is_finished(task)
    assert launch.execute(task).status == "done" and launch.is_finished(task)
    assert (task.folder / "DONE").stat().st_mtime_ns == first_done

    cheap = replace(tiny.RECIPES["tiny-test"], seed=1, sft_steps=5, eval_n=2, eval_max_new_tokens=4)
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", cheap)
    assert not launch.is_finished(task)
    assert launch.execute(task).status == "done"
    assert launch.is_finished(task)
    assert (
        json.loads((task.folder / rundir.MODEL_BUILD).read_text())["build"] == tiny.folder("tiny-test").name
    )
    assert tiny.folder("tiny-test").name != built_from
    assert (task.folder / "DONE").stat().st_mtime_ns > first_done  # trained again, not kept


def _killer(victim: str, seen: list[dict]):
    """A progress callback that kills the process working on ``victim`` at its first message (SIGKILL: no
    clean-up code runs), and records every message."""
    import os
    import signal

    killed: list[int] = []

    def report(message: dict) -> None:
        seen.append(message)
        if message["task"] == victim and not killed and message["pid"] != os.getpid():
            killed.append(message["pid"])
            os.kill(message["pid"], signal.SIGKILL)

    return report, killed


@pytest.mark.slow
def test_isolated_phases_run_in_fresh_processes_and_fail_alone(tiny_model, tmp_path):
    """Training and evaluation each in a fresh process: a raising run and a killed one fail alone, with
    their errors recorded, and the good run is trained and evaluated in two different processes."""
    import os

    good = _task(tmp_path / "good")
    bad = _task(tmp_path / "bad", name="tiny-test/bad/seed0", settings={**good.settings, "objective": "cilp"})
    victim = _task(tmp_path / "victim", name="tiny-test/victim/seed0")
    seen: list[dict] = []
    report, killed = _killer(victim.name, seen)
    outcomes: list[launch.Outcome] = []
    launch.run_tasks([victim, bad, good], 1, report, outcomes.append, isolate=True)
    by_name = {o.name: o for o in outcomes}
    assert [o.name for o in outcomes] == [victim.name, bad.name, good.name]
    assert by_name[good.name].status == "done" and launch.is_finished(good)
    assert by_name[bad.name].status == "failed" and "cilp" in by_name[bad.name].error
    assert "Traceback" in (bad.folder / rundir.FAILED).read_text()
    reason = f"the train process of {victim.name} (pid {killed[0]}) was killed by SIGKILL"
    assert (by_name[victim.name].status, by_name[victim.name].error) == ("failed", reason)
    assert (victim.folder / rundir.FAILED).read_text().strip() == reason
    assert not launch.is_finished(victim) and not (victim.folder / "DONE").exists()
    pids = {m["phase"]: m["pid"] for m in seen if m["task"] == good.name}
    assert set(pids) == {"train", "eval"}
    assert len({pids["train"], pids["eval"], os.getpid()}) == 3
    # the lock was held by the study while the child worked in the folder, and is free now
    with launch.folder_lock(good.folder) as held:
        assert held is True


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_task(tiny_model, tmp_path):
    """Reused worker processes (no isolation): the worker running one task is killed; that task fails, a
    fresh worker takes the next tasks, and they finish."""
    tasks = [_task(tmp_path / f"run{i}", name=f"tiny-test/clip/seed{i}") for i in range(3)]
    tasks = [
        launch.Task(**{**t.__dict__, "settings": {**t.settings, "seed": i}}) for i, t in enumerate(tasks)
    ]
    seen: list[dict] = []
    report, killed = _killer(tasks[0].name, seen)
    outcomes: list[launch.Outcome] = []
    launch.run_tasks(tasks, 2, report, outcomes.append, isolate=False)
    status = {o.name: (o.status, o.error) for o in outcomes}
    reason = f"the worker running {tasks[0].name} (pid {killed[0]}) was killed by SIGKILL"
    assert status == {
        tasks[0].name: ("failed", reason),
        tasks[1].name: ("done", None),
        tasks[2].name: ("done", None),
    }
    assert (tasks[0].folder / rundir.FAILED).read_text().strip() == reason
    assert launch.is_finished(tasks[1]) and launch.is_finished(tasks[2])
    assert killed[0] not in {m["pid"] for m in seen if m["task"] != tasks[0].name}


# --- GPUs for the worker slots ------------------------------------------------------------------------


def _gpus(monkeypatch, count: int, visible: str | None) -> None:
    """This process sees ``count`` CUDA devices, selected by ``visible`` (None: CUDA_VISIBLE_DEVICES unset)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


@pytest.mark.parametrize(
    ("visible", "count", "workers", "expected"),
    [
        ("4,5,6,7", 4, 4, ["4", "5", "6", "7"]),  # a study given the second half of an 8-GPU machine
        (None, 4, 4, ["0", "1", "2", "3"]),
        (" 2, 3 ", 2, 2, ["2", "3"]),  # spaces around entries, as CUDA reads them
        ("GPU-abc,GPU-def", 2, 2, ["GPU-abc", "GPU-def"]),  # UUIDs go on as they are
        ("MIG-1a2b", 1, 1, ["MIG-1a2b"]),
        ("6,7", 2, 4, ["6", "7", "6", "7"]),  # more workers than GPUs: round robin
        ("0,1,2,3,4,5,6,7", 4, 4, ["0", "1", "2", "3"]),  # entries past the devices that exist: not used
    ],
)
def test_worker_slots_get_this_processs_gpus(monkeypatch, visible, count, workers, expected):
    _gpus(monkeypatch, count, visible)
    envs = launch.slot_environments(workers)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == expected


@pytest.mark.parametrize(
    ("visible", "bad"), [("4,x,6", "'x'"), ("4,,6", "''"), ("3,3", "'3' twice"), ("-1,2", "'-1'")]
)
def test_a_bad_cuda_visible_devices_entry_is_a_clear_error(monkeypatch, visible, bad):
    _gpus(monkeypatch, 2, visible)
    with pytest.raises(ValueError, match=rf"CUDA_VISIBLE_DEVICES.*{bad}.*device index"):
        launch.slot_environments(2)


# --- time limits -----------------------------------------------------------------------------------------


def _freezer(victim: str, frozen: list[int]):
    """A progress callback that stops the process working on ``victim`` at its first message (SIGSTOP: it
    sleeps for good, as a process stuck in a collective or on a dead file system does)."""
    import os
    import signal

    def report(message: dict) -> None:
        if message["task"] == victim and not frozen and message["pid"] != os.getpid():
            frozen.append(message["pid"])
            os.kill(message["pid"], signal.SIGSTOP)

    return report


def _base(folder: Path, name: str, **limits) -> launch.Task:
    """The evaluation of the starting model tiny-test on four synthetic problems."""
    return launch.Task(
        name,
        "base",
        folder,
        "tiny-test",
        ("synthetic",),
        {"limit": 4, "batch_size": 4},
        time_limits={**launch.DEFAULT_TIME_LIMITS, **limits},
    )


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [True, False])
def test_a_phase_past_its_time_limit_is_killed_and_the_study_goes_on(tiny_model, tmp_path, isolate):
    """A task whose process sleeps for good (stopped at its first message, or still starting when its 4 s
    are up: either way it cannot finish) holds its slot only for its phase's time limit: the process is
    killed, FAILED says it timed out, and the next task in the same slot runs. With one worker and no
    isolation the task still runs in a worker process, since a limit needs a process to kill."""
    import re

    import psutil

    hung = _base(tmp_path / "hung", "tiny-test/hung", eval=4)
    good = _base(tmp_path / "good", "tiny-test/good")
    frozen: list[int] = []
    outcomes: list[launch.Outcome] = []
    started = time.monotonic()
    launch.run_tasks([hung, good], 1, _freezer(hung.name, frozen), outcomes.append, isolate=isolate)
    assert [(o.name, o.status) for o in outcomes] == [(hung.name, "failed"), (good.name, "done")]
    error = outcomes[0].error
    assert "eval" in error and "timed out after 4 s" in error, error
    assert (hung.folder / rundir.FAILED).read_text().strip() == error
    pid = int(re.search(r"pid (\d+)", error).group(1))  # the killed process: the child, or the worker
    assert frozen in ([], [pid])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert launch.is_finished(good) and not launch.is_finished(hung)
    assert time.monotonic() - started < 120


def test_time_limits_come_from_defaults_profile_and_command_line():
    assert launch.time_limits() == launch.DEFAULT_TIME_LIMITS
    assert all(v is not None and v > 0 for v in launch.DEFAULT_TIME_LIMITS.values())
    limits = launch.time_limits({"train": 3600}, {"eval": "none"})
    assert limits == {"train": 3600.0, "eval": None}  # none: no limit, said explicitly
    assert launch.time_limits({"eval": None})["eval"] is None


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"evaluation": 60}, r"unknown phase\(s\) \['evaluation'\].*train, eval"),
        ({"train": 0}, r"train.*0.*positive number of seconds or none"),
        ({"eval": -5}, r"eval.*-5.*positive number of seconds or none"),
        ({"train": "soon"}, r"train.*'soon'.*positive number of seconds or none"),
    ],
)
def test_bad_time_limits_are_clear_errors(layer, message):
    with pytest.raises(ValueError, match=message):
        launch.time_limits(layer)
