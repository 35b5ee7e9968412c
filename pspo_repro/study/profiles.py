"""Profiles: a study's YAML expanded into its runs (models x objectives x seeds), each with its fully resolved
training settings.

Profile format::

    name: cpu
    seeds: [0, 1]
    builds: [0, 1]                                              # tiny models: independent warm starts
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
      clip-eps0: {objective: clip, epsilon: 0.0, benchmarks: [synthetic]}  # evaluated on these only
    cells:                                                      # settings for one (model, objective)
      - {model: tiny-general-s, objective: clip, set: {learning_rate: 2.0e-4}}
    grid:                                                       # the phase diagram: reuse x learning rate
      model: tiny-general-s
      builds: [0]                 # which builds of a tiny model (default: the profile's first)
      seeds: [0, 1, 2]
      reuse: [1, 4, 16]           # optimizer updates per generation (num_iterations; one mini-batch each)
      learning_rates: [2.0e-4, 6.0e-4]
      generations: 6              # run length in generations: a cell runs generations x reuse steps
      benchmarks: [synthetic]     # what each cell's final checkpoint is evaluated on
      eval_limit: 512             # ... on its first N problems (default: the profile's eval limit)
      objectives: {clip: {epsilon: 0.2}, noclip: {}, clip-shuffled: {objective: clip, shuffle_advantages: true}}
    eval: {benchmarks: [synthetic, synthetic-svamp], limit: null, batch_size: 64}
    slurm: {partition: gpu, time_min: 360, gpus_per_node: 1, mem_gb: 64}   # the slurm launcher's jobs
    limits: {train: 3600, eval: 1800}   # seconds a task's phase may take before it is killed (none: no limit)

A profile may start from another (``extends: cpu``): its ``train``, ``eval``, ``slurm`` and ``limits``
settings are merged key by key into the other's, and any other key it gives replaces the other's.

``builds`` makes each tiny model's warm start part of the experiment's randomness: every tiny model is run as
``<model>@<build>`` for each build given (independent initialisations and batch orders of the same recipe, see
:func:`pspo_repro.models.tiny.recipe_of`), with the seeds nested in each build. Objectives' ``models`` lists and
cells name the model without the build. Other models have no builds.

Later layers win: train < models < objectives < cells. ``models`` may also be a plain list. An
``objectives`` key is the run's label; an entry that sets ``objective`` runs that objective under the label,
which is how controls (shuffled advantages, SGD) sit beside the objectives in one table; an entry's
``models`` list restricts it to those models, and its ``benchmarks`` list to those benchmarks (default: the
profile's ``eval`` benchmarks).

``grid`` adds the phase diagram's cells: each objective at each (reuse, learning rate) on one model, labelled
``grid-<objective>-r<reuse>-lr<lr>`` (:func:`grid_label`). Reuse is TRL's ``num_iterations`` with one
mini-batch per generation (``steps_per_generation`` 1), so every update sees the same number of completions
and only their staleness changes; a cell's length is a number of generations, so that high-reuse cells see as
many completions as low-reuse ones (and take ``reuse`` times the optimizer steps). Validation runs at the
start and at the end only, so a cell's checkpoint is its final one (no selection), evaluated on the grid's
``benchmarks``; a ``probe_every`` that is a multiple of a cell's reuse is raised to the next one that is not, so
that the probes rotate through the staleness values. The grid's own ``probe_every`` (0: none) replaces the
profile's: the phase diagram reads the every-step probes only, and the cosine probe costs a backward pass. The tables leave grid cells to :mod:`pspo_repro.analysis.phase`.

Each model's starting point is evaluated once (``<runs>/<profile>/<model>/start/eval``), so the tables show
what training added. Tables are written by :mod:`pspo_repro.analysis.tables`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pspo_repro.models import tiny
from pspo_repro.training.settings import TrainSettings

PROFILE_KEYS = {
    "name",
    "description",
    "extends",
    "models",
    "seeds",
    "builds",
    "train",
    "objectives",
    "cells",
    "grid",
    "eval",
    "slurm",
    "limits",
}


@dataclass(frozen=True)
class Run:
    """One cell of a study: where it lives and what it trains."""

    model: str
    label: str  # the profile's name for the arm: an objective, or a variant such as "clip-shuffled"
    seed: int
    settings: TrainSettings
    benchmarks: tuple[str, ...] | None = None  # what its checkpoint is evaluated on (None: the profile's)
    eval_limit: int | None = None  # the first N problems of each (None: the profile's eval limit)

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
        # train, eval, slurm and limits merge key by key; every other key (models, objectives, seeds) replaces
        for key in ("train", "eval", "slurm", "limits"):
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
    evaluated_on = {label: arm.pop("benchmarks", None) for label, arm in arms.items()}
    for label, wanted in only.items():
        unknown = sorted(set(wanted or ()) - set(model_settings))
        if unknown:
            raise ValueError(f"objective {label!r} names models {unknown} that the profile does not have")
    builds = _builds(profile)
    runs = []
    for model, for_model in model_settings.items():
        specs = (
            [f"{model}{tiny.BUILD_MARK}{b}" for b in builds] if builds and tiny.is_tiny(model) else [model]
        )
        for label, for_label in arms.items():
            if only[label] is not None and model not in only[label]:
                continue
            for spec in specs:
                for seed in profile.get("seeds", [0]):
                    values = {
                        **profile.get("train", {}),
                        **(for_model or {}),
                        **for_label,
                        **cells.get((model, label), {}),
                    }
                    values.update(model=spec, seed=seed, label=label)
                    values["objective"] = for_label.get("objective", label)
                    bench = tuple(evaluated_on[label]) if evaluated_on[label] else None
                    runs.append(Run(spec, label, seed, TrainSettings.from_dict(values), bench))
    if profile.get("grid"):  # null: a profile that extends one with a grid drops it
        runs += _expand_grid(profile, model_settings, builds)
    return runs


GRID_PREFIX = "grid-"
GRID_KEYS = {
    "model",
    "builds",
    "seeds",
    "reuse",
    "learning_rates",
    "generations",
    "benchmarks",
    "eval_limit",
    "probe_every",
    "objectives",
}
_GRID_LABEL = re.compile(r"^grid-(?P<name>.+)-r(?P<reuse>\d+)-lr(?P<lr>[0-9.e+-]+)$")


def grid_label(name: str, reuse: int, learning_rate: float) -> str:
    """A phase-diagram cell's run label, e.g. ``grid-clip-r4-lr0.0006``."""
    return f"{GRID_PREFIX}{name}-r{reuse}-lr{learning_rate:g}"


def parse_grid_label(label: str) -> tuple[str, int, float] | None:
    """(objective label, reuse, learning rate) of a grid cell's label; None for any other label."""
    m = _GRID_LABEL.match(label)
    return (m["name"], int(m["reuse"]), float(m["lr"])) if m else None


def _expand_grid(
    profile: dict[str, Any], model_settings: dict[str, Any], builds: list[int] | None
) -> list[Run]:
    """The phase diagram's runs (see the module docstring)."""
    grid = profile["grid"]
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ValueError(f"profile grid has unknown keys {unknown}; allowed: {sorted(GRID_KEYS)}")
    model = grid.get("model")
    if model not in model_settings:
        raise ValueError(
            f"profile grid model {model!r} is not among the profile's models {sorted(model_settings)}"
        )
    for key in ("reuse", "learning_rates", "objectives"):
        if not grid.get(key):
            raise ValueError(f"profile grid needs a non-empty {key!r}, got {grid.get(key)!r}")
    if not all(isinstance(r, int) and r >= 1 for r in grid["reuse"]):
        raise ValueError(f"profile grid reuse must be integers >= 1, got {grid['reuse']!r}")
    generations = grid.get("generations", 6)
    if not isinstance(generations, int) or generations < 1:
        raise ValueError(f"profile grid generations must be an integer >= 1, got {generations!r}")
    grid_builds = grid.get("builds", builds[:1] if builds else None)
    specs = (
        [f"{model}{tiny.BUILD_MARK}{b}" for b in grid_builds]
        if grid_builds and tiny.is_tiny(model)
        else [model]
    )
    benchmarks = tuple(grid["benchmarks"]) if grid.get("benchmarks") else None
    eval_limit = grid.get("eval_limit")
    if eval_limit is not None and (not isinstance(eval_limit, int) or eval_limit < 1):
        raise ValueError(f"profile grid eval_limit must be an integer >= 1 or absent, got {eval_limit!r}")
    grid_probe_every = grid.get("probe_every")
    if grid_probe_every is not None and (not isinstance(grid_probe_every, int) or grid_probe_every < 0):
        raise ValueError(
            f"profile grid probe_every must be an integer >= 0 or absent, got {grid_probe_every!r}"
        )
    runs = []
    for name, for_label in grid["objectives"].items():
        for_label = dict(for_label or {})
        for reuse in grid["reuse"]:
            for lr in grid["learning_rates"]:
                steps = generations * reuse
                label = grid_label(name, reuse, float(lr))
                for spec in specs:
                    for seed in grid.get("seeds", profile.get("seeds", [0])):
                        values = {**profile.get("train", {}), **(model_settings[model] or {}), **for_label}
                        probe_every = int(
                            values.get("probe_every", TrainSettings.probe_every)
                            if grid_probe_every is None
                            else grid_probe_every
                        )
                        # probes must rotate through staleness
                        while probe_every > 0 and reuse > 1 and probe_every % reuse == 0:
                            probe_every += 1
                        values.update(
                            model=spec,
                            seed=seed,
                            label=label,
                            objective=for_label.get("objective", name),
                            learning_rate=float(lr),
                            num_iterations=reuse,
                            steps_per_generation=1,
                            max_steps=steps,
                            eval_every=steps,
                            warmup_steps=0,
                            probe_every=probe_every,
                            checkpoint="final",
                        )
                        runs.append(
                            Run(spec, label, seed, TrainSettings.from_dict(values), benchmarks, eval_limit)
                        )
    return runs


def _builds(profile: dict[str, Any]) -> list[int] | None:
    """The profile's tiny-model builds (None: no ``builds`` key, the models run by their plain names)."""
    builds = profile.get("builds")
    if builds is None:
        return None
    if not isinstance(builds, list) or not builds or not all(isinstance(b, int) and b >= 0 for b in builds):
        raise ValueError(f"profile builds must be a non-empty list of integers >= 0, got {builds!r}")
    if len(set(builds)) != len(builds):
        raise ValueError(f"profile builds must not repeat, got {builds!r}")
    return builds


def select(
    runs: list[Run],
    models: list[str] | None = None,
    objectives: list[str] | None = None,
    seeds: list[int] | None = None,
) -> list[Run]:
    """The runs whose model, objective label and seed are among those given (None: any)."""
    base = {r.model: tiny.split_build(r.model)[0] if tiny.is_tiny(r.model) else r.model for r in runs}
    if models is not None:  # a model without its build selects every build
        models = [m for m in base if m in models or base[m] in models] or models
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
