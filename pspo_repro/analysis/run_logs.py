"""A study's small run files copied beside its results (``results/<profile>/run-logs/``), so that the
committed reference results carry every run's settings, provenance, logs and evaluation summary: what a
reader needs to check a number against the run that made it. Checkpoints and per-problem records stay in
the run folders (they are large)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pspo_repro.study import rundir

RUN_FILES = (
    rundir.CONFIG,
    rundir.PROVENANCE,
    rundir.TRAIN_LOG,
    rundir.VALIDATION,
    rundir.PROBES,
    rundir.DONE,
    rundir.MODEL_BUILD,
)
FOLDER = "run-logs"


def collect(study_dir: Path, results_dir: Path) -> Path:
    """Copy every finished run's small files and every evaluation summary (runs' and starting models') into
    ``results_dir/run-logs/`` (replaced whole, so a run that is gone from the study is gone from it too)."""
    out = Path(results_dir) / FOLDER
    tmp = out.with_name(f".{FOLDER}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for done in sorted(Path(study_dir).glob(f"*/*/seed*/{rundir.DONE}")):
        run = done.parent
        target = tmp / run.relative_to(study_dir)
        target.mkdir(parents=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        _copy_summary(run, target)
    for start in sorted(Path(study_dir).glob(f"*/start/{rundir.EVAL}/{rundir.SUMMARY}")):
        folder = start.parent.parent
        _copy_summary(folder, tmp / folder.relative_to(study_dir))
    tmp.mkdir(parents=True, exist_ok=True)
    rundir.replace_dir(tmp, out)
    return out


def _copy_summary(folder: Path, target: Path) -> None:
    summary = folder / rundir.EVAL / rundir.SUMMARY
    if summary.is_file():
        (target / rundir.EVAL).mkdir(parents=True, exist_ok=True)
        shutil.copy2(summary, target / rundir.EVAL / rundir.SUMMARY)
