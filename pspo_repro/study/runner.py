"""A study: a profile (YAML) expanded into runs (models x objectives x seeds), each trained, evaluated and
tabulated. Finished runs and evaluations are skipped, so an interrupted study resumes where it stopped.

Profile format::

    name: cpu
    seeds: [0, 1]
    train: {dataset: synthetic, learning_rate: 1.0e-4, ...}     # TrainSettings shared by every run
    models:                                                     # model -> settings for that model
      tiny-general-s: {}
      tiny-math-l: {alpha: 0.4}
    objectives:                                                 # objective -> settings for that objective
      clip: {epsilon: 0.2}
      pspo: {}
      noclip: {num_iterations: 1}
      clip-shuffled: {objective: clip, shuffle_advantages: true}  # a labelled variant (a control)
      clip-stress: {objective: clip, learning_rate: 3.0e-4, models: [tiny-general-l]}  # on some models only
    cells:                                                      # settings for one (model, objective)
      - {model: tiny-general-s, objective: clip, set: {learning_rate: 2.0e-4}}
    eval: {benchmarks: [synthetic, synthetic-svamp], limit: null, batch_size: 64}
    slurm: {partition: gpu, time_min: 360, gpus_per_node: 1, mem_gb: 64}   # the slurm launcher's jobs

A profile may start from another (``extends: cpu``): its ``train``, ``eval`` and ``slurm`` settings are
merged key by key into the other's, and any other key it gives replaces the other's.

Later layers win: train < models < objectives < cells. ``models`` may also be a plain list. An
``objectives`` key is the run's label; an entry that sets ``objective`` runs that objective under the label,
which is how controls (shuffled advantages, SGD) sit beside the objectives in one table; an entry's
``models`` list restricts it to those models.

Each model's starting point is evaluated once (``<runs>/<profile>/<model>/start/eval``), so the tables show
what training added. Tables are written by :mod:`pspo_repro.analysis.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pspo_repro.analysis import tables
from pspo_repro.study import launch
from pspo_repro.training.train import TrainSettings

BASE = tables.START  # the folder, beside a model's runs, that holds its starting model's evaluation

PROFILE_KEYS = {
    "name",
    "description",
    "extends",
    "models",
    "seeds",
    "train",
    "objectives",
    "cells",
    "eval",
    "slurm",
}
LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class Run:
    """One cell of a study: where it lives and what it trains."""

    model: str
    label: str  # the profile's name for the arm: an objective, or a variant such as "clip-shuffled"
    seed: int
    settings: TrainSettings

    @property
    def name(self) -> str:
        return f"{model_folder(self.model)}/{self.label}/seed{self.seed}"


def model_folder(model: str) -> str:
    """A model's folder name inside a study (hub ids have a slash)."""
    return model.replace("/", "--")


def profile_names() -> list[str]:
    folder = resources.files("pspo_repro") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> dict[str, Any]:
    """A profile by name (pspo_repro/profiles/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"profile file {path} does not exist")
        text = path.read_text()
    elif name_or_path in profile_names():
        text = (resources.files("pspo_repro") / "profiles" / f"{name_or_path}.yaml").read_text()
    else:
        raise ValueError(f"unknown profile {name_or_path!r}; known profiles: {', '.join(profile_names())}")
    profile = yaml.safe_load(text)
    unknown = sorted(set(profile) - PROFILE_KEYS)
    if unknown:
        raise ValueError(
            f"profile {name_or_path!r} has unknown keys {unknown}; allowed: {sorted(PROFILE_KEYS)}"
        )
    if "extends" in profile:
        base = load_profile(profile.pop("extends"))
        base.pop("description", None)
        # train, eval and slurm settings merge key by key; every other key (models, objectives, seeds) replaces
        for key in ("train", "eval", "slurm"):
            if key in profile:
                profile[key] = {**base.get(key, {}), **profile[key]}
        profile = {**base, **profile}
    return profile


def expand(profile: dict[str, Any]) -> list[Run]:
    """Every (model, objective, seed) run of a profile, with its fully resolved settings."""
    model_settings = profile["models"]
    if isinstance(model_settings, list):
        model_settings = {m: {} for m in model_settings}
    cells: dict[tuple[str, str], dict] = {}
    for cell in profile.get("cells", []):
        key = (cell["model"], cell["objective"])
        if cell["model"] not in model_settings or cell["objective"] not in profile["objectives"]:
            raise ValueError(f"profile cell {key} names a model or objective the profile does not have")
        cells[key] = cell.get("set", {})
    arms = {label: dict(values or {}) for label, values in profile["objectives"].items()}
    only = {label: arm.pop("models", None) for label, arm in arms.items()}
    for label, wanted in only.items():
        unknown = sorted(set(wanted or ()) - set(model_settings))
        if unknown:
            raise ValueError(f"objective {label!r} names models {unknown} that the profile does not have")
    runs = []
    for model, for_model in model_settings.items():
        for label, for_label in arms.items():
            if only[label] is not None and model not in only[label]:
                continue
            for seed in profile.get("seeds", [0]):
                values = {
                    **profile.get("train", {}),
                    **(for_model or {}),
                    **for_label,
                    **cells.get((model, label), {}),
                }
                values.update(model=model, seed=seed, label=label)
                values["objective"] = for_label.get("objective", label)
                runs.append(Run(model, label, seed, TrainSettings.from_dict(values)))
    return runs


def select(
    runs: list[Run],
    models: list[str] | None = None,
    objectives: list[str] | None = None,
    seeds: list[int] | None = None,
) -> list[Run]:
    """The runs whose model, objective label and seed are among those given (None: any)."""
    for kind, wanted, have in (
        ("model", models, {r.model for r in runs}),
        ("objective", objectives, {r.label for r in runs}),
        ("seed", seeds, {r.seed for r in runs}),
    ):
        unknown = sorted(set(wanted or ()) - have, key=str)
        if unknown:
            raise ValueError(f"{kind}(s) {unknown} not in the profile; it has: {sorted(have, key=str)}")
    return [
        r
        for r in runs
        if (models is None or r.model in models)
        and (objectives is None or r.label in objectives)
        and (seeds is None or r.seed in seeds)
    ]


def tasks(
    runs: list[Run],
    study_dir: Path,
    benchmarks: list[str],
    eval_options: dict[str, Any],
    data_dir: str | None,
) -> list[launch.Task]:
    """The study's tasks in the order they should start.

    A model's first task warm-starts it when it is a tiny model that is not built yet, so the evaluations
    of the starting models come first, those of independent models side by side (one worker each), then
    their runs. A model whose warm start continues another (``init_from``) is started just before its
    parent's runs, when the parent is built, and its own runs come last: no worker waits for a warm start
    while others could train."""
    from pspo_repro.models import tiny

    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    bench = tuple(benchmarks)

    def start(model: str) -> launch.Task:
        folder = study_dir / model_folder(model) / BASE
        # the starting model is evaluated with the system prompt its runs train with
        options = {"system_prompt": by_model[model][0].settings.system_prompt, **eval_options}
        return launch.Task(f"{model}/{BASE}", "base", folder, model, bench, options, None, data_dir)

    def trained(run: Run) -> launch.Task:
        settings = run.settings.to_dict()
        if data_dir and settings["data_dir"] is None:
            settings["data_dir"] = data_dir
        return launch.Task(
            run.name, "train", study_dir / run.name, run.model, bench, eval_options, settings, data_dir
        )

    parent = {m: tiny.RECIPES[m].init_from for m in by_model if m in tiny.names()}
    children = [m for m in by_model if parent.get(m) is not None]
    first = [m for m in by_model if m not in children]
    result = [start(m) for m in first]
    for model in first:
        # a child's warm start begins once its parent has been built and its siblings' runs have run
        result += [start(c) for c in children if parent[c] == model]
        result += [trained(r) for r in by_model[model]]
    result += [start(c) for c in children if parent[c] not in first]
    result += [trained(r) for c in children for r in by_model[c]]
    return result


def run_study(
    profile_name: str,
    runs_root: Path,
    results_root: Path,
    data_dir: str | None = None,
    models: list[str] | None = None,
    objectives: list[str] | None = None,
    seeds: list[int] | None = None,
    workers: int = 1,
    progress: bool = True,
    isolate: bool | None = None,
    launcher: str = "local",
    slurm_settings: dict[str, Any] | None = None,
) -> StudyResult:
    """Train and evaluate the runs of a profile (all, or those selected), then write the tables from every
    finished run of the study. A failing run fails alone: the others go on, and the result lists the
    failures.

    ``launcher``: ``local`` runs ``workers`` tasks at once on this machine (``isolate``: training and
    evaluation each in a fresh process; None: whenever CUDA is available, see :mod:`pspo_repro.study.launch`);
    ``slurm`` submits one job per task (:mod:`pspo_repro.study.slurm`, with the profile's ``slurm`` settings
    updated by ``slurm_settings``) and waits for them."""
    from pspo_repro.evaluation import evaluate
    from pspo_repro.study.console import StudyProgress

    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")

    profile = load_profile(profile_name)
    name = profile.get("name", Path(profile_name).stem)
    if launcher == "slurm":
        from pspo_repro.study import slurm

        slurm_options = slurm.options(profile.get("slurm"), slurm_settings)  # bad settings fail before work
    eval_opts = dict(profile.get("eval", {}))
    benchmarks = evaluate.parse_benchmarks(",".join(eval_opts.pop("benchmarks", ["synthetic"])))
    runs = select(expand(profile), models, objectives, seeds)
    study_dir = runs_root / name
    todo = [t for t in tasks(runs, study_dir, benchmarks, eval_opts, data_dir) if not launch.is_finished(t)]
    display = StudyProgress(len(todo), desc=name, enabled=progress)
    outcomes: list[launch.Outcome] = []

    def on_outcome(outcome: launch.Outcome) -> None:
        outcomes.append(outcome)
        display.finish(outcome.name)
        if outcome.status == "failed":
            display.note(f"failed: {outcome.name}: {outcome.error}")

    try:
        if launcher == "slurm":
            slurm.run_tasks(todo, slurm_options, study_dir / "jobs", on_outcome, note=display.note)
        else:
            launch.run_tasks(todo, workers, display.update, on_outcome, isolate=isolate)
    finally:
        display.close()
    failed = [o for o in outcomes if o.status == "failed"]
    try:
        table: Path | None = tables.write_tables(study_dir, results_root / name, profile)
    except FileNotFoundError:
        if not failed:
            raise
        table = None  # every run failed: the failures are the result
    return StudyResult(
        table=table,
        failed=failed,
        busy=[o.name for o in outcomes if o.status == "busy"],
    )


@dataclass(frozen=True)
class StudyResult:
    """Where the tables are (None when no run finished), which tasks failed (with their errors) and which
    were busy elsewhere."""

    table: Path | None
    failed: list[launch.Outcome]
    busy: list[str]
