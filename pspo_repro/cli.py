"""The command line: ``pspo-repro train``, ``eval``, ``study``, ``audit`` and ``tiny``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from pspo_repro.study import rundir

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Reproduce and audit PSPO and its baselines."
)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values read as YAML scalars (1e-4, true, null, ...)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def load_settings_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise typer.BadParameter(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise typer.BadParameter(
            f"config file {path} must hold a mapping of settings, got {type(values).__name__}"
        )
    return values


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    config: Annotated[Path | None, typer.Option(help="YAML file of settings (see TrainSettings).")] = None,
    model: Annotated[str | None, typer.Option(help="Hub id, local folder or tiny model name.")] = None,
    objective: Annotated[
        str | None,
        typer.Option(help="clip, pspo, sigmoid, topr, noclip, dualclip, gspo, cispo or vespo."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="gsm8k or synthetic.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Run seed (data split, sampling, init of nothing).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Local benchmark folder (else PSPO_DATA_DIR, else hub).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other setting as key=value; repeatable.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train one configuration into a run directory (skipped when the run is already complete)."""
    from pspo_repro.study.console import quiet_libraries
    from pspo_repro.training import distributed
    from pspo_repro.training.settings import TrainSettings
    from pspo_repro.training.train import train as run_training

    values = load_settings_file(config)
    named = {"model": model, "objective": objective, "dataset": dataset, "seed": seed, "data_dir": data_dir}
    values.update({k: v for k, v in named.items() if v is not None})
    values.update(parse_overrides(set_ or []))
    try:
        settings = TrainSettings.from_dict(values)
    except (TypeError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    quiet_libraries()
    try:
        run_dir = run_training(settings, out, progress=not quiet)
    except (ValueError, FileNotFoundError, ImportError) as err:  # bad model, data or vLLM: one line
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    distributed.leave()
    if distributed.is_main_process():  # under accelerate launch, one process reports
        typer.echo(json.dumps(rundir.read_json(run_dir / rundir.DONE), indent=2))


@app.command("eval")
def evaluate_command(
    model: Annotated[str, typer.Option(help="Hub id, local folder, run directory, tiny name or smollm2.")],
    benchmarks: Annotated[
        str, typer.Option(help="Comma-separated names, 'all' or 'synthetic-all'.")
    ] = "gsm8k",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the run directory).")] = None,
    backend: Annotated[str, typer.Option(help="hf (CPU or GPU) or vllm (GPU).")] = "hf",
    limit: Annotated[
        int | None, typer.Option(help="Evaluate the first N problems of each benchmark.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 for greedy; > 0 samples.")] = 0.0,
    n_samples: Annotated[int, typer.Option(help="Samples per problem (pass@k, majority vote).")] = 1,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Override the per-benchmark token budget.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
    data_dir: Annotated[
        str | None, typer.Option(help="Local benchmark folder (else PSPO_DATA_DIR, else hub).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Discard records made with other settings.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    system_prompt: Annotated[
        str | None,
        typer.Option(help="default or authors (default: a run's own, else default)."),
    ] = None,
) -> None:
    """Evaluate a model on benchmarks: strict, flexible, permissive and paper accuracy side by side."""
    from pspo_repro.evaluation import evaluate

    target = out if out is not None else Path(model)
    if out is None and not (target / rundir.CONFIG).is_file():
        raise typer.BadParameter("--out is required unless --model is a run directory")
    try:
        names = evaluate.parse_benchmarks(benchmarks)
        summary = evaluate.evaluate(
            model,
            names,
            target,
            backend=backend,
            limit=limit,
            temperature=temperature,
            n_samples=n_samples,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            data_dir=data_dir,
            seed=seed,
            progress=not quiet,
            overwrite=overwrite,
            system_prompt=system_prompt,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(evaluate.summary_table(summary))


@app.command()
def study(
    profile: Annotated[
        str, typer.Option(help="Profile name (pspo_repro/profiles) or path to a YAML file.")
    ] = "cpu",
    runs: Annotated[Path, typer.Option(help="Folder for run directories.")] = Path("runs"),
    results: Annotated[Path, typer.Option(help="Folder for tables.")] = Path("results"),
    data_dir: Annotated[
        str | None, typer.Option(help="Local benchmark folder (else PSPO_DATA_DIR, else hub).")
    ] = None,
    models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
    objectives: Annotated[
        str | None, typer.Option(help="Only these objective labels (comma-separated).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Only these seeds (comma-separated).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Runs at once (default: one single-threaded worker per CPU core, or one per GPU)."),
    ] = None,
    launcher: Annotated[
        str, typer.Option(help="local (--workers processes here) or slurm (one job per run, submitit).")
    ] = "local",
    isolate: Annotated[
        bool | None,
        typer.Option(
            "--isolate/--no-isolate",
            help="Training and evaluation each in a fresh process (default: whenever CUDA is available).",
        ),
    ] = None,
    slurm_set: Annotated[
        list[str] | None,
        typer.Option(
            "--slurm",
            help="A slurm launcher setting as key=value (partition, time_min, gpus_per_node, cpus_per_task, "
            "mem_gb, account, qos, constraint, cluster, poll_s); repeatable; overrides the profile's.",
        ),
    ] = None,
    time_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--time-limit",
            help="Seconds a task's phase may take before its process is killed and the run fails, as "
            "phase=seconds (train, eval; 'none': no limit); repeatable; overrides the profile's limits.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(help="Print the runs, their optimizer steps, completions and GPU-hours; run nothing."),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Train and evaluate every run of a profile (resumable, in parallel workers or Slurm jobs), then write
    its tables.

    Exits with status 1 when any run failed (the others still finish and are tabulated)."""
    from pspo_repro.study.console import quiet_libraries
    from pspo_repro.study.launch import default_workers
    from pspo_repro.study.runner import run_study

    quiet_libraries()

    def split(value: str | None) -> list[str] | None:
        return [v.strip() for v in value.split(",") if v.strip()] if value else None

    try:
        seed_list = [int(s) for s in split(seeds)] if seeds else None
    except ValueError:
        typer.echo(f"error: --seeds must be comma-separated integers, got {seeds!r}", err=True)
        raise typer.Exit(2) from None
    if workers is not None and workers < 1:
        typer.echo(f"error: --workers must be >= 1, got {workers}", err=True)
        raise typer.Exit(2)
    if dry_run:
        from pspo_repro.study import plan

        try:
            typer.echo(plan.describe(profile, split(models), split(objectives), seed_list))
        except (ValueError, FileNotFoundError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        return
    try:
        result = run_study(
            profile,
            runs,
            results,
            data_dir=data_dir,
            models=split(models),
            objectives=split(objectives),
            seeds=seed_list,
            workers=workers or (default_workers() if launcher == "local" else 1),
            progress=not quiet,
            isolate=isolate,
            launcher=launcher,
            slurm_settings=parse_overrides(slurm_set or []),
            time_limits=parse_overrides(time_limit or []),
        )
    except (ValueError, FileNotFoundError, ImportError) as err:  # ImportError: vLLM missing, in one line
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if result.table is not None:
        typer.echo(result.table.read_text())
        typer.echo(f"tables in {result.table.parent}")
    if result.busy:
        typer.echo(
            f"{len(result.busy)} run(s) were being trained by another process: {', '.join(result.busy)}"
        )
    if result.failed:
        typer.echo(f"{len(result.failed)} run(s) failed (see FAILED in each run folder):", err=True)
        for outcome in result.failed:
            typer.echo(f"  {outcome.name}: {outcome.error}", err=True)
        raise typer.Exit(1)


@app.command()
def report(
    profile: Annotated[str, typer.Option(help="The study's profile name (or profile YAML file).")] = "cpu",
    runs: Annotated[
        Path, typer.Option(help="Folder of run directories (the study is <runs>/<profile>).")
    ] = Path("runs"),
    results: Annotated[
        Path, typer.Option(help="Results folder: notebooks and tables go to <results>/<profile>/.")
    ] = Path("results"),
    figures: Annotated[Path, typer.Option(help="Figures go to <figures>/<profile>/.")] = Path("figures"),
    notebooks: Annotated[Path | None, typer.Option(help="Folder of notebooks (default: notebooks/).")] = None,
) -> None:
    """Execute every notebook on a study's results: figures (PNG, PDF) and tables (CSV, Markdown, LaTeX).

    Exits with status 1 naming each notebook that failed and its cell (the others still run)."""
    from pspo_repro.analysis import report as report_module

    def done(executed: report_module.Executed) -> None:
        verdict = "failed" if executed.error else "done"
        typer.echo(f"{executed.name}: {verdict} in {executed.seconds:.0f} s ({executed.output})")

    try:
        try:
            report_module.run_report(
                profile, runs, results, figures, notebooks or report_module.NOTEBOOKS_DIR, on_done=done
            )
        finally:
            _update_readme(report_module.profile_name(profile), results)
    except FileNotFoundError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except report_module.ReportError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    name = report_module.profile_name(profile)
    typer.echo(f"tables in {results / name / 'tables'}, figures in {figures / name}")


def _update_readme(name: str, results: Path) -> None:
    """The README's results block for this profile, from its result files (when the README has its markers)."""
    from pspo_repro.analysis import readme_block
    from pspo_repro.analysis import report as report_module

    readme = report_module.REPO_ROOT / "README.md"
    if (results / name).is_dir() and readme.is_file() and readme_block.update(readme, name, results / name):
        typer.echo(f"README.md: results block for {name} rewritten from {results / name}")


@app.command()
def audit(
    profile: Annotated[
        str, typer.Option(help="Profile name (pspo_repro/profiles) or path to a YAML file.")
    ] = "audit",
    runs: Annotated[Path, typer.Option(help="Folder of run directories (as given to study).")] = Path("runs"),
    results: Annotated[
        Path, typer.Option(help="Folder for results (audit.md goes beside the tables).")
    ] = Path("results"),
    measure: Annotated[
        bool, typer.Option(help="Measure the exact identities on the study's runs when not yet measured.")
    ] = True,
    identity_steps: Annotated[
        int | None,
        typer.Option(
            help="Optimizer steps per identity measurement (default: one reuse cycle, 4 to 32, at most the "
            "run's length)."
        ),
    ] = None,
) -> None:
    """Audit the paper's claims on a study's finished runs: results/<study>/audit.md and its figures."""
    from pspo_repro.analysis.audit import run_audit
    from pspo_repro.study.console import quiet_libraries

    quiet_libraries()
    try:
        path = run_audit(profile, runs, results, measure=measure, identity_steps=identity_steps)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"audit in {path}")


@app.command()
def tiny(
    names: Annotated[list[str] | None, typer.Argument(help="Tiny models to build (default: all).")] = None,
) -> None:
    """Build (warm-start) the tiny models into the cache, and print where they are."""
    from pspo_repro.models import tiny as tiny_models

    for name in names or [n for n in tiny_models.names() if n != "tiny-test"]:
        try:
            path = tiny_models.ensure(name)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        typer.echo(f"{name}\t{path}")


if __name__ == "__main__":
    app()
