"""A study's finished runs as the audit reads them from their folders, and the groupings it compares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspo_repro.analysis import inference, tables
from pspo_repro.analysis.audit.stats import mean
from pspo_repro.study import rundir
from pspo_repro.training.settings import read_run_settings


@dataclass
class Run:
    """One finished run of a study, as its folder records it."""

    name: str  # relative to the study folder: <model>/<label>/seed<k>
    config: dict[str, Any]
    done: dict[str, Any]
    probes: list[dict[str, Any]]
    train_log: list[dict[str, Any]]
    summary: dict[str, Any] | None
    folder: Path

    @property
    def label(self) -> str:
        return self.config.get("label") or self.config["objective"]

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def objective(self) -> str:
        return self.config["objective"]

    @property
    def control(self) -> bool:
        return bool(self.config.get("shuffle_advantages"))

    @property
    def cycle(self) -> int:
        """Optimizer steps per generation."""
        c = self.config
        spg = c.get("steps_per_generation") or c["grad_accum"]
        return max(1, spg * c["num_iterations"] // c["grad_accum"])

    @property
    def arm(self) -> tuple:
        """What the objectives of one comparison share: optimizer, learning rate, reuse, length."""
        c = self.config
        return (c.get("optimizer", "adamw"), c["learning_rate"], self.cycle, c["max_steps"], c["batch_size"])

    def accuracy(self, benchmark: str, metric: str = "strict") -> float | None:
        if self.summary is None or benchmark not in self.summary["benchmarks"]:
            return None
        return self.summary["benchmarks"][benchmark]["metrics"][metric]["accuracy"]


def arm_name(arm: tuple) -> str:
    """An arm (:attr:`Run.arm`) as the tables name it."""
    optimizer, lr, cycle, steps, batch = arm
    return f"{optimizer} lr {lr:g}, {cycle} updates per generation, {steps} steps"


def load_runs(study_dir: Path) -> list[Run]:
    """Every finished run (DONE) of a study folder, in name order."""
    runs = []
    for done in sorted(Path(study_dir).glob("*/*/seed*/DONE")):
        folder = done.parent
        summary = folder / rundir.EVAL / rundir.SUMMARY
        runs.append(
            Run(
                name=str(folder.relative_to(study_dir)),
                config=read_run_settings(folder).to_dict(),  # earlier parameter names read too
                done=rundir.read_json(done),
                probes=rundir.read_jsonl(folder / rundir.PROBES),
                train_log=rundir.read_jsonl(folder / rundir.TRAIN_LOG),
                summary=rundir.read_json(summary) if summary.is_file() else None,
                folder=folder,
            )
        )
    return runs


def starts(study_dir: Path) -> dict[str, dict[str, Any]]:
    """Each model's starting evaluation summary, by model."""
    out = {}
    for path in sorted(Path(study_dir).glob(f"*/{tables.START}/eval/summary.json")):
        summary = rundir.read_json(path)
        out[summary["settings"]["model"]] = summary
    return out


def by(runs: list[Run], key: Callable[[Run], Any]) -> dict[Any, list[Run]]:
    """The runs grouped by ``key``, each group in the runs' order."""
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def staleness_means(runs: list[Run], field_name: str) -> dict[int, float]:
    """Mean of a probe field over the steps of each staleness, pooled over runs."""
    values: dict[int, list[float]] = {}
    for r in runs:
        for p in r.probes:
            if "staleness" in p and p.get(field_name) is not None:
                values.setdefault(p["staleness"], []).append(p[field_name])
    return {k: mean(v) for k, v in sorted(values.items())}


def largest(runs: list[Run], field_name: str) -> float | None:
    """The largest value of a probe field on any step of the runs (None: no step recorded it)."""
    values = [p[field_name] for r in runs for p in r.probes if p.get(field_name) is not None]
    return max(values) if values else None


def accuracies(runs: list[Run], benchmark: str, metric: str = "strict") -> list[float]:
    """The test accuracies of the runs that were evaluated on ``benchmark`` (the others left out)."""
    return [a for a in (r.accuracy(benchmark, metric) for r in runs) if a is not None]


def base_model(model: str) -> str:
    """The model without its build: builds of one model (``tiny-general-l@0``, ``@1``) are compared as one,
    the build a random factor (:mod:`pspo_repro.analysis.inference`)."""
    return model.partition("@")[0]


def evaluated_arm(runs: list[Run], benchmark: str, name: str) -> inference.Arm | None:
    """The runs' per-problem test answers as one arm for :mod:`~pspo_repro.analysis.inference`: only the
    runs evaluated on ``benchmark`` (None when there is none), so unevaluated runs leave a section untested
    instead of failing it."""
    folders = [r.folder for r in runs if (r.folder / rundir.EVAL / f"{benchmark}.jsonl").is_file()]
    return inference.arm_from_runs(folders, benchmark, name=name) if folders else None


def comparable(a: inference.Arm, b: inference.Arm) -> bool:
    """Two arms can be compared: the same test problems, and a build in common (the comparison is paired on
    builds); a study still running may have one arm on a build the other has not reached."""
    same = a.n_problems == b.n_problems and (
        a.problem_ids is None or b.problem_ids is None or a.problem_ids == b.problem_ids
    )
    return same and bool(set(a.builds) & set(b.builds))
