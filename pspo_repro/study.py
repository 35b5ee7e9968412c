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
    cells:                                                      # settings for one (model, objective)
      - {model: tiny-general-s, objective: clip, set: {learning_rate: 2.0e-4}}
    eval: {benchmarks: [synthetic, synthetic-svamp], limit: null, batch_size: 64}

Later layers win: train < models < objectives < cells. ``models`` may also be a plain list.
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
    objective: str
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
                values.update(model=model, objective=objective, seed=seed)
                runs.append(Run(model, objective, seed, TrainSettings.from_dict(values)))
    return runs


def run_study(profile_name: str, runs_root: Path, results_root: Path, data_dir: str | None = None) -> Path:
    """Train and evaluate every run of a profile, then write the accuracy table; returns the table's path."""
    from pspo_repro import evaluate

    profile = load_profile(profile_name)
    name = profile.get("name", Path(profile_name).stem)
    eval_opts = dict(profile.get("eval", {}))
    benchmarks = evaluate.parse_benchmarks(",".join(eval_opts.pop("benchmarks", ["synthetic"])))
    runs = expand(profile)
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
                        "objective": config["objective"],
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


def write_table(study_dir: Path, out_dir: Path, profile: dict[str, Any]) -> Path:
    """accuracy.csv (every row) and accuracy.md (mean over seeds), with the profile beside them."""
    rows = collect(study_dir)
    if not rows:
        raise FileNotFoundError(f"no finished, evaluated runs under {study_dir}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    rundir.atomic_write_text(out_dir / "accuracy.csv", buf.getvalue())
    rundir.atomic_write_text(out_dir / "profile.yaml", yaml.safe_dump(profile, sort_keys=False))
    rundir.atomic_write_text(out_dir / "accuracy.md", markdown_table(rows))
    return out_dir / "accuracy.md"


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
