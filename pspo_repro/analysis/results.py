"""A study's runs and tables as tidy pandas frames, for the notebooks, the report and the audit.

``load(profile, runs_dir, results_dir)`` reads ``<runs_dir>/<profile>/`` (the run folders laid out by
``pspo-repro study``) and the profile written beside the tables in ``<results_dir>/<profile>/``. Every frame
has the run's coordinates first: ``model``, ``label`` (the profile's name for the arm, such as ``clip`` or
``clip-shuffled``), ``objective`` (the objective it trains) and ``seed``; each model's starting point has
label and objective ``start`` and no seed.

Frames hold the finished runs (``DONE``) only, and leave out the phase diagram's cells
(:mod:`pspo_repro.analysis.phase`). Every run the profile expects that is missing, partial
(started, not finished), failed or not evaluated on every benchmark is listed by :attr:`Study.problems`
(and warned about once when loading), so it is reported rather than silently left out.

Metrics are discovered from the data (the boolean grades of the per-problem records, the metrics of the
summaries), in the order paper, strict, flexible, permissive, then any other.

The statistics over seeds are in :mod:`pspo_repro.analysis.aggregate`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pspo_repro.evaluation import evaluate
from pspo_repro.study import rundir

START = "start"
CONTROL_SUFFIX = "-shuffled"
METRIC_ORDER = ("paper", "strict", "flexible", "permissive")
KEYS = ["model", "label", "objective", "seed"]
# Settings that name a run rather than configure it: never reported as "settings that differ".
_COORDINATES = {"model", "label", "objective", "seed", "data_dir"}
CATEGORY_KEYS = evaluate.CATEGORY_KEYS  # metadata keys that name a problem's category
STATUSES = ("done", "partial", "failed", "missing")


def _quiet_import(module: str) -> Any:
    """A module of the package, imported without tqdm's notebook warning (the trainer's progress bar, which
    some imports pull in, is never shown here)."""
    import importlib

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        return importlib.import_module(module)


def order_metrics(names: Iterable[str]) -> list[str]:
    """Metric names in the order paper, strict, flexible, permissive, then the others alphabetically."""
    names = set(names)
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def _grade_metrics(grade: dict[str, Any]) -> list[str]:
    return [k for k, v in grade.items() if isinstance(v, bool) and not k.endswith("_answer")]


def base_objective(label: str) -> str:
    """The objective a label trains when the label says it (``clip-stress`` -> ``clip``), else the label."""
    return label.split("-", 1)[0]


def is_control(label: str) -> bool:
    """Whether an arm is the shuffled-advantage control (the noise floor)."""
    return label.endswith(CONTROL_SUFFIX)


@dataclass
class Study:
    """A study's run folders and profile; frames are read on first use and kept."""

    name: str
    study_dir: Path
    results_dir: Path
    spec: dict[str, Any] | None = None
    _warned: bool = field(default=False, repr=False)

    # --- what exists --------------------------------------------------------------------------------

    @cached_property
    def expected(self) -> pd.DataFrame:
        """The runs the profile defines (empty without a profile)."""
        if self.spec is None:
            return pd.DataFrame(columns=["model", "label", "objective", "seed"])
        profiles = _quiet_import("pspo_repro.study.profiles")

        rows = [
            {"model": r.model, "label": r.label, "objective": r.settings.objective, "seed": r.seed}
            for r in self._planned
            if profiles.parse_grid_label(r.label) is None  # the phase diagram's cells: analysis.phase
        ]
        return pd.DataFrame(rows, columns=["model", "label", "objective", "seed"])

    @cached_property
    def _planned(self) -> list[Any]:
        """The profile's runs, expanded (every build of every model); none without a profile."""
        if self.spec is None:
            return []
        return _quiet_import("pspo_repro.study.profiles").expand(self.spec)

    @cached_property
    def _arm_benchmarks(self) -> dict[tuple[str, str], list[str]]:
        """Each (model, arm) of the profile that names its own benchmarks, with them (the first run's)."""
        evaluate = _quiet_import("pspo_repro.evaluation.evaluate")
        own: dict[tuple[str, str], list[str]] = {}
        for r in self._planned:
            if r.benchmarks and (r.model, r.label) not in own:
                own[(r.model, r.label)] = evaluate.parse_benchmarks(",".join(r.benchmarks))
        return own

    def _benchmarks_of(self, model: str, label: str) -> list[str]:
        """The benchmarks a run is evaluated on: its arm's own list in the profile, else the profile's."""
        return self._arm_benchmarks.get((model, label), self.benchmarks)

    def _run_folders(self) -> list[Path]:
        """The run folders, without the phase diagram's cells (their tables are :mod:`~pspo_repro.analysis.phase`'s)."""
        profiles = _quiet_import("pspo_repro.study.profiles")
        return sorted(
            p
            for p in self.study_dir.glob("*/*/seed*")
            if p.is_dir() and p.parent.name != START and profiles.parse_grid_label(p.parent.name) is None
        )

    @cached_property
    def runs(self) -> pd.DataFrame:
        """One row per run the profile expects or the study folder holds: coordinates, ``status`` (done,
        partial, failed, missing), ``evaluated`` (benchmarks with records), ``path``, and the settings
        that differ between runs."""
        profiles = _quiet_import("pspo_repro.study.profiles")

        found: dict[tuple[str, str, int], dict[str, Any]] = {}
        configs: dict[tuple[str, str, int], dict[str, Any]] = {}
        for folder in self._run_folders():
            config = _read_config(folder)
            model = config.get("model") or self._model_name(folder.parent.parent.name)
            label = config.get("label") or folder.parent.name
            seed = int(config.get("seed", folder.name.removeprefix("seed")))
            status = (
                "done"
                if rundir.is_done(folder)
                else "failed"
                if (folder / rundir.FAILED).is_file()
                else "partial"
            )
            key = (model, label, seed)
            configs[key] = config
            found[key] = {
                "model": model,
                "label": label,
                "objective": config.get("objective", base_objective(label)),
                "seed": seed,
                "status": status,
                "evaluated": ",".join(_evaluated(folder)),
                "path": str(folder),
            }
        for row in self.expected.itertuples(index=False):
            key = (row.model, row.label, int(row.seed))
            if key not in found:
                folder = self.study_dir / profiles.model_folder(row.model) / row.label / f"seed{row.seed}"
                found[key] = {
                    **row._asdict(),
                    "seed": int(row.seed),
                    "status": "missing",
                    "evaluated": "",
                    "path": str(folder),
                }
        frame = pd.DataFrame(
            list(found.values()),
            columns=["model", "label", "objective", "seed", "status", "evaluated", "path"],
        )
        differ = _differing_settings(list(configs.values()))
        for name in differ:
            frame[name] = [configs.get((m, lab, s), {}).get(name) for m, lab, s in _keys(frame)]
        return self._ordered(frame)

    def _model_name(self, folder: str) -> str:
        for model in self.models_in_profile:
            if model.replace("/", "--") == folder:
                return model
        return folder

    @cached_property
    def models_in_profile(self) -> list[str]:
        """The profile's models as its runs name them: each build of a tiny model (``tiny-general-s@1``)."""
        return list(dict.fromkeys(r.model for r in self._planned))

    @cached_property
    def starts(self) -> pd.DataFrame:
        """Each model's starting-point evaluation: model, path, evaluated benchmarks."""
        rows = []
        models = list(dict.fromkeys([*self.models_in_profile, *self.runs["model"]]))
        for model in models:
            folder = self.study_dir / model.replace("/", "--") / START
            rows.append({"model": model, "path": str(folder), "evaluated": ",".join(_evaluated(folder))})
        return pd.DataFrame(rows, columns=["model", "path", "evaluated"])

    @cached_property
    def benchmarks(self) -> list[str]:
        """The profile's evaluation benchmarks, else those found in the summaries."""
        if self.spec is not None and self.spec.get("eval", {}).get("benchmarks"):
            evaluate = _quiet_import("pspo_repro.evaluation.evaluate")
            return evaluate.parse_benchmarks(",".join(self.spec["eval"]["benchmarks"]))
        found = [b for ev in [*self.runs["evaluated"], *self.starts["evaluated"]] for b in ev.split(",") if b]
        return list(dict.fromkeys(found))

    @cached_property
    def problems(self) -> pd.DataFrame:
        """What the frames leave out: runs that are missing, partial or failed, and evaluations (of a run
        or a starting model) that lack benchmarks. Columns: model, label, seed, status, detail, path."""
        rows = []
        for r in self.runs.itertuples(index=False):
            if r.status != "done":
                detail = {
                    "missing": "no run folder",
                    "partial": "started, not finished (no DONE)",
                    "failed": _first_line(Path(r.path) / rundir.FAILED),
                }[r.status]
                rows.append((r.model, r.label, r.seed, r.status, detail, r.path))
                continue
            wanted = self._benchmarks_of(r.model, r.label)
            lacking = [b for b in wanted if b not in r.evaluated.split(",")]
            if lacking:
                rows.append((r.model, r.label, r.seed, "not evaluated", ", ".join(lacking), r.path))
        for s in self.starts.itertuples(index=False):
            lacking = [b for b in self.benchmarks if b not in s.evaluated.split(",")]
            if lacking:
                rows.append((s.model, START, None, "not evaluated", ", ".join(lacking), s.path))
        return pd.DataFrame(rows, columns=["model", "label", "seed", "status", "detail", "path"])

    def status(self) -> str:
        """One Markdown line: how many runs finished, and what the frames leave out."""
        done = int((self.runs["status"] == "done").sum())
        text = f"**{self.name}**: {done} of {len(self.runs)} runs finished"
        if len(self.problems):
            counts = self.problems["status"].value_counts().to_dict()
            text += "; left out of every table and figure: " + ", ".join(
                f"{n} {s}" for s, n in counts.items()
            )
            text += " (listed below)"
        return text + "."

    def warn_problems(self) -> None:
        """Warn once about runs and evaluations the frames leave out."""
        if not self._warned and len(self.problems):
            self._warned = True
            counts = self.problems["status"].value_counts().to_dict()
            warnings.warn(
                f"study {self.name}: {len(self.problems)} run(s) or evaluation(s) left out of the frames "
                f"({', '.join(f'{n} {s}' for s, n in counts.items())}); see Study.problems",
                stacklevel=2,
            )

    @cached_property
    def labels(self) -> list[str]:
        """Arms in the profile's order (start first), then any others found."""
        from_profile = list((self.spec or {}).get("objectives", {}))
        found = list(dict.fromkeys(self.runs["label"]))
        return [START, *from_profile, *[x for x in found if x not in from_profile]]

    @cached_property
    def models(self) -> list[str]:
        return list(dict.fromkeys([*self.models_in_profile, *self.runs["model"]]))

    def _ordered(self, frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
        """Rows sorted by model (profile order), arm (profile order, start first), seed, then ``extra``."""
        if frame.empty:
            return frame.reset_index(drop=True)
        order = {
            "model": {m: i for i, m in enumerate(self.models_in_profile)},
            "label": {x: i for i, x in enumerate([START, *(self.spec or {}).get("objectives", {})])},
        }
        if "benchmark" in frame.columns:  # (the runs frame, which benchmarks may read, has none)
            order["benchmark"] = {b: i for i, b in enumerate(self.benchmarks)}

        def key(col: pd.Series) -> pd.Series:
            if col.name in order:
                known = order[col.name]
                return col.map(lambda v: (known.get(v, len(known)), str(v)))
            return col

        by = [c for c in ["model", "label", "seed", *extra] if c in frame.columns]
        return frame.sort_values(by, key=key, na_position="first", kind="stable").reset_index(drop=True)

    def _done(self) -> list[tuple[dict[str, Any], Path]]:
        self.warn_problems()
        done = self.runs[self.runs["status"] == "done"]
        return [({k: r[k] for k in KEYS}, Path(r["path"])) for r in done[[*KEYS, "path"]].to_dict("records")]

    def _evaluated_folders(self) -> list[tuple[dict[str, Any], Path]]:
        starts = [
            ({"model": s["model"], "label": START, "objective": START, "seed": None}, Path(s["path"]))
            for s in self.starts.to_dict("records")
            if s["evaluated"]
        ]
        return starts + self._done()

    # --- frames -------------------------------------------------------------------------------------

    def validation(self) -> pd.DataFrame:
        """Validation every ``eval_every`` steps: coordinates, step, reward, accuracies, n, best."""
        rows = [
            {**keys, **rec}
            for keys, folder in self._done()
            for rec in rundir.read_jsonl(folder / rundir.VALIDATION)
        ]
        return self._frame(rows, ["step"])

    def train_log(self) -> pd.DataFrame:
        """TRL's metrics per logging step (the closing summary line of a run left out)."""
        rows = [
            {**keys, **rec}
            for keys, folder in self._done()
            for rec in rundir.read_jsonl(folder / rundir.TRAIN_LOG)
            if "train_runtime" not in rec
        ]
        return self._frame(rows, ["step"])

    def probes(self) -> pd.DataFrame:
        """One row per optimizer step: the probe record flattened (``ratio_q99``, ``weight_mean``,
        ``grad_norm_attention``...), without the sampled triples (see :meth:`probe_samples`)."""
        rows = []
        for keys, folder in self._done():
            for rec in rundir.read_jsonl(folder / rundir.PROBES):
                row = dict(keys)
                for k, v in rec.items():
                    if k == "samples":
                        continue
                    if k == "grad_norm_groups":
                        row.update({f"grad_norm_{g}": x for g, x in v.items()})
                    elif isinstance(v, dict):
                        row.update({f"{k}_{s}": x for s, x in v.items()})
                    else:
                        row[k] = v
                rows.append(row)
        return self._frame(rows, ["step"])

    def probe_samples(self) -> pd.DataFrame:
        """The sampled (ratio, advantage, weight) triples of the probe steps, one row per token."""
        rows = [
            {
                **keys,
                "step": rec["step"],
                "staleness": rec.get("staleness"),
                "ratio": r,
                "advantage": a,
                "weight": w,
            }
            for keys, folder in self._done()
            for rec in rundir.read_jsonl(folder / rundir.PROBES)
            for r, a, w in rec.get("samples", [])
        ]
        return self._frame(rows, ["step"])

    @cached_property
    def configs(self) -> dict[tuple[str, str, int], dict[str, Any]]:
        """Each finished run's resolved settings, by (model, label, seed)."""
        return {
            (keys["model"], keys["label"], keys["seed"]): _read_config(folder)
            for keys, folder in self._done()
        }

    @cached_property
    def _records(self) -> pd.DataFrame:
        rows = []
        for keys, folder in self._evaluated_folders():
            for path in sorted((folder / rundir.EVAL).glob("*.jsonl")):
                for rec in rundir.read_jsonl(path):
                    grade = rec["grades"][0]
                    row = {
                        **keys,
                        "benchmark": rec["benchmark"],
                        "id": rec["id"],
                        "gold": rec["gold"],
                        "completion": rec["completions"][0],
                        "num_tokens": rec["num_tokens"][0],
                        "truncated": rec["truncated"][0],
                    }
                    for metric in _grade_metrics(grade):
                        row[metric] = bool(grade[metric])
                        row[f"{metric}_answer"] = grade.get(f"{metric}_answer")
                    meta = rec.get("metadata") or {}
                    for cat in CATEGORY_KEYS.get(rec["benchmark"], ()):
                        row[f"category_{cat}"] = None if meta.get(cat) is None else str(meta[cat])
                    rows.append(row)
        return self._frame(rows, ["benchmark", "id"])

    def records(self) -> pd.DataFrame:
        """Per-problem evaluation records (first completion): coordinates, benchmark, id, gold, completion,
        one boolean column per metric with its extracted answer (``<metric>_answer``), and the problem's
        categories (``category_<key>``)."""
        return self._records

    @cached_property
    def metrics(self) -> list[str]:
        """The metrics present in the per-problem records (paper, strict, flexible, permissive order)."""
        recs = self._records
        return order_metrics(c for c in recs.columns if recs[c].dtype == bool and c != "truncated")

    def summaries(self) -> pd.DataFrame:
        """The evaluation summaries: one row per (run or start, benchmark, metric)."""
        rows = []
        for keys, folder in self._evaluated_folders():
            summary = rundir.read_json(folder / rundir.EVAL / rundir.SUMMARY)
            for bench, entry in summary["benchmarks"].items():
                for metric in order_metrics(entry["metrics"]):
                    m = entry["metrics"][metric]
                    rows.append(
                        {
                            **keys,
                            "benchmark": bench,
                            "metric": metric,
                            "accuracy": m["accuracy"],
                            "correct": m.get("correct"),
                            "n": entry["n_problems"],
                            "ci95_low": m["ci95"][0],
                            "ci95_high": m["ci95"][1],
                            "mean_completion_tokens": entry.get("mean_completion_tokens"),
                            "truncated_fraction": entry.get("truncated_fraction"),
                        }
                    )
        return self._frame(rows, ["benchmark"])

    def categories(self) -> pd.DataFrame:
        """Per-category accuracy from the summaries: coordinates, benchmark, category (the metadata key),
        value, n, metric, accuracy."""
        rows = []
        for keys, folder in self._evaluated_folders():
            summary = rundir.read_json(folder / rundir.EVAL / rundir.SUMMARY)
            for bench, entry in summary["benchmarks"].items():
                for cat, values in (entry.get("categories") or {}).items():
                    for value, cell in values.items():
                        for metric in order_metrics(k for k in cell if k != "n"):
                            rows.append(
                                {
                                    **keys,
                                    "benchmark": bench,
                                    "category": cat,
                                    "value": value,
                                    "n": cell["n"],
                                    "metric": metric,
                                    "accuracy": cell[metric],
                                }
                            )
        return self._frame(rows, ["benchmark", "category", "value"])

    def _frame(self, rows: list[dict[str, Any]], extra: Sequence[str]) -> pd.DataFrame:
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=[*KEYS, *extra])
        frame["seed"] = frame["seed"].astype("Int64")
        return self._ordered(frame, extra)

    @cached_property
    def training_benchmark(self) -> str | None:
        """The benchmark of the training distribution (the training dataset's own test set)."""
        datasets = {c.get("dataset") for c in self.configs.values()}
        if self.spec is not None:
            datasets.add(self.spec.get("train", {}).get("dataset"))
        datasets.discard(None)
        return next(iter(sorted(datasets)), None)

    @property
    def out_of_distribution(self) -> list[str]:
        """The evaluated benchmarks other than the training distribution's."""
        return [b for b in self.benchmarks if b != self.training_benchmark]


def _keys(frame: pd.DataFrame) -> list[tuple[str, str, int]]:
    return list(zip(frame["model"], frame["label"], frame["seed"], strict=True))


def _evaluated(folder: Path) -> list[str]:
    summary = folder / rundir.EVAL / rundir.SUMMARY
    if not summary.is_file():
        return []
    return list(rundir.read_json(summary)["benchmarks"])


def _first_line(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    return lines[-1] if lines else ""  # a traceback's last line names the error


def _read_config(folder: Path) -> dict[str, Any]:
    """A run's settings ({} without config.json), with earlier parameter names read as today's."""
    from pspo_repro.training.settings import read_run_settings

    return read_run_settings(folder).to_dict() if (folder / rundir.CONFIG).is_file() else {}


def _differing_settings(configs: list[dict[str, Any]]) -> list[str]:
    names = sorted({k for c in configs for k in c} - _COORDINATES)
    return [n for n in names if len({json.dumps(c.get(n), sort_keys=True) for c in configs}) > 1]


def study_profile(profile: str, results_dir: str | Path = "results") -> tuple[str, dict[str, Any] | None]:
    """A study's name and the profile it used: ``profile`` read as a YAML path (its ``name``, else the file's
    stem), else as a name, whose profile is the one the study wrote beside its tables
    (``<results_dir>/<name>/profile.yaml``), else the packaged profile of that name, else ``None``. So a
    study made from a profile file is found by its name alone, as the report's notebooks give it."""
    profiles = _quiet_import("pspo_repro.study.profiles")
    if Path(profile).suffix in (".yaml", ".yml"):
        spec = profiles.load_profile(profile)
        return spec.get("name", Path(profile).stem), spec
    written = Path(results_dir) / profile / "profile.yaml"
    if written.is_file():
        return profile, yaml.safe_load(written.read_text())
    if profile in profiles.profile_names():
        return profile, profiles.load_profile(profile)
    return profile, None


def load(profile: str, runs_dir: str | Path = "runs", results_dir: str | Path = "results") -> Study:
    """The study ``profile`` (a name, or a profile YAML path whose ``name`` is used) from
    ``<runs_dir>/<name>/`` with the profile in ``<results_dir>/<name>/profile.yaml`` (the one the study
    used), else the packaged profile of that name, else none (only what is found is read)."""
    name, spec = study_profile(profile, results_dir)
    study_dir = Path(runs_dir) / name
    if not study_dir.is_dir():
        raise FileNotFoundError(
            f"no study folder {study_dir} (runs of profile {name!r}); run `pspo-repro study --profile {name} "
            f"--runs {runs_dir}` first"
        )
    return Study(name=name, study_dir=study_dir, results_dir=Path(results_dir) / name, spec=spec)


# --- statistics over seeds --------------------------------------------------------------------------
