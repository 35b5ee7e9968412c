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
      clip: {eps: 0.2}
      pspo: {}
      noclip: {num_iterations: 1}
      clip-shuffled: {objective: clip, shuffle_advantages: true}  # a labelled variant (a control)
    cells:                                                      # settings for one (model, objective)
      - {model: tiny-general-s, objective: clip, set: {learning_rate: 2.0e-4}}
    eval: {benchmarks: [synthetic, synthetic-svamp], limit: null, batch_size: 64}

Later layers win: train < models < objectives < cells. ``models`` may also be a plain list. An
``objectives`` key is the run's label; an entry that sets ``objective`` runs that objective under the label,
which is how controls (shuffled advantages, SGD) sit beside the objectives in one table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pspo_repro import rundir
from pspo_repro.train import TrainSettings, train

PROFILE_KEYS = {"name", "description", "models", "seeds", "train", "objectives", "cells", "eval"}


@dataclass(frozen=True)
class Run:
    """One cell of a study: where it lives and what it trains."""

    model: str
    objective: str  # the label in the profile: an objective name, or a variant such as "clip-shuffled"
    seed: int
    settings: TrainSettings

    @property
    def name(self) -> str:
        return f"{self.model.replace('/', '--')}/{self.objective}/seed{self.seed}"


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
    runs = []
    for model, for_model in model_settings.items():
        for objective, for_objective in profile["objectives"].items():
            for seed in profile.get("seeds", [0]):
                values = {
                    **profile.get("train", {}),
                    **(for_model or {}),
                    **(for_objective or {}),
                    **cells.get((model, objective), {}),
                }
                values.update(model=model, seed=seed)
                values["objective"] = (for_objective or {}).get("objective", objective)
                runs.append(Run(model, objective, seed, TrainSettings.from_dict(values)))
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
        ("objective", objectives, {r.objective for r in runs}),
        ("seed", seeds, {r.seed for r in runs}),
    ):
        unknown = sorted(set(wanted or ()) - have, key=str)
        if unknown:
            raise ValueError(f"{kind}(s) {unknown} not in the profile; it has: {sorted(have, key=str)}")
    return [
        r
        for r in runs
        if (models is None or r.model in models)
        and (objectives is None or r.objective in objectives)
        and (seeds is None or r.seed in seeds)
    ]


def run_study(
    profile_name: str,
    runs_root: Path,
    results_root: Path,
    data_dir: str | None = None,
    models: list[str] | None = None,
    objectives: list[str] | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """Train and evaluate the runs of a profile (all, or those selected), then write the tables from every
    finished run of the study; returns the accuracy table's path."""
    from pspo_repro import evaluate

    profile = load_profile(profile_name)
    name = profile.get("name", Path(profile_name).stem)
    eval_opts = dict(profile.get("eval", {}))
    benchmarks = evaluate.parse_benchmarks(",".join(eval_opts.pop("benchmarks", ["synthetic"])))
    runs = select(expand(profile), models, objectives, seeds)
    for i, run in enumerate(runs, 1):
        run_dir = runs_root / name / run.name
        print(f"[{i}/{len(runs)}] {run.name}", flush=True)
        settings = run.settings
        if data_dir and settings.data_dir is None:
            settings = TrainSettings.from_dict({**settings.to_dict(), "data_dir": data_dir})
        train(settings, run_dir)
        evaluate.evaluate(str(run_dir), benchmarks, run_dir, data_dir=data_dir, **eval_opts)
    return write_table(runs_root / name, results_root / name, profile)


def collect(study_dir: Path) -> list[dict[str, Any]]:
    """One row per (run, benchmark, metric) from the finished runs under a study folder."""
    rows = []
    for done in sorted(study_dir.glob("*/*/seed*/DONE")):
        run_dir = done.parent
        config = rundir.read_json(run_dir / "config.json")
        summary_path = run_dir / "eval" / "summary.json"
        if not summary_path.is_file():
            continue
        finished = rundir.read_json(done)
        for bench, metrics in rundir.read_json(summary_path)["benchmarks"].items():
            for metric in ("strict", "flexible", "permissive"):
                m = metrics["metrics"][metric]
                rows.append(
                    {
                        "model": config["model"],
                        "objective": run_dir.parent.name,  # the profile's label (a variant keeps its own)
                        "seed": config["seed"],
                        "benchmark": bench,
                        "metric": metric,
                        "accuracy": m["accuracy"],
                        "ci95_low": m["ci95"][0],
                        "ci95_high": m["ci95"][1],
                        "n": metrics["n_problems"],
                        "validation_first": finished["validation_first"]["strict"],
                        "validation_best": finished["validation_best"]["strict"],
                        "train_seconds": finished["seconds"],
                        "run": str(run_dir),
                    }
                )
    return rows


# Probe fields averaged over a run's optimizer steps for the training table.
PROBE_MEANS = ("zero_weight_frac", "ratio_outside", "mean_abs_r_minus_1", "kl_old_theta", "grad_norm")


def collect_training(study_dir: Path) -> list[dict[str, Any]]:
    """One row per finished run: validation before and after, speed, and its probes averaged over steps."""
    rows = []
    for done in sorted(study_dir.glob("*/*/seed*/DONE")):
        run_dir = done.parent
        config = rundir.read_json(run_dir / "config.json")
        finished = rundir.read_json(done)
        probes_path = run_dir / "probes.jsonl"
        probes = rundir.read_jsonl(probes_path) if probes_path.is_file() else []
        row = {
            "model": config["model"],
            "objective": run_dir.parent.name,
            "seed": config["seed"],
            "steps": finished["steps"],
            "validation_n": finished["validation_first"]["n"],
            "validation_first": finished["validation_first"]["strict"],
            "validation_last": finished["validation_last"]["strict"],
            "validation_best": finished["validation_best"]["strict"],
            "seconds_per_step": finished["seconds_per_step"],
        }
        for key in PROBE_MEANS:
            values = [p[key] for p in probes if p.get(key) is not None]
            row[key] = sum(values) / len(values) if values else None
        cosines = [p["cos_to_noclip"] for p in probes if p.get("cos_to_noclip") is not None]
        row["cos_to_noclip_min"] = min(cosines) if cosines else None
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    rundir.atomic_write_text(path, buf.getvalue())


def write_table(study_dir: Path, out_dir: Path, profile: dict[str, Any]) -> Path:
    """accuracy.csv (every row) and accuracy.md (mean over seeds), training.csv and training.md (validation
    before and after, speed and gradient probes per run), with the profile beside them."""
    rows = collect(study_dir)
    if not rows:
        raise FileNotFoundError(f"no finished, evaluated runs under {study_dir}")
    _write_csv(out_dir / "accuracy.csv", rows)
    training = collect_training(study_dir)
    _write_csv(out_dir / "training.csv", training)
    rundir.atomic_write_text(out_dir / "profile.yaml", yaml.safe_dump(profile, sort_keys=False))
    rundir.atomic_write_text(out_dir / "accuracy.md", markdown_table(rows))
    rundir.atomic_write_text(out_dir / "training.md", training_table(training))
    return out_dir / "accuracy.md"


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * mean:.{digits}f}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def training_table(rows: list[dict[str, Any]]) -> str:
    """Per (model, objective): validation strict accuracy before and after (mean ± sd over seeds, in
    percent), its change, seconds per step, and the probe means (percent of completion tokens)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["objective"]), []).append(r)
    lines = [
        "| model | objective | seeds | validation before | after | change | s/step | zero-gradient tokens %"
        " | ratios outside clip range % | mean abs(r-1) | min cos to unclipped |",
        "|" + "---|" * 11,
    ]

    def col(group: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 1) -> str:
        return _mean_sd([r[key] for r in group if r[key] is not None], scale, digits)

    for (model, objective), group in groups.items():
        change = [r["validation_last"] - r["validation_first"] for r in group]
        lines.append(
            f"| {model} | {objective} | {len(group)} | {col(group, 'validation_first', 100)} | "
            f"{col(group, 'validation_last', 100)} | {_mean_sd(change, 100)} | {col(group, 'seconds_per_step')} | "
            f"{col(group, 'zero_weight_frac', 100, 2)} | {col(group, 'ratio_outside', 100, 2)} | "
            f"{col(group, 'mean_abs_r_minus_1', 1, 4)} | {col(group, 'cos_to_noclip_min', 1, 2)} |"
        )
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Mean accuracy over seeds per (model, objective) and (benchmark, metric), in percent."""
    cells: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = {}
    columns: list[tuple[str, str]] = []
    for r in rows:
        col = (r["benchmark"], r["metric"])
        if col not in columns:
            columns.append(col)
        cells.setdefault((r["model"], r["objective"]), {}).setdefault(col, []).append(r["accuracy"])
    head = "| model | objective | seeds | " + " | ".join(f"{b} {m}" for b, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for (model, objective), by_col in cells.items():
        n = max(len(v) for v in by_col.values())
        vals = [f"{100 * sum(by_col[c]) / len(by_col[c]):.1f}" if c in by_col else "" for c in columns]
        lines.append(f"| {model} | {objective} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
