"""The exact identities measured on real training batches of the study's own runs (kept beside audit.md
in ``identities.json``): which runs, how many steps of each are trained again, and in which process. Beside
each run's identities, under :data:`STALENESS_ZERO`, the importance ratio at staleness 0 on its first
generation batch, in float32 and under bf16 autocast (:mod:`pspo_repro.analysis.staleness_numerics`).

On a machine with GPUs each run is measured in a fresh process that sees exactly one of them
(``CUDA_VISIBLE_DEVICES``): in one process that sees several, transformers counts them all (``n_gpu``) and
TRL's trainer refuses to start rather than wrap the model in ``DataParallel``. The training writes into a
temporary folder, never into the results, and keeps no checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pspo_repro.analysis import identities, staleness_numerics
from pspo_repro.analysis.audit.runs import load_runs
from pspo_repro.training.settings import TrainSettings

IDENTITIES_FILE = "identities.json"
# Each run's key for its staleness-0 ratio measurement (staleness_numerics.measure_settings).
STALENESS_ZERO = "staleness_zero"
# The runs whose real training batches the identities are measured on (one seed each), when present.
IDENTITY_LABELS = ("pspo", "clip", "pspo-stress", "clip-stress")
# Optimizer steps of each measurement: one reuse cycle, so that every staleness is seen (the identities are
# algebra, checked on every step), but at least MIN (a few batches even on-policy) and at most MAX, whatever
# the cycle; never more than the run's own length (a run that counts epochs, max_steps -1, is not trained
# whole).
MIN_IDENTITY_STEPS, MAX_IDENTITY_STEPS = 4, 32
CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"


def identity_steps(settings: TrainSettings) -> int:
    """The optimizer steps the identities are measured on for a run of these settings (see above)."""
    spg = settings.steps_per_generation or settings.grad_accum
    cycle = max(1, spg * settings.num_iterations // settings.grad_accum)  # optimizer steps per generation
    steps = min(max(MIN_IDENTITY_STEPS, cycle), MAX_IDENTITY_STEPS)
    return min(steps, settings.max_steps) if settings.max_steps > 0 else steps


def identity_runs(runs: list[Any]) -> list[Any]:
    """The runs measured: those labelled :data:`IDENTITY_LABELS`, of each (model, label) the lowest build's
    lowest seed (the identities are algebra, the same on every build), in (model, label) order; of a study's
    finished runs (:class:`~pspo_repro.analysis.audit.runs.Run`) or of a profile's planned ones
    (:class:`~pspo_repro.study.profiles.Run`) alike."""
    chosen: dict[tuple[str, str], Any] = {}
    for r in runs:
        if r.label in IDENTITY_LABELS:
            base, build = _build_of(r.model)
            key = (base, r.label)
            if key not in chosen or (build, r.seed) < (_build_of(chosen[key].model)[1], chosen[key].seed):
                chosen[key] = r
    return [chosen[key] for key in sorted(chosen)]


def _build_of(model: str) -> tuple[str, int]:
    """(model without its build, build number): ``tiny-general-l@1`` -> (``tiny-general-l``, 1)."""
    base, _, build = model.partition("@")
    return base, int(build) if build.isdigit() else 0


def run_digest(folder: Path) -> str:
    """A digest of what a run is: its settings and its training log (a retrained run has another)."""
    import hashlib

    h = hashlib.sha256()
    for name in ("config.json", "train_log.jsonl"):
        path = Path(folder) / name
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


def measured_the_study(ident: dict[str, Any], study_dir: Path) -> bool:
    """The kept identities were measured on the runs the study now has: the same runs chosen, each with the
    digest it had (a measurement without digests, from before they were kept, does not count)."""
    chosen = {r.name: r for r in identity_runs(load_runs(study_dir))}
    if set(ident) != set(chosen):
        return False
    return all(ident[name].get("run_digest") == run_digest(r.folder) for name, r in chosen.items())


def measurement_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the measurement's process adds to its environment: ``CUDA_VISIBLE_DEVICES`` naming exactly one of
    the GPUs this process sees (the first, as an index or UUID, in ``environ``'s numbering), or nothing on a
    machine without GPUs. An empty list (no GPU visible) stays empty."""
    import torch

    from pspo_repro.study.launch import visible_gpus

    environ = os.environ if environ is None else environ
    visible = environ.get(CUDA_VISIBLE)
    if visible is not None:
        gpus = visible_gpus(visible)  # the entries as the study's workers get them
        return {CUDA_VISIBLE: gpus[0] if gpus else ""}
    gpus = visible_gpus(None, torch.cuda.device_count())
    return {CUDA_VISIBLE: gpus[0]} if gpus else {}


def measure_run(settings: TrainSettings, steps: int, work_dir: Path) -> dict[str, Any]:
    """The identities on ``steps`` optimizer steps of one run's settings, in this process: the summary with
    the run's alpha, the steps, and the device the training ran on; then, under :data:`STALENESS_ZERO`, the
    staleness-0 ratio on the run's first generation batch from its starting model (measured after the
    identities' training, whose numbers it therefore leaves as they were)."""
    trainer = identities.recording_trainer(settings, work_dir, steps)
    trainer.train()
    out = {
        "alpha": settings.alpha,
        "steps": steps,
        "device": str(trainer.args.device),
        "cuda_visible_devices": os.environ.get(CUDA_VISIBLE),
        **identities.summarise(trainer.records),
    }
    del trainer  # the staleness-0 measurement loads the starting model afresh
    out[STALENESS_ZERO] = staleness_numerics.measure_settings(settings, work_dir / "staleness-zero")
    return out


def measure_run_in_process(settings: TrainSettings, steps: int, work_dir: Path, name: str) -> dict[str, Any]:
    """:func:`measure_run` in a fresh Python process that sees one GPU (:func:`measurement_environment`); its
    error, if it raises, is raised here as a RuntimeError naming the run."""
    work_dir.mkdir(parents=True, exist_ok=True)
    request, result = work_dir / "request.json", work_dir / "result.json"
    request.write_text(
        json.dumps(
            {"settings": settings.to_dict(), "steps": steps, "work_dir": str(work_dir), "result": str(result)}
        )
    )
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, **measurement_environment(), "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = subprocess.run(
        [sys.executable, "-m", "pspo_repro.analysis.audit.child", str(request)], env=env, check=False
    ).returncode
    if not result.is_file():
        raise RuntimeError(f"the identity measurement of {name} ended with status {code} without a result")
    payload = json.loads(result.read_text())
    if "error" in payload:
        raise RuntimeError(
            f"the identity measurement of {name} failed: {payload['error']}\n{payload['traceback']}"
        )
    return payload["result"]


def _one_thread() -> None:
    """A measurement worker trains on one thread: the cores are shared among the workers."""
    import torch

    torch.set_num_threads(1)


def cpu_workers(runs: int, cores: int | None = None) -> int:
    """Processes for measuring ``runs`` runs on CPUs: one per core this process may use, at most one per run."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(runs, cores))


def measure_identities(
    study_dir: Path,
    work_dir: Path | None = None,
    steps: int | None = None,
    isolate: bool | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The identities on real training batches of the runs labelled :data:`IDENTITY_LABELS` (lowest seed of
    each model): ``steps`` optimizer steps (default :func:`identity_steps`) of each run's settings, retrained
    from its starting model with the recording trainer, in ``work_dir`` (default: a temporary folder, removed
    afterwards). ``isolate`` (default: whenever CUDA is available) measures each run in a fresh process on one
    GPU (:func:`measure_run_in_process`), one after another. Otherwise ``workers`` processes (default
    :func:`cpu_workers`; 1: this process) measure the runs side by side, each on one thread."""
    import torch

    if steps is not None and steps < 1:
        raise ValueError(f"identity steps must be >= 1, got {steps}")
    if workers is not None and workers < 1:
        raise ValueError(f"identity workers must be >= 1, got {workers}")
    isolate = torch.cuda.is_available() if isolate is None else isolate
    chosen = identity_runs(load_runs(study_dir))
    with tempfile.TemporaryDirectory(prefix="pspo-identities-") as temporary:
        root = Path(temporary) if work_dir is None else Path(work_dir)
        settings = [TrainSettings.from_dict(r.config) for r in chosen]
        counts = [steps or identity_steps(s) for s in settings]
        folders = [root / r.name.replace("/", "--") for r in chosen]
        workers = cpu_workers(len(chosen)) if workers is None else min(workers, max(1, len(chosen)))
        if isolate:
            results = [
                measure_run_in_process(s, n, f, r.name)
                for s, n, f, r in zip(settings, counts, folders, chosen, strict=True)
            ]
        elif workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawned, not forked: a forked torch process may hang in its parent's thread pool
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
                results = list(pool.map(measure_run, settings, counts, folders))
        else:
            results = [measure_run(s, n, f) for s, n, f in zip(settings, counts, folders, strict=True)]
        out = {}
        for r, result in zip(chosen, results, strict=True):
            out[r.name] = {**result, "run_digest": run_digest(r.folder)}  # which run was measured, as it was
    return out
