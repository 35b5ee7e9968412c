"""The phase diagram: where each trust region breaks, by reuse (optimizer updates per generation, i.e.
staleness) and learning rate, from the profile's ``grid`` cells (:mod:`pspo_repro.study.profiles`).

Every number is the final checkpoint's (a cell validates only at its start and end, so nothing is selected).
Per cell and objective: test accuracy, its gain over the starting model, the effect over the cell's own
shuffled-advantage control (the noise floor at that reuse and learning rate) with a 95% interval and a
Holm-corrected p over all (objective, cell) pairs, the fraction of token gradients the objective zeroed
(probes, over every probed step) and the runs that collapsed. The "who wins where" map marks a cell only where
the best objective beats the runner-up after a Holm correction over the cells; elsewhere it says how large a
difference could have been missed. Comparisons come from :mod:`pspo_repro.analysis.inference` (a bootstrap
over builds, seeds and problems).

Written to ``results/<profile>/``: ``phase.csv`` / ``phase.md`` (every cell), ``phase-winners.csv``, and the
figures ``phase-gain.png`` (per objective: effect over the control), ``phase-zero-gradient.png`` (per
objective: zeroed gradients) and ``phase-winners.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspo_repro.analysis import inference
from pspo_repro.study import profiles, rundir

COLLAPSE = 0.10  # a run collapses when its final validation accuracy is 10 points below its step-0 value


@dataclass
class Cell:
    """One objective at one (reuse, learning rate): its finished runs' folders."""

    objective: str
    reuse: int
    learning_rate: float
    model: str  # without the build
    runs: list[Path]

    @property
    def control(self) -> bool:
        return self.objective.endswith("-shuffled")


def cells(study_dir: Path) -> list[Cell]:
    """The grid's cells that have finished, evaluated runs, in (objective, reuse, learning rate) order."""
    found: dict[tuple[str, str, int, float], list[Path]] = {}
    for done in sorted(Path(study_dir).glob(f"*/{profiles.GRID_PREFIX}*/seed*/{rundir.DONE}")):
        folder = done.parent
        parsed = profiles.parse_grid_label(folder.parent.name)
        if parsed is None or not (folder / rundir.EVAL / rundir.SUMMARY).is_file():
            continue
        config = rundir.read_json(folder / rundir.CONFIG)
        model = str(config["model"]).split("@")[0]
        found.setdefault((model, *parsed), []).append(folder)
    return [
        Cell(o, r, lr, m, runs)
        for (m, o, r, lr), runs in sorted(found.items(), key=lambda kv: kv[0][1:] + kv[0][:1])
    ]


def _start_accuracy(run: Path, benchmark: str, metric: str) -> float | None:
    """The starting model's accuracy for the run's build (its ``start`` evaluation beside the run's folder) on
    the problems the run was tested on: a cell tests the first ``eval_limit`` problems, whose start differs from
    the whole set's."""
    start = run.parent.parent / "start" / rundir.EVAL / f"{benchmark}.jsonl"
    tested = run / rundir.EVAL / f"{benchmark}.jsonl"
    (ids, _), (start_ids, start_grades) = inference.graded(tested, metric), inference.graded(start, metric)
    if not ids or not start_ids:
        return None
    wanted = set(ids)
    grades = [bool(g) for i, g in zip(start_ids, start_grades, strict=True) if i in wanted]
    if len(grades) != len(wanted):
        raise ValueError(f"{start}: the starting model was not tested on every problem of {tested}")
    return sum(grades) / len(grades)


def _probe_mean(runs: list[Path], field: str) -> float | None:
    values = [
        p[field] for run in runs for p in rundir.read_jsonl(run / rundir.PROBES) if p.get(field) is not None
    ]
    return sum(values) / len(values) if values else None


def _collapsed(run: Path) -> bool:
    """The run's final validation accuracy is COLLAPSE below its step-0 value."""
    records = rundir.read_jsonl(run / rundir.VALIDATION)
    if len(records) < 2:
        return False
    return records[-1]["strict"] < records[0]["strict"] - COLLAPSE


def table(study_dir: Path, benchmark: str = "synthetic", metric: str = "strict") -> list[dict[str, Any]]:
    """One row per (objective, reuse, learning rate), with the effect over the same cell's control."""
    found = cells(study_dir)
    controls = {(c.model, c.reuse, c.learning_rate): c for c in found if c.control}
    arms = {id(c): inference.arm_from_runs(c.runs, benchmark, metric, name=c.objective) for c in found}
    pairs = [
        (c, controls[(c.model, c.reuse, c.learning_rate)])
        for c in found
        if not c.control and (c.model, c.reuse, c.learning_rate) in controls
    ]
    compared = inference.compare_family([(arms[id(c)], arms[id(k)]) for c, k in pairs])
    effect = {id(c): comp for (c, _), comp in zip(pairs, compared, strict=True)}
    rows = []
    for c in found:
        arm = arms[id(c)]
        accuracies = [float(v.mean()) for v in arm.runs.values()]
        starts = [_start_accuracy(r, benchmark, metric) for r in c.runs]
        start = sum(s for s in starts if s is not None) / max(1, sum(s is not None for s in starts))
        mean = sum(accuracies) / len(accuracies)
        comp = effect.get(id(c))
        rows.append(
            {
                "model": c.model,
                "objective": c.objective,
                "reuse": c.reuse,
                "learning_rate": c.learning_rate,
                "runs": len(c.runs),
                "builds": len({b for b, _ in arm.runs}),
                "start": start,
                "accuracy": mean,
                "accuracy_sd": _sd(accuracies),
                "gain": mean - start,
                "effect_over_control": None if comp is None else comp.effect / 100,
                "effect_ci_low": None if comp is None else comp.ci_low / 100,
                "effect_ci_high": None if comp is None else comp.ci_high / 100,
                "p_holm": None if comp is None else comp.p_adjusted,
                "mdd": None if comp is None else comp.mdd / 100,
                "zero_gradient_fraction": _probe_mean(c.runs, "zero_weight_frac"),
                "sequences_dropped_fraction": _probe_mean(c.runs, "seq_zero_weight_frac"),
                "collapsed": sum(_collapsed(r) for r in c.runs),
            }
        )
    return rows


def _sd(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def winners(study_dir: Path, benchmark: str = "synthetic", metric: str = "strict") -> list[dict[str, Any]]:
    """Per (reuse, learning rate): the objective with the highest mean accuracy against the runner-up, Holm-
    corrected over the cells; ``winner`` is set only where that difference is significant."""
    by_cell: dict[tuple[str, int, float], list[Cell]] = {}
    for c in cells(study_dir):
        if not c.control:
            by_cell.setdefault((c.model, c.reuse, c.learning_rate), []).append(c)
    pairs, keys, tied = [], [], []
    for key, group in sorted(by_cell.items()):
        if len(group) < 2:
            continue
        ranked = sorted(
            (inference.arm_from_runs(c.runs, benchmark, metric, name=c.objective) for c in group),
            key=lambda a: -_mean_accuracy(a),
        )
        pairs.append((ranked[0], ranked[1]))
        # objectives that answer exactly as well as the best (at reuse 1 several are one algorithm)
        tied.append([a.name for a in ranked if _mean_accuracy(a) == _mean_accuracy(ranked[0])])
        keys.append(key)
    out = []
    for (model, reuse, lr), (best, second), ties, comp in zip(
        keys, pairs, tied, inference.compare_family(pairs), strict=True
    ):
        out.append(
            {
                "model": model,
                "reuse": reuse,
                "learning_rate": lr,
                "best": best.name,
                "tied_with_best": ", ".join(ties) if len(ties) > 1 else "",
                "runner_up": second.name,
                "difference": comp.effect / 100,
                "ci_low": comp.ci_low / 100,
                "ci_high": comp.ci_high / 100,
                "p_holm": comp.p_adjusted,
                "mdd": comp.mdd / 100,
                "winner": best.name if comp.p_adjusted < 0.05 else None,
            }
        )
    return out


def _mean_accuracy(arm: inference.Arm) -> float:
    return sum(float(v.mean()) for v in arm.runs.values()) / len(arm.runs)


def _pp(value: float | None, sign: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def markdown(rows: list[dict[str, Any]], wins: list[dict[str, Any]]) -> str:
    """phase.md: every cell, then the map's verdict per cell."""
    lines = [
        "| objective | reuse | lr | runs | start % | final test % (sd) | gain (pp) | over control (pp) [95% CI] "
        "| p (Holm) | zeroed gradients % | collapsed |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        over = (
            f"{_pp(r['effect_over_control'])} [{_pp(r['effect_ci_low'])}, {_pp(r['effect_ci_high'])}]"
            if r["effect_over_control"] is not None
            else ""
        )
        p = "" if r["p_holm"] is None else f"{r['p_holm']:.3f}"
        zero = _pp(r["zero_gradient_fraction"], sign=False)
        lines.append(
            f"| {r['objective']} | {r['reuse']} | {r['learning_rate']:g} | {r['runs']} | {_pp(r['start'], False)} "
            f"| {_pp(r['accuracy'], False)} ({_pp(r['accuracy_sd'], False)}) | {_pp(r['gain'])} | {over} | {p} "
            f"| {zero} | {r['collapsed']}/{r['runs']} |"
        )
    lines += [
        "",
        "Who wins where: the best objective against the runner-up in each cell (Holm over the cells); a cell has "
        "a winner only where that difference is significant, else the smallest difference the design could "
        "have detected.",
        "",
        "| reuse | lr | best | runner-up | difference (pp) [95% CI] | p (Holm) | winner |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in wins:
        verdict = w["winner"] or (
            "none (tied: the same accuracy)"
            if w["tied_with_best"]
            else f"none (a difference under {_pp(w['mdd'], False)} pp could be missed)"
        )
        best = f"tie: {w['tied_with_best']}" if w["tied_with_best"] else w["best"]
        lines.append(
            f"| {w['reuse']} | {w['learning_rate']:g} | {best} | {w['runner_up']} | {_pp(w['difference'])} "
            f"[{_pp(w['ci_low'])}, {_pp(w['ci_high'])}] | {w['p_holm']:.3f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def write(study_dir: Path, out_dir: Path, plot: bool = True) -> Path | None:
    """The phase diagram's tables and figures (see the module docstring); None when the study has no grid."""
    rows = table(study_dir)
    if not rows:
        return None
    wins = winners(study_dir)
    _write_csv(out_dir / "phase.csv", rows)
    if wins:
        _write_csv(out_dir / "phase-winners.csv", wins)
    path = out_dir / "phase.md"
    rundir.atomic_write_text(path, markdown(rows, wins))
    if plot:
        from pspo_repro.analysis import phase_figures

        phase_figures.draw(rows, wins, out_dir)
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    rundir.atomic_write_text(path, buf.getvalue())
