"""A study's tasks as Slurm jobs, one job per task, submitted with submitit.

Each job runs :func:`pspo_repro.study.launch.execute` on its node, under the same per-folder lock as local
workers (``<folder>/.lock``, on the shared file system), so nothing trains twice: a task whose lock is held
when the study submits is not submitted, and a job that starts while another holds its lock ends at once as
busy. On the node, training and evaluation run in fresh processes whenever CUDA is available, as locally.

The study polls its jobs until they end and reports each outcome as it arrives; a job that fails or is
killed (time limit, preemption, out of memory) fails alone. A study that was stopped resumes by being run
again: finished runs are skipped, and so are runs whose lock is held by a running job.

Settings come from the profile's ``slurm:`` section, overridden on the command line (``--slurm key=value``):

    slurm:
      partition: gpu          # sbatch --partition
      time_min: 360           # the job's time limit, minutes
      gpus_per_node: 1
      cpus_per_task: 8
      mem_gb: 64
      account: null           # sbatch --account
      qos: null               # sbatch --qos
      constraint: null        # sbatch --constraint (e.g. h100)
      setup: []               # shell lines run before the job (module load ..., source venv/bin/activate)
      cluster: slurm          # submitit's executor: slurm, or local / debug to try the launcher on one machine
      poll_s: 60              # seconds between polls of the jobs' states
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pspo_repro.study import environment, launch, rundir

DEFAULTS: dict[str, Any] = {
    "partition": None,
    "time_min": 360,
    "gpus_per_node": 1,
    "cpus_per_task": 8,
    "mem_gb": 64,
    "account": None,
    "qos": None,
    "constraint": None,
    "setup": [],
    "cluster": "slurm",
    "poll_s": 60.0,
}
CLUSTERS = ("slurm", "local", "debug")
# our names -> submitit's AutoExecutor parameters (prefixed ones apply on Slurm only)
_SUBMITIT = {
    "partition": "slurm_partition",
    "time_min": "timeout_min",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "setup": "slurm_setup",
}


def options(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """The launcher's settings: :data:`DEFAULTS` updated by each layer in turn (profile, command line);
    unknown keys and clusters are clear errors."""
    merged = dict(DEFAULTS)
    for layer in layers:
        unknown = sorted(set(layer or {}) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown slurm setting(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
        merged.update(layer or {})
    if merged["cluster"] not in CLUSTERS:
        raise ValueError(f"slurm cluster must be one of {', '.join(CLUSTERS)}, got {merged['cluster']!r}")
    return merged


def run_job(task: launch.Task) -> launch.Outcome:
    """What one job runs on its node: the task under its lock, training and evaluation in fresh processes
    when CUDA is available; a task that needs vLLM where the node has none fails at once, before training."""
    missing = environment.missing_vllm(f"run {task.name}", [task])
    if missing is not None:
        return launch.Outcome(task.name, "failed", missing)
    return launch.execute(task, isolate=launch.default_isolate())


def executor(settings: dict[str, Any], log_folder: Path, job_name: str) -> Any:
    """A submitit executor with the job resources of ``settings`` (logs and pickles under ``log_folder``)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(log_folder), cluster=settings["cluster"])
    params = {_SUBMITIT[k]: settings[k] for k in _SUBMITIT if settings[k] not in (None, [])}
    if settings["cluster"] != "slurm":  # the local executors know the generic parameters only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params.pop("gpus_per_node", None)  # the local executor pins GPUs itself; none may be present
    ex.update_parameters(name=job_name, **params)
    return ex


def run_tasks(
    tasks: list[launch.Task],
    settings: dict[str, Any],
    log_folder: Path,
    on_outcome: Callable[[launch.Outcome], None],
    note: Callable[[str], None] = print,
) -> None:
    """Submit one job per task whose lock is free (the others are reported busy), then poll the jobs and
    report each outcome as its job ends; a job that died is recorded in its folder's ``FAILED``."""
    submit_to = executor(settings, log_folder, "pspo-repro")
    jobs: dict[Any, launch.Task] = {}
    for task in tasks:
        with launch.folder_lock(task.folder) as free:
            pass
        if not free:
            on_outcome(launch.Outcome(task.name, "busy"))
            continue
        submit_to.update_parameters(name=task.name.replace("/", "-"))
        job = submit_to.submit(run_job, task)
        rundir.atomic_write_json(
            task.folder / "job.json", {"job_id": str(job.job_id), "cluster": settings["cluster"]}
        )
        jobs[job] = task
    if jobs:
        note(f"submitted {len(jobs)} job(s) to {settings['cluster']}; logs in {log_folder}")
    while jobs:
        for job in [j for j in jobs if j.done()]:
            task = jobs.pop(job)
            on_outcome(_outcome(job, task))
        if jobs:
            time.sleep(float(settings["poll_s"]))


def _outcome(job: Any, task: launch.Task) -> launch.Outcome:
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - a job that died (time limit, preemption, OOM) fails alone
        reason = f"job {job.job_id} ended without a result: {type(err).__name__}: {str(err).strip()[:500]}"
        with launch.folder_lock(task.folder) as held:  # unless someone else works in the folder now
            if held:
                rundir.atomic_write_text(task.folder / rundir.FAILED, reason + "\n")
        return launch.Outcome(task.name, "failed", reason)
