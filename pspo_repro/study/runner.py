"""A study run: a profile's runs trained, evaluated and tabulated, in local workers or Slurm jobs. Finished runs
and evaluations are skipped, so an interrupted study resumes where it stopped. Profiles and their format:
:mod:`pspo_repro.study.profiles`; tables: :mod:`pspo_repro.analysis.tables`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspo_repro.analysis import tables
from pspo_repro.study import environment, launch
from pspo_repro.study.profiles import Run, expand, load_profile, model_folder, select

BASE = tables.START  # the folder, beside a model's runs, that holds its starting model's evaluation

LAUNCHERS = ("local", "slurm")


def tasks(
    runs: list[Run],
    study_dir: Path,
    benchmarks: list[str],
    eval_options: dict[str, Any],
    data_dir: str | None,
    time_limits: dict[str, float | None] | None = None,
) -> list[launch.Task]:
    """The study's tasks in the order they should start, each with ``time_limits`` (None:
    :data:`pspo_repro.study.launch.DEFAULT_TIME_LIMITS`).

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
    limits = launch.time_limits(time_limits)

    def start(model: str) -> launch.Task:
        folder = study_dir / model_folder(model) / BASE
        # the starting model is evaluated with the system prompt its runs train with
        options = {"system_prompt": by_model[model][0].settings.system_prompt, **eval_options}
        return launch.Task(f"{model}/{BASE}", "base", folder, model, bench, options, None, data_dir, limits)

    def trained(run: Run) -> launch.Task:
        from pspo_repro.evaluation import evaluate

        run_bench = tuple(evaluate.parse_benchmarks(",".join(run.benchmarks))) if run.benchmarks else bench
        settings = run.settings.to_dict()
        if data_dir and settings["data_dir"] is None:
            settings["data_dir"] = data_dir
        folder = study_dir / run.name
        options = eval_options if run.eval_limit is None else {**eval_options, "limit": run.eval_limit}
        return launch.Task(
            run.name, "train", folder, run.model, run_bench, options, settings, data_dir, limits
        )

    # a parent is named by its build ("tiny-general-l" is build 0, as "tiny-general-l@0")
    parent = {m: tiny.recipe_of(m).init_from for m in by_model if tiny.is_tiny(m)}
    parent = {m: p and tiny.split_build(p) for m, p in parent.items()}
    children = [m for m in by_model if parent.get(m) is not None]
    first = [m for m in by_model if m not in children]
    built = {tiny.split_build(m) if tiny.is_tiny(m) else m: m for m in first}
    result = [start(m) for m in first]
    for model in first:
        # a child's warm start begins once its parent has been built and its siblings' runs have run
        result += [start(c) for c in children if built.get(parent[c]) == model]
        result += [trained(r) for r in by_model[model]]
    result += [start(c) for c in children if parent[c] not in built]
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
    time_limits: dict[str, Any] | None = None,
) -> StudyResult:
    """Train and evaluate the runs of a profile (all, or those selected), then write the tables from every
    finished run of the study. A failing run fails alone: the others go on, and the result lists the
    failures.

    ``launcher``: ``local`` runs ``workers`` tasks at once on this machine (``isolate``: training and
    evaluation each in a fresh process; None: whenever CUDA is available, see :mod:`pspo_repro.study.launch`);
    ``slurm`` submits one job per task (:mod:`pspo_repro.study.slurm`, with the profile's ``slurm`` settings
    updated by ``slurm_settings``) and waits for them.

    ``time_limits``: seconds each phase of a task (``train``, ``eval``) may take before its process is killed
    and the task fails (None: no limit), over the profile's ``limits`` (see
    :func:`pspo_repro.study.launch.time_limits`)."""
    from pspo_repro.evaluation import evaluate
    from pspo_repro.study.console import StudyProgress

    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")

    profile = load_profile(profile_name)
    name = profile.get("name", Path(profile_name).stem)
    if launcher == "slurm":
        from pspo_repro.study import slurm

        slurm_options = slurm.options(profile.get("slurm"), slurm_settings)  # bad settings fail before work
    limits = launch.time_limits(profile.get("limits"), time_limits)  # bad limits fail before work
    eval_opts = dict(profile.get("eval", {}))
    benchmarks = evaluate.parse_benchmarks(",".join(eval_opts.pop("benchmarks", ["synthetic"])))
    runs = select(expand(profile), models, objectives, seeds)
    study_dir = runs_root / name
    planned = tasks(runs, study_dir, benchmarks, eval_opts, data_dir, limits)
    todo = [t for t in planned if not launch.is_finished(t)]
    if launcher == "local":  # Slurm jobs check on their nodes, whose environment may differ from this one
        environment.require_vllm(f"profile {name!r}", todo)  # before any run folder, not after training
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
