"""A study's tables, from its finished runs: what training did, against the starting model and the noise floor.

Written to ``results/<profile>/`` (CSV for every row, Markdown for reading), with the profile beside them:

- ``accuracy``: test and out-of-distribution accuracy of each run's kept checkpoint (the final one under
  ``checkpoint: final``, as in the cpu profiles; else the best validation step's) (strict, flexible,
  permissive, paper), mean ± sd over seeds, with each starting model's accuracy in its own row (``start``);
- ``training``: validation strict accuracy at step 0, at the best step after 0 and at the end, the lowest
  after step 0 (collapses), speed, and the gradient probes averaged over steps;
- ``control``: each arm's test gain over its starting model against the shuffled-advantage control's
  (the noise floor): the difference with its 95% interval and Holm-adjusted p (:mod:`pspo_repro.analysis.inference`),
  and whether the arm beats the control, else the smallest difference that would likely have shown;
- ``staleness``: the zero-gradient token fraction and the fraction of ratios outside the clip range by
  staleness (optimizer updates since the rollouts were generated);
- ``headline``: PSPO against the unclipped surrogate, the clip and the eps-0 clip (:mod:`pspo_repro.analysis.headline`);
- ``phase``: the phase diagram's cells, when the profile has a ``grid`` (:mod:`pspo_repro.analysis.phase`);
- ``timing``: the compute each stage took, in core-seconds summed over tasks (warm starts of the tiny
  models used, training runs including their validation, evaluations).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from pspo_repro.evaluation import grading
from pspo_repro.study import profiles, rundir

METRICS = grading.METRICS
CONTROL_SUFFIX = "-shuffled"
START = "start"


def _label(run_dir: Path, config: dict[str, Any]) -> str:
    return config.get("label") or run_dir.parent.name


def _runs(study_dir: Path, grid: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The finished runs' folders and settings; the phase diagram's cells only with ``grid`` (their tables
    are :mod:`pspo_repro.analysis.phase`'s)."""
    runs = [
        (d.parent, rundir.read_json(d.parent / rundir.CONFIG))
        for d in sorted(study_dir.glob(f"*/*/seed*/{rundir.DONE}"))
    ]
    return [(d, c) for d, c in runs if grid or profiles.parse_grid_label(_label(d, c)) is None]


def collect(study_dir: Path) -> list[dict[str, Any]]:
    """One row per (run or starting model, benchmark, metric) with an evaluation summary."""
    rows = []
    sources = [
        (p.parent.parent, None) for p in sorted(study_dir.glob(f"*/{START}/{rundir.EVAL}/{rundir.SUMMARY}"))
    ]
    sources += _runs(study_dir)
    for folder, config in sources:
        summary_path = folder / rundir.EVAL / rundir.SUMMARY
        if not summary_path.is_file():
            continue
        summary = rundir.read_json(summary_path)
        if config is None:
            model, label, seed = summary["settings"]["model"], START, None
        else:
            model, label, seed = config["model"], _label(folder, config), config["seed"]
        for bench, entry in summary["benchmarks"].items():
            for metric in METRICS:
                if metric not in entry["metrics"]:  # a summary written before the metric existed
                    continue
                m = entry["metrics"][metric]
                rows.append(
                    {
                        "model": model,
                        "objective": label,
                        "seed": seed,
                        "benchmark": bench,
                        "metric": metric,
                        "accuracy": m["accuracy"],
                        "ci95_low": m["ci95"][0],
                        "ci95_high": m["ci95"][1],
                        "n": entry["n_problems"],
                        "run": str(folder.relative_to(study_dir)),
                    }
                )
    return rows


# Probe fields averaged over a run's optimizer steps for the training table.
PROBE_MEANS = ("zero_weight_frac", "ratio_outside", "mean_abs_r_minus_1", "kl_old_theta", "grad_norm")


def collect_training(study_dir: Path) -> list[dict[str, Any]]:
    """One row per finished run: validation at step 0, best and end, speed, and probe means over steps."""
    rows = []
    for run_dir, config in _runs(study_dir):
        finished = rundir.read_json(run_dir / rundir.DONE)
        probes = rundir.read_jsonl(run_dir / rundir.PROBES)
        row = {
            "model": config["model"],
            "objective": _label(run_dir, config),
            "seed": config["seed"],
            "steps": finished["steps"],
            "validation_n": finished["validation_first"]["n"],
            "validation_first": finished["validation_first"]["strict"],
            "validation_best": finished["validation_best"]["strict"],
            "best_step": finished["validation_best"]["step"],
            "validation_last": finished["validation_last"]["strict"],
            "validation_lowest": _lowest(run_dir),
            "checkpoint": config.get("checkpoint", "best"),
            "seconds_per_step": finished["seconds_per_step"],
        }
        for key in PROBE_MEANS:
            values = [p[key] for p in probes if p.get(key) is not None]
            row[key] = sum(values) / len(values) if values else None
        cosines = [p["cos_to_noclip"] for p in probes if p.get("cos_to_noclip") is not None]
        row["cos_to_noclip_min"] = min(cosines) if cosines else None
        rows.append(row)
    return rows


def collect_staleness(study_dir: Path) -> list[dict[str, Any]]:
    """One row per (run, staleness): probe means over the steps with that many updates since generation."""
    rows = []
    for run_dir, config in _runs(study_dir):
        by_staleness: dict[int, list[dict]] = {}
        for p in rundir.read_jsonl(run_dir / rundir.PROBES):
            if "staleness" in p and p.get("zero_weight_frac") is not None:
                by_staleness.setdefault(p["staleness"], []).append(p)
        for staleness, probes in sorted(by_staleness.items()):
            rows.append(
                {
                    "model": config["model"],
                    "objective": _label(run_dir, config),
                    "seed": config["seed"],
                    "staleness": staleness,
                    "steps": len(probes),
                    "zero_weight_frac": _mean([p["zero_weight_frac"] for p in probes]),
                    "zero_weight_frac_max": max(p["zero_weight_frac"] for p in probes),
                    "ratio_outside": _mean([p["ratio_outside"] for p in probes]),
                }
            )
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * _mean(values):.{digits}f} ± {scale * _sd(values):.{digits}f}"


def _groups(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy in percent, mean ± sd over seeds, per (model, arm) and (benchmark, metric); each model's
    starting point first."""
    columns = list(dict.fromkeys((r["benchmark"], r["metric"]) for r in rows))
    head = "| model | objective | seeds | " + " | ".join(f"{b} {m}" for b, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    groups = _groups(rows, "model", "objective")
    for (model, label), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != START)):
        cells = _groups(group, "benchmark", "metric")
        seeds = len({r["seed"] for r in group}) if label != START else "-"
        values = [_mean_sd([r["accuracy"] for r in cells.get(c, [])], 100) for c in columns]
        lines.append(f"| {model} | {label} | {seeds} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _lowest(run_dir: Path) -> float:
    """The run's lowest validation strict accuracy after step 0 (a collapse shows here whatever is kept)."""
    history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
    return min(r["strict"] for r in [r for r in history if r["step"] > 0] or history)


def training_table(rows: list[dict[str, Any]]) -> str:
    """Validation strict accuracy (percent, mean ± sd over seeds) at step 0, at the best step after 0 and
    at the end, the lowest after step 0 of any seed (where a collapse shows), speed (measured while the
    study's other workers shared the machine), and probe means (percent of completion tokens)."""
    lines = [
        "| model | objective | seeds | validation at step 0 | best | best step | end | end - step 0 | lowest "
        "| s/step (workers sharing the cores) | zero-gradient tokens % | ratios outside clip range % | mean abs(r-1) | min cos to unclipped |",
        "|" + "---|" * 14,
    ]

    def col(group: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 1) -> str:
        return _mean_sd([r[key] for r in group if r[key] is not None], scale, digits)

    for (model, label), group in _groups(rows, "model", "objective").items():
        change = [r["validation_last"] - r["validation_first"] for r in group]
        lines.append(
            f"| {model} | {label} | {len(group)} | {col(group, 'validation_first', 100)} | "
            f"{col(group, 'validation_best', 100)} | {col(group, 'best_step', 1, 0)} | "
            f"{col(group, 'validation_last', 100)} | {_mean_sd(change, 100)} | "
            f"{100 * min(r['validation_lowest'] for r in group):.1f} | {col(group, 'seconds_per_step', 1, 2)} | "
            f"{col(group, 'zero_weight_frac', 100, 2)} | {col(group, 'ratio_outside', 100, 2)} | "
            f"{col(group, 'mean_abs_r_minus_1', 1, 4)} | {col(group, 'cos_to_noclip_min', 1, 2)} |"
        )
    return "\n".join(lines) + "\n"


def gains(
    rows: list[dict[str, Any]], benchmark: str, metric: str = "strict", study_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Per (model, arm): each seed's accuracy gain over the starting model on ``benchmark``, compared with
    the shuffled-advantage control of the same model (an arm ``<objective>-shuffled``).

    With ``study_dir`` (where the rows' runs are) each arm is judged against its control by
    :mod:`pspo_repro.analysis.inference`: a bootstrap over seeds and problems (each arm's own seed spread and
    the test set's sampling error), two-sided, Holm-adjusted over every comparison of this benchmark's table.
    ``beats_control`` is true when the arm is higher after that correction, ``below_control`` when it is lower;
    without ``study_dir`` neither is judged (None)."""
    picked = [r for r in rows if r["benchmark"] == benchmark and r["metric"] == metric]
    start = {r["model"]: r["accuracy"] for r in picked if r["objective"] == START}
    per_arm: dict[tuple[str, str], list[float]] = {}
    folders: dict[tuple[str, str], list[Path]] = {}
    for r in picked:
        if r["objective"] != START and r["model"] in start:
            per_arm.setdefault((r["model"], r["objective"]), []).append(r["accuracy"] - start[r["model"]])
            if study_dir is not None:
                folders.setdefault((r["model"], r["objective"]), []).append(Path(study_dir) / r["run"])
    controls = {model: (label, g) for (model, label), g in per_arm.items() if label.endswith(CONTROL_SUFFIX)}
    out = []
    for (model, label), g in per_arm.items():
        control = controls.get(model)
        row: dict[str, Any] = {
            "model": model,
            "objective": label,
            "benchmark": benchmark,
            "metric": metric,
            "seeds": len(g),
            "start": start[model],
            "gain_mean": _mean(g),
            "gain_sd": _sd(g),
            "control_gain_mean": None,
            "difference": None,
            "difference_ci_low": None,
            "difference_ci_high": None,
            "p_holm": None,
            "mdd": None,
            "beats_control": None,
            "below_control": None,
        }
        if control is not None and not label.endswith(CONTROL_SUFFIX):
            row.update(control_gain_mean=_mean(control[1]), difference=_mean(g) - _mean(control[1]))
        out.append(row)
    if study_dir is not None:
        _judge(out, folders, controls, benchmark, metric)
    return out


def _judge(
    out: list[dict[str, Any]],
    folders: dict[tuple[str, str], list[Path]],
    controls: dict[str, tuple[str, list[float]]],
    benchmark: str,
    metric: str,
) -> None:
    """Fill each compared row's interval, Holm p, smallest detectable difference and verdict (fractions)."""
    from pspo_repro.analysis import inference

    compared = [r for r in out if r["difference"] is not None]
    arms: dict[tuple[str, str], Any] = {}

    def arm(model: str, label: str) -> Any:  # each control is built once, however many arms it judges
        if (model, label) not in arms:
            arms[(model, label)] = inference.arm_from_runs(folders[(model, label)], benchmark, metric)
        return arms[(model, label)]

    pairs = [(arm(r["model"], r["objective"]), arm(r["model"], controls[r["model"]][0])) for r in compared]
    for r, c in zip(compared, inference.compare_family(pairs), strict=True):
        r.update(
            difference_ci_low=c.ci_low / 100,
            difference_ci_high=c.ci_high / 100,
            p_holm=c.p_adjusted,
            mdd=c.mdd / 100,
            beats_control=c.verdict == "a > b",
            below_control=c.verdict == "a < b",
        )


_VERDICT = {True: "yes", False: "no", None: ""}  # None: not compared (a control, or too few seeds)


def control_table(rows: list[dict[str, Any]]) -> str:
    """The gains of :func:`gains` in percentage points; a "no" gives the smallest difference the comparison
    would likely have detected."""

    def pp(value: float | None, digits: int = 1) -> str:
        return "" if value is None or not math.isfinite(value) else f"{100 * value:+.{digits}f}"

    lines = [
        "| model | objective | benchmark | seeds | start % | gain (pp) | sd | control gain (pp) | difference "
        "[95% CI] | p (Holm) | beats control |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        verdict = _VERDICT[r["beats_control"]]
        if r.get("below_control"):
            verdict = "no: below the control"
        elif r["beats_control"] is False and r["mdd"] is not None:
            verdict = f"no (one above {100 * r['mdd']:.1f} would likely show)"
        interval = (
            f" [{pp(r['difference_ci_low'])}, {pp(r['difference_ci_high'])}]"
            if r["difference_ci_low"] is not None
            else ""
        )
        p = "" if r["p_holm"] is None else ("< 0.001" if r["p_holm"] < 0.001 else f"{r['p_holm']:.3f}")
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['benchmark']} | {r['seeds']} | {100 * r['start']:.1f} | "
            f"{pp(r['gain_mean'])} | {pp(r['gain_sd'])} | {pp(r['control_gain_mean'])} | "
            f"{pp(r['difference'])}{interval} | {p} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def staleness_table(rows: list[dict[str, Any]], shown: tuple[int, ...] = (0, 1, 2, 3)) -> str:
    """Zero-gradient token fraction (percent, mean over steps and seeds) at the staleness levels ``shown``
    and at the stalest level each arm reaches, with the fraction of ratios outside the clip range there."""
    lines = [
        "| model | objective | "
        + " | ".join(f"zero-grad % at {s}" for s in shown)
        + " | stalest | zero-grad % there (max over steps) | ratios outside % there |",
        "|" + "---|" * (len(shown) + 5),
    ]
    for (model, label), group in _groups(rows, "model", "objective").items():
        by = _groups(group, "staleness")
        stalest = max(s for (s,) in by)
        cells = [_mean_sd([r["zero_weight_frac"] for r in by.get((s,), [])], 100, 2) for s in shown]
        last = by[(stalest,)]
        lines.append(
            f"| {model} | {label} | " + " | ".join(cells) + f" | {stalest} | "
            f"{_mean_sd([r['zero_weight_frac'] for r in last], 100, 2)} "
            f"({100 * max(r['zero_weight_frac_max'] for r in last):.2f}) | "
            f"{_mean_sd([r['ratio_outside'] for r in last], 100, 2)} |"
        )
    return "\n".join(lines) + "\n"


def collect_timing(study_dir: Path) -> list[dict[str, Any]]:
    """Seconds per stage, summed over the study's finished tasks (they may have run in parallel)."""
    from pspo_repro.models import tiny

    runs = _runs(study_dir, grid=True)
    models = {config["model"] for _, config in runs}
    # the builds the runs started from, as each run recorded it (a tiny model's cache folder)
    markers = [d / rundir.MODEL_BUILD for d, _ in runs]
    built = sorted({rundir.read_json(m)["build"] for m in markers if m.is_file()})
    warm = 0.0
    for build in built:
        recipe = tiny.cache_root() / "tiny" / build / tiny.RECIPE_FILE
        if recipe.is_file():
            warm += rundir.read_json(recipe)["build_seconds"]
    training = sum(rundir.read_json(d / rundir.DONE)["seconds"] for d, _ in runs)
    evaluation = 0.0
    for summary in study_dir.glob(f"*/**/{rundir.EVAL}/{rundir.SUMMARY}"):
        evaluation += sum(
            b.get("generation_seconds") or 0.0 for b in rundir.read_json(summary)["benchmarks"].values()
        )
    return [
        {"stage": "warm starts", "core_seconds": round(warm, 1), "tasks": len(built)},
        {"stage": "training (with validation)", "core_seconds": round(training, 1), "tasks": len(runs)},
        {"stage": "evaluation", "core_seconds": round(evaluation, 1), "tasks": len(runs) + len(models)},
    ]


def timing_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | tasks | core-minutes |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['tasks']} | {r['core_seconds'] / 60:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def builds(gain_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, arm, benchmark) of a study with several warm-start builds of a tiny model: each build's
    start and mean gain over its own start, and the mean and sd of those over builds (the between-build
    spread, which a user's own build of the same recipe varies by)."""
    from pspo_repro.models import tiny

    per: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in gain_rows:
        if tiny.is_tiny(r["model"]) and tiny.BUILD_MARK in r["model"]:
            base = tiny.split_build(r["model"])[0]
            per.setdefault((base, r["objective"], r["benchmark"], r["metric"]), []).append(r)
    out = []
    for (model, label, bench, metric), group in per.items():
        group = sorted(group, key=lambda r: tiny.split_build(r["model"])[1])
        out.append(
            {
                "model": model,
                "objective": label,
                "benchmark": bench,
                "metric": metric,
                "builds": len(group),
                "starts": [round(r["start"], 4) for r in group],
                "gains": [round(r["gain_mean"], 4) for r in group],
                "gain_mean": _mean([r["gain_mean"] for r in group]),
                "gain_between_build_sd": _sd([r["gain_mean"] for r in group]),
                "start_between_build_sd": _sd([r["start"] for r in group]),
                "beats_control_on_every_build": (
                    None
                    if any(r["beats_control"] is None for r in group)
                    else all(r["beats_control"] for r in group)
                ),
            }
        )
    return out


def builds_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`builds` in percent and percentage points."""

    def pp(values: list[float]) -> str:
        return " / ".join(f"{100 * v:.1f}" for v in values)

    lines = [
        "| model | objective | benchmark | builds | start % per build | gain (pp) per build | gain mean | "
        "between-build sd | beats control on every build |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        sd = r["gain_between_build_sd"]
        verdict = _VERDICT[r["beats_control_on_every_build"]]
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['benchmark']} | {r['builds']} | {pp(r['starts'])} | "
            f"{pp(r['gains'])} | {100 * r['gain_mean']:+.1f} | {'' if math.isnan(sd) else f'{100 * sd:.1f}'} | "
            f"{verdict} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rundir.atomic_write_text(path, buf.getvalue())


def write_tables(study_dir: Path, out_dir: Path, profile: dict[str, Any]) -> Path:
    """Every table of a study (see the module docstring) from its finished runs; returns accuracy.md."""
    rows = collect(study_dir)
    if not _runs(study_dir, grid=True):
        raise FileNotFoundError(f"no finished, evaluated runs under {study_dir}")
    training = collect_training(study_dir)
    staleness = collect_staleness(study_dir)
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    control = [g for b in benchmarks for g in gains(rows, b, study_dir=study_dir)]
    _write_csv(out_dir / "accuracy.csv", rows)
    _write_csv(out_dir / "training.csv", training)
    _write_csv(out_dir / "control.csv", control)
    _write_csv(out_dir / "staleness.csv", staleness)
    rundir.atomic_write_text(out_dir / "profile.yaml", yaml.safe_dump(profile, sort_keys=False))
    rundir.atomic_write_text(out_dir / "accuracy.md", accuracy_table(rows))
    rundir.atomic_write_text(out_dir / "training.md", training_table(training))
    rundir.atomic_write_text(out_dir / "control.md", control_table(control))
    rundir.atomic_write_text(out_dir / "staleness.md", staleness_table(staleness))
    rundir.atomic_write_text(out_dir / "timing.md", timing_table(collect_timing(study_dir)))
    from pspo_repro.analysis import headline, phase  # numpy and matplotlib only when tables are written

    phase.write(study_dir, out_dir)
    headline.write(study_dir, out_dir, benchmarks[0])
    by_build = builds(control)
    if by_build:
        _write_csv(out_dir / "builds.csv", by_build)
        rundir.atomic_write_text(out_dir / "builds.md", builds_table(by_build))
    return out_dir / "accuracy.md"
