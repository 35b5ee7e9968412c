"""Where a study's tasks execute: in this process, or in local worker processes, each task under a lock.

A task is one training run followed by its evaluation, or the evaluation of a starting model. Every task
holds an exclusive lock on its folder (``<folder>/.lock``, ``fcntl.flock``) while it works, so two workers,
or two studies sharing a runs folder, never train the same run: a task whose lock is held elsewhere is
reported as busy and left alone. The kernel releases a lock when its holder dies, so the folder of a worker
that died is free again, has no ``DONE``, and is trained again from scratch by the next study.

Results of a tiny model are tied to its build: each task folder records the model's fingerprinted cache
folder (``model_build.json``), and after a recipe change the task counts as unfinished and is redone from
scratch, so a resumed study never mixes runs of two builds.

A task that raises fails alone: its error is recorded (``<folder>/FAILED``) and returned, and the study goes
on. On CPUs each worker runs single-threaded (tiny models gain nothing from more threads); on GPUs, one
worker per device via ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspo_repro import rundir

# The folder's files this module handles (names kept in pspo_repro.rundir)
LOCK, FAILED, BUILT_FROM = rundir.LOCK, rundir.FAILED, rundir.MODEL_BUILD

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Task:
    """One unit of a study: ``train`` (train ``settings`` into ``folder``, then evaluate its best
    checkpoint) or ``base`` (evaluate the starting model ``model`` into ``folder``)."""

    name: str
    kind: str
    folder: Path
    model: str
    benchmarks: tuple[str, ...]
    eval_options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] | None = None
    data_dir: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of a task: ``done``, ``busy`` (locked by another worker) or ``failed`` (with the error)."""

    name: str
    status: str
    error: str | None = None


def default_workers() -> int:
    """One worker per GPU, else one single-threaded worker per CPU core this process may use."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold ``folder``'s lock for the block; yields False (holding nothing) when another process has it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(model: str) -> str | None:
    """Which build of a tiny model the task starts from (its cache folder's name, which carries the recipe's
    fingerprint); None for other models, taken as they are."""
    from pspo_repro import tiny

    return tiny.folder(model).name if model in tiny.names() else None


def _from_current_build(task: Task, build: str | None) -> bool:
    if build is None:
        return True
    marker = task.folder / BUILT_FROM
    return marker.is_file() and rundir.read_json(marker).get("build") == build


def is_finished(task: Task) -> bool:
    """Whether a task's results are complete (training DONE and an evaluation summary of every benchmark)
    and come from the current build of its tiny model: a changed recipe makes them stale."""
    if not _from_current_build(task, _build(task.model)):
        return False
    if task.kind == "train" and not rundir.is_done(task.folder):
        return False
    summary = task.folder / rundir.EVAL / rundir.SUMMARY
    if not summary.is_file():
        return False
    return set(task.benchmarks) <= set(rundir.read_json(summary).get("benchmarks", {}))


def execute(task: Task, report: Report | None = None, progress: bool = False) -> Outcome:
    """Run one task under its folder's lock; errors are recorded and returned, never raised."""
    from pspo_repro import evaluate, tiny
    from pspo_repro.train import TrainSettings, train

    def say(**message: Any) -> None:
        if report is not None:
            report({"task": task.name, **message})

    with folder_lock(task.folder) as held:
        if not held:
            return Outcome(task.name, "busy")
        (task.folder / FAILED).unlink(missing_ok=True)
        build = _build(task.model)
        # results of another build of the model, or of unknown origin: start afresh
        if not _from_current_build(task, build):
            (task.folder / rundir.DONE).unlink(missing_ok=True)  # so training starts from scratch
            shutil.rmtree(task.folder / rundir.EVAL, ignore_errors=True)
            if build is not None:  # recorded first, so that a task cut short resumes rather than restarts
                rundir.atomic_write_json(task.folder / BUILT_FROM, {"build": build})
        try:
            if task.model in tiny.names() and not tiny.is_built(task.model):
                say(phase="warm start")
                tiny.ensure(task.model, progress=progress)
            if task.kind == "train":
                assert task.settings is not None
                settings = TrainSettings.from_dict(task.settings)
                say(phase="train", step=0, max_steps=settings.max_steps)
                train(settings, task.folder, progress=progress, callbacks=[_reporter(say)])
                model = str(task.folder)
            else:
                model = task.model
            say(phase="eval")
            evaluate.evaluate(
                model,
                list(task.benchmarks),
                task.folder,
                data_dir=task.data_dir,
                progress=progress,
                **task.eval_options,
            )
        except Exception as err:  # noqa: BLE001 - a failing task must fail alone
            rundir.atomic_write_text(task.folder / FAILED, traceback.format_exc())
            return Outcome(task.name, "failed", f"{type(err).__name__}: {err}")
    return Outcome(task.name, "done")


def _reporter(say: Callable[..., None]) -> Any:
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Sends the step and the latest training reward to the study's display."""

        reward: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and isinstance(logs.get("reward"), float):
                self.reward = logs["reward"]

        def on_step_end(self, args, state, control, **kwargs):
            say(phase="train", step=state.global_step, max_steps=state.max_steps, reward=self.reward)

    return Reporter()


# --- worker processes ---------------------------------------------------------------------------------

_queue: Any = None


def _init_worker(queue: Any, threads: int, gpus: list[str] | None) -> None:
    global _queue
    _queue = queue
    if gpus:  # one GPU per worker, by the order workers start in
        identity = multiprocessing.current_process()._identity
        index = (identity[0] - 1) if identity else 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    os.environ["TQDM_DISABLE"] = "1"  # library bars would garble the study's display
    import torch

    torch.set_num_threads(threads)
    from pspo_repro.console import quiet_libraries

    quiet_libraries()


def _execute_in_worker(task: Task) -> Outcome:
    return execute(task, report=_queue.put)


def run_tasks(tasks: list[Task], workers: int, report: Report, on_outcome: Callable[[Outcome], None]) -> None:
    """Execute ``tasks`` in order with ``workers`` processes (1: in this process), reporting progress
    messages to ``report`` and each outcome to ``on_outcome`` as it arrives."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        for task in tasks:
            on_outcome(execute(task, report=report))
        return
    import torch

    gpus = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else None
    threads = 1 if gpus is None else max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    queue = context.Queue()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(queue, threads, gpus)
    ) as pool:
        pending = {pool.submit(_execute_in_worker, task): task for task in tasks}
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(queue, report)
            for future in finished:
                task = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # noqa: BLE001 - a worker that died takes only its task
                    outcome = Outcome(task.name, "failed", f"worker died: {type(err).__name__}: {err}")
                on_outcome(outcome)
        _drain(queue, report)


def _drain(queue: Any, report: Report) -> None:
    import queue as queue_module

    while True:
        try:
            message = queue.get_nowait()
        except queue_module.Empty:
            return
        report(message)
