"""Where a study's tasks execute, each task under a lock, each failure alone.

A task is one training run followed by its evaluation, or the evaluation of a starting model. Every task
holds an exclusive lock on its folder (``<folder>/.lock``, ``fcntl.flock``) while it works, so two workers,
or two studies sharing a runs folder, never train the same run: a task whose lock is held elsewhere is
reported as busy and left alone. The kernel releases a lock when its last holder dies, so the folder of a
worker that died is free again, has no ``DONE``, and is trained again from scratch by the next study.

Isolation. With ``isolate`` (the default whenever CUDA is available) the training of a run and its
evaluation each run in a fresh Python process (``python -m pspo_repro.study.launch``), so an evaluation's engine
(vLLM asks for most of the GPU's memory) never shares a process or GPU memory with the trainer that just
finished, and every run starts from a clean GPU. The child inherits the folder's lock, so the lock is held
as long as anyone works in the folder, even if the study itself is killed. Without isolation (the default
on CPUs, where a fresh process costs seconds of imports per phase) a task runs in a worker process that is
reused from task to task, or in this process with one worker.

A task that raises fails alone: its traceback is recorded (``<folder>/FAILED``) and returned, and the study
goes on. A process that dies hard (killed, out of memory, a segfault) costs only the task it was running:
the task is recorded as failed and the next task gets a fresh process.

Time limits. Each phase of a task (``train``: a tiny model's warm start if needed, then the training;
``eval``: the evaluation) has a time limit (:data:`DEFAULT_TIME_LIMITS`, a profile's ``limits``, the
command line). A process that hangs (a dead file system, a collective whose peer is gone) would hold its
worker slot for ever; past the limit it is killed with everything it started, the task fails saying it
timed out, and the slot takes the next task. A limit needs a process to kill, so tasks with a limit never
run in the study's own process; None (said explicitly) is no limit.

Results of a tiny model are tied to its build: each task folder records the model's fingerprinted cache
folder (``model_build.json``), and after a recipe change the task counts as unfinished and is redone from
scratch, so a resumed study never mixes runs of two builds.

On CPUs each worker runs single-threaded (tiny models gain nothing from more threads); on GPUs, one worker
per device via ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pspo_repro.study import rundir

THREADS_ENV = "PSPO_TORCH_THREADS"  # torch threads of a worker or child process

Report = Callable[[dict[str, Any]], None]

PHASES = ("train", "eval")
# seconds per phase; generous beside the paper profile's largest run (about 4 GPU-hours estimated by
# ``study --dry-run``), small beside a slot lost for good. Profiles set their own (``limits:``).
DEFAULT_TIME_LIMITS: dict[str, float | None] = {"train": 12 * 3600.0, "eval": 4 * 3600.0}


def time_limits(*layers: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Each phase's time limit in seconds: :data:`DEFAULT_TIME_LIMITS` updated by each layer in turn (a
    profile's ``limits``, the command line); None or ``"none"`` is no limit. Bad phases or values are clear
    errors."""
    merged = dict(DEFAULT_TIME_LIMITS)
    for layer in layers:
        unknown = sorted(set(layer or {}) - set(PHASES))
        if unknown:
            raise ValueError(f"unknown phase(s) {unknown} in time limits; allowed: {', '.join(PHASES)}")
        for phase, value in (layer or {}).items():
            if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
                merged[phase] = None
            elif isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                merged[phase] = float(value)
            else:
                raise ValueError(
                    f"time limit of {phase} is {value!r}: it must be a positive number of seconds or none"
                )
    return merged


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value}"


@dataclass(frozen=True)
class Task:
    """One unit of a study: ``train`` (train ``settings`` into ``folder``, then evaluate its kept
    checkpoint) or ``base`` (evaluate the starting model ``model`` into ``folder``)."""

    name: str
    kind: str
    folder: Path
    model: str
    benchmarks: tuple[str, ...]
    eval_options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] | None = None
    data_dir: str | None = None
    # seconds each phase may take (see :func:`time_limits`); None: no limit
    time_limits: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_TIME_LIMITS))

    def deadline(self, phase: str) -> tuple[float | None, float | None]:
        """The time limit of ``phase`` and the monotonic time it ends, starting now (None: no limit)."""
        limit = self.time_limits.get(phase)
        return limit, None if limit is None else time.monotonic() + limit


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


def default_isolate() -> bool:
    """Whether training and evaluation get fresh processes by default: whenever CUDA is in use."""
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[IO[str] | None]:
    """The open lock file of ``folder``, locked for the block; None (holding nothing) when another process
    holds it. The lock belongs to the open file: a child that inherits it holds it too."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / rundir.LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold ``folder``'s lock for the block; yields False (holding nothing) when another process has it."""
    with _locked(folder) as handle:
        yield handle is not None


def _build(model: str) -> str | None:
    """Which build of a tiny model the task starts from (its cache folder's name, which carries the recipe's
    fingerprint); None for other models, taken as they are."""
    from pspo_repro.models import tiny

    return tiny.folder(model).name if tiny.is_tiny(model) else None


def _from_current_build(task: Task, build: str | None) -> bool:
    if build is None:
        return True
    marker = task.folder / rundir.MODEL_BUILD
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


def execute(
    task: Task,
    report: Report | None = None,
    progress: bool = False,
    isolate: bool = False,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run one task under its folder's lock; errors are recorded and returned, never raised.

    ``isolate``: training and evaluation each in a fresh process (with ``env`` added to its environment);
    else both in this process."""

    def say(**message: Any) -> None:
        if report is not None:  # ``pid``: the process doing the work (a child's messages carry its own)
            report({"task": task.name, "pid": os.getpid(), **message})

    with _locked(task.folder) as lock:
        if lock is None:
            return Outcome(task.name, "busy")
        (task.folder / rundir.FAILED).unlink(missing_ok=True)
        build = _build(task.model)
        # results of another build of the model, or of unknown origin: start afresh
        if not _from_current_build(task, build):
            (task.folder / rundir.DONE).unlink(missing_ok=True)  # so training starts from scratch
            shutil.rmtree(task.folder / rundir.EVAL, ignore_errors=True)
            if build is not None:  # recorded first, so that a task cut short resumes rather than restarts
                rundir.atomic_write_json(task.folder / rundir.MODEL_BUILD, {"build": build})
        phases = ["train"] if task.kind == "train" and not rundir.is_done(task.folder) else []
        for phase in [*phases, "eval"]:
            if isolate:
                failure = _run_child(task, phase, lock, say, progress, env or {})
            else:
                failure = _run_here(task, phase, say, progress)
            if failure is not None:
                error, trace = failure
                rundir.atomic_write_text(task.folder / rundir.FAILED, trace)
                return Outcome(task.name, "failed", error)
    return Outcome(task.name, "done")


def _phase(task: Task, phase: str, say: Callable[..., None], progress: bool) -> None:
    """One phase of a task: ``train`` (the run) or ``eval`` (the evaluation of the run or starting model);
    either first builds a missing tiny model."""
    from pspo_repro.evaluation import evaluate
    from pspo_repro.models import tiny

    if tiny.is_tiny(task.model) and not tiny.is_built(task.model):
        say(phase="warm start")
        tiny.ensure(task.model, progress=progress)
    if phase == "train":
        from pspo_repro.training.settings import TrainSettings
        from pspo_repro.training.train import train

        assert task.settings is not None
        settings = TrainSettings.from_dict(task.settings)
        say(phase="train", step=0, max_steps=settings.max_steps)
        train(settings, task.folder, progress=progress, callbacks=[_reporter(say)])
        return
    say(phase="eval")
    evaluate.evaluate(
        str(task.folder) if task.kind == "train" else task.model,
        list(task.benchmarks),
        task.folder,
        data_dir=task.data_dir,
        progress=progress,
        **task.eval_options,
    )


def _run_here(task: Task, phase: str, say: Callable[..., None], progress: bool) -> tuple[str, str] | None:
    try:
        _phase(task, phase, say, progress)
    except Exception as err:  # noqa: BLE001 - a failing task must fail alone
        return f"{type(err).__name__}: {err}", traceback.format_exc()
    return None


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


def _died(what: str, pid: int, code: int) -> str:
    """Why a process ended without a result, in words (a negative exit code is the signal that killed it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{what} (pid {pid}) was killed by {name}"
    return f"{what} (pid {pid}) exited with status {code} without a result"


# --- isolated phases: one fresh process each ------------------------------------------------------------


def _run_child(
    task: Task, phase: str, lock: IO[str], say: Callable[..., None], progress: bool, env: dict[str, str]
) -> tuple[str, str] | None:
    """Run one phase of ``task`` in a fresh process that inherits the folder's lock; relays its progress
    messages to ``say``; returns (error, traceback) when it raised or died."""
    package_root = str(Path(__file__).resolve().parent.parent)
    child_env = {**os.environ, **env}
    if not progress:
        child_env["TQDM_DISABLE"] = "1"  # library bars would garble the study's display
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    read_end, write_end = os.pipe()
    payload = pickle.dumps({"task": task, "phase": phase, "messages": write_end, "progress": progress})
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "pspo_repro.study.launch"],
            stdin=subprocess.PIPE,
            env=child_env,
            pass_fds=(lock.fileno(), write_end),
        )
    finally:
        os.close(write_end)  # the child's copy is the only one left: EOF when it exits
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a child that died at once: its exit status says why
        child.stdin.write(payload)
        child.stdin.close()
    failure: tuple[str, str] | None = None
    limit, deadline = task.deadline(phase)
    for message in _messages(read_end, child, deadline):
        if "timed_out" in message:
            reason = (
                f"the {phase} process of {task.name} (pid {child.pid}) timed out after {_seconds(limit)} s "
                f"and was killed"
            )
            failure = (reason, reason + "\n")
        elif "error" in message:
            failure = (message["error"], message["traceback"])
        else:
            say(**{k: v for k, v in message.items() if k != "task"})
    code = child.wait()
    if failure is None and code != 0:
        reason = _died(f"the {phase} process of {task.name}", child.pid, code)
        failure = (reason, reason + "\n")
    return failure


def _messages(fd: int, child: subprocess.Popen, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    """JSON lines from ``fd`` until the pipe closes, or the child has exited (a grandchild that inherited
    the pipe and lingers does not keep this waiting), or ``deadline`` (monotonic) has passed: then the child
    and its descendants are killed and ``{"timed_out": True}`` is yielded."""
    buffer = b""
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                kill_tree(child.pid)
                yield {"timed_out": True}
                return  # what it wrote before is moot: the timeout is why it failed
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                yield from (json.loads(line) for line in lines if line.strip())
            elif child.poll() is not None:
                os.set_blocking(fd, False)  # take what it wrote just before it exited
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(fd, 65536):
                        buffer += chunk
                break
        yield from (json.loads(line) for line in buffer.split(b"\n") if line.strip())
    finally:
        os.close(fd)


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and every process it started (vLLM's engine, data loader workers), which would
    otherwise outlive it holding GPU memory and the run's lock. ``pid`` itself is left for its parent to reap,
    so that its exit status stays readable."""
    import psutil

    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)  # before the kill: orphans are reparented and lost
    except psutil.NoSuchProcess:
        return
    for process in (root, *descendants):  # the root first, so it starts nothing more
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(descendants, timeout=10)


def _child_main() -> None:
    """Entry point of an isolated phase: the task comes pickled on stdin; progress messages, and the error
    if it raises, go as JSON lines to the inherited pipe."""
    payload = pickle.load(sys.stdin.buffer)
    task: Task = payload["task"]
    out = os.fdopen(payload["messages"], "w", buffering=1)
    # who works in the folder now (the lock itself is inherited from the parent)
    with contextlib.suppress(OSError):
        (task.folder / rundir.LOCK).write_text(f"{os.getpid()}\n")

    def send(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the study went away: finish the work regardless
            out.write(json.dumps(message) + "\n")

    _configure_process()
    try:
        say = lambda **m: send({"task": task.name, "pid": os.getpid(), **m})  # noqa: E731
        _phase(task, payload["phase"], say, payload["progress"])
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which records it
        send({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        out.close()
        sys.exit(1)
    out.close()


def _configure_process() -> None:
    """Threads, and no library noise, in a worker or child process."""
    import torch

    threads = os.environ.get(THREADS_ENV)
    if threads:
        torch.set_num_threads(int(threads))
    from pspo_repro.study.console import quiet_libraries

    quiet_libraries()


# --- reused worker processes (no isolation) ---------------------------------------------------------------


class _Worker:
    """A spawned process that executes tasks one after another; when it dies, only the task it was running
    fails, and the next task starts a fresh process."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_end, self.env), daemon=True)
        self.process.start()
        child_end.close()  # so that the worker's death reads as EOF here

    def run(self, task: Task, report: Report) -> Outcome:
        if self.process is None or not self.process.is_alive():
            self._start()
        # the worker runs both phases: the clock restarts when its messages say the evaluation began
        phase = "train" if task.kind == "train" else "eval"
        limit, deadline = task.deadline(phase)
        try:
            self.conn.send(task)
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self.conn.poll(wait):
                    kill_tree(self.process.pid)
                    self.process.join()
                    reason = (
                        f"the {phase} phase of {task.name} timed out after {_seconds(limit)} s: its worker "
                        f"(pid {self.process.pid}) was killed"
                    )
                    return self._lost(task, reason)
                kind, value = self.conn.recv()
                if kind == "outcome":
                    return value
                if phase == "train" and value.get("phase") == "eval":
                    phase = "eval"
                    limit, deadline = task.deadline(phase)
                report(value)
        except (EOFError, OSError):
            self.process.join()
            reason = _died(f"the worker running {task.name}", self.process.pid, self.process.exitcode)
            return self._lost(task, reason)

    def _lost(self, task: Task, reason: str) -> Outcome:
        """The task whose worker died or was killed fails with ``reason``; the next task gets a new worker."""
        self.process = None
        with _locked(task.folder) as lock:  # the dead worker's lock is free; someone else may own it now
            if lock is not None:
                rundir.atomic_write_text(task.folder / rundir.FAILED, reason + "\n")
        return Outcome(task.name, "failed", reason)

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()


def _worker_main(conn: Any, env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ["TQDM_DISABLE"] = "1"  # library bars would garble the study's display
    _configure_process()
    try:
        while (task := conn.recv()) is not None:
            outcome = execute(task, report=lambda message: conn.send(("message", message)))
            conn.send(("outcome", outcome))
    except (EOFError, KeyboardInterrupt):  # the study went away
        pass


# --- scheduling ------------------------------------------------------------------------------------------


def visible_gpus(visible: str | None, count: int | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of the ``count`` devices this process sees (None: every entry),
    each as a child must be given it to see that same device: an index of the physical GPU or a
    ``GPU-``/``MIG-`` UUID. ``visible`` is this process's ``CUDA_VISIBLE_DEVICES`` (None: unset, devices
    0..count-1; empty: no device); entries are stripped of spaces, as CUDA reads them, and those past
    ``count`` name no device."""
    if visible is None:
        return [str(i) for i in range(count or 0)]
    if not visible.strip():
        return []
    entries: list[str] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            # CUDA silently drops this entry and all after it: a typo would idle GPUs, so it is an error
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={visible!r} has the entry {entry!r}: each entry must be a device index "
                f"(0, 1, ...) or a GPU UUID (GPU-..., MIG-...)"
            )
        if entry in entries:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={visible!r} names {entry!r} twice: each entry must be a device index "
                f"or a GPU UUID, once (CUDA shows no device at all then)"
            )
        entries.append(entry)
    return entries if count is None else entries[:count]


def slot_environments(workers: int) -> list[dict[str, str]]:
    """The environment of each worker slot: one GPU each (``CUDA_VISIBLE_DEVICES``, round robin over the
    GPUs this process sees, named as they are in its own ``CUDA_VISIBLE_DEVICES``) when CUDA is available,
    else single-threaded torch."""
    import torch

    if torch.cuda.is_available():
        # "0" in a child is physical GPU 0, not this process's first device: hand on our own entries
        gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
        threads = max(1, (os.cpu_count() or 1) // workers)
        return [
            {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], THREADS_ENV: str(threads)} for i in range(workers)
        ]
    return [{THREADS_ENV: "1"} for _ in range(workers)]


def run_tasks(
    tasks: list[Task],
    workers: int,
    report: Report,
    on_outcome: Callable[[Outcome], None],
    isolate: bool | None = None,
) -> None:
    """Execute ``tasks`` in order, ``workers`` at a time, reporting progress messages to ``report`` and each
    outcome to ``on_outcome`` as it arrives (both called in this thread).

    ``isolate`` (None: :func:`default_isolate`): each training and each evaluation in a fresh process; else
    reused worker processes, or this process when ``workers`` is 1 and no task has a time limit (a limit
    needs a process to kill)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    isolate = default_isolate() if isolate is None else isolate
    unlimited = all(limit is None for task in tasks for limit in task.time_limits.values())
    if workers == 1 and not isolate and unlimited:
        for task in tasks:
            on_outcome(execute(task, report=report))
        return
    todo = deque(tasks)
    taking = threading.Lock()
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def slot(env: dict[str, str]) -> None:
        worker = None if isolate else _Worker(env)
        try:
            while True:
                with taking:
                    if not todo:
                        return
                    task = todo.popleft()
                send = lambda message: events.put(("message", message))  # noqa: E731
                try:
                    if worker is None:
                        outcome = execute(task, report=send, isolate=True, env=env)
                    else:
                        outcome = worker.run(task, send)
                except Exception as err:  # noqa: BLE001 - e.g. no process could be started: this task fails
                    outcome = Outcome(task.name, "failed", f"{type(err).__name__}: {err}")
                events.put(("outcome", outcome))
        finally:
            if worker is not None:
                worker.close()
            events.put(("exit", None))

    envs = slot_environments(min(workers, max(len(tasks), 1)))
    for env in envs:
        threading.Thread(target=slot, args=(env,), daemon=True).start()
    running = len(envs)
    while running:
        kind, value = events.get()
        if kind == "message":
            report(value)
        elif kind == "outcome":
            on_outcome(value)
        else:
            running -= 1


if __name__ == "__main__":
    _child_main()
