"""The headline answer: the paper's central comparison (PSPO against the clip) decomposed into its parts, per
model, from the same runs whatever made them (the CPU study now, GPU runs when they exist):

1. PSPO against the unclipped surrogate (``noclip``): under Adam PSPO's gradient is (1 - alpha) times the
   unclipped one, which Adam's normalisation cancels, so the two should train alike seed for seed;
2. PSPO against the clip at the intended eps (``clip``);
3. PSPO against the clip at eps 0 (``clip-eps0``), what the authors' released script ran: a clip that zeroes
   every token whose ratio has moved in its advantage's direction.

Each comparison is a bootstrap over builds, seeds and test problems (:mod:`pspo_repro.analysis.inference`),
Holm-corrected over every comparison of the headline. Where PSPO beats the eps-0 clip, the share of that gap
that the intended eps already closes is (clip - clip-eps0) / (pspo - clip-eps0).

Written to ``results/<profile>/headline.md`` and ``headline.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pspo_repro.analysis import inference
from pspo_repro.study import profiles, rundir

ARMS = {
    "noclip": "the unclipped surrogate",
    "clip": "the clip at the intended eps",
    "clip-eps0": "the clip at eps 0",
}
PSPO = "pspo"


def _arm_runs(study_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """(model without its build, label) -> finished, evaluated run folders of the headline's arms."""
    out: dict[tuple[str, str], list[Path]] = {}
    for done in sorted(Path(study_dir).glob(f"*/*/seed*/{rundir.DONE}")):
        folder = done.parent
        label = folder.parent.name
        if label not in (PSPO, *ARMS) or profiles.parse_grid_label(label) is not None:
            continue
        if not (folder / rundir.EVAL / rundir.SUMMARY).is_file():
            continue
        model = folder.parent.parent.name.split("@")[0]
        out.setdefault((model, label), []).append(folder)
    return out


def _identical(a: inference.Arm, b: inference.Arm) -> tuple[int, int]:
    """How many (build, seed) runs of ``a`` answer every test problem exactly as ``b``'s same run does."""
    shared = set(a.runs) & set(b.runs)
    same = sum(bool((a.runs[k] == b.runs[k]).all()) for k in shared)
    return same, len(shared)


def table(study_dir: Path, benchmark: str = "synthetic", metric: str = "strict") -> list[dict[str, Any]]:
    """One row per (model, comparison) of PSPO against each arm that ran on that model."""
    runs = _arm_runs(study_dir)
    pairs, keys = [], []
    order = list(ARMS)
    for (model, label), folders in sorted(
        runs.items(), key=lambda kv: (kv[0][0], (order + [PSPO]).index(kv[0][1]))
    ):
        if label == PSPO or (model, PSPO) not in runs:
            continue
        pspo = inference.arm_from_runs(runs[(model, PSPO)], benchmark, metric, name=PSPO)
        other = inference.arm_from_runs(folders, benchmark, metric, name=label)
        pairs.append((pspo, other))
        keys.append((model, label))
    rows = []
    for (model, label), (pspo, other), comp in zip(keys, pairs, inference.compare_family(pairs), strict=True):
        same, shared = _identical(pspo, other)
        rows.append(
            {
                "model": model,
                "against": label,
                "runs": comp.n_a,
                "builds": len(comp.builds),
                "pspo": _mean(pspo) * 100,
                "other": _mean(other) * 100,
                "effect": comp.effect,
                "ci_low": comp.ci_low,
                "ci_high": comp.ci_high,
                "p_holm": comp.p_adjusted,
                "mdd": comp.mdd,
                "verdict": comp.verdict,
                "identical_runs": same,
                "paired_runs": shared,
            }
        )
    return rows


def _mean(arm: inference.Arm) -> float:
    return sum(float(v.mean()) for v in arm.runs.values()) / len(arm.runs)


def gap_share(rows: list[dict[str, Any]], model: str) -> float | None:
    """The share of PSPO's gain over the eps-0 clip that the intended eps closes, where that gain is
    significant (None otherwise)."""
    by = {r["against"]: r for r in rows if r["model"] == model}
    if "clip" not in by or "clip-eps0" not in by:
        return None
    eps0 = by["clip-eps0"]
    if eps0["verdict"] != "a > b" or eps0["effect"] <= 0:
        return None
    return (eps0["effect"] - by["clip"]["effect"]) / eps0["effect"]


def markdown(rows: list[dict[str, Any]], benchmark: str = "synthetic") -> str:
    """The headline as audit.md, the README and the main_results notebook show it."""
    lines = [
        f"PSPO against each part of the paper's comparison, test accuracy ({benchmark}, strict, each run's kept "
        "checkpoint: the final one in the cpu profiles), in points: a bootstrap over builds, seeds and problems, 95% intervals, p Holm-corrected "
        "over the table.",
        "",
        "| model | PSPO against | runs | PSPO % | other % | PSPO − other [95% CI] | p (Holm) | reading |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["verdict"] == "no detectable difference":
            reading = f"no difference detected (one above {r['mdd']:.1f} would likely show)"
        else:
            reading = "PSPO higher" if r["verdict"] == "a > b" else "PSPO lower"
        if r["identical_runs"] == r["paired_runs"] > 0:
            reading += f"; every paired run identical ({r['identical_runs']} of {r['paired_runs']})"
        elif r["identical_runs"]:
            reading += f"; {r['identical_runs']} of {r['paired_runs']} paired runs identical"
        lines.append(
            f"| {r['model']} | {ARMS.get(r['against'], r['against'])} | {r['runs']} | {r['pspo']:.1f} "
            f"| {r['other']:.1f} | {r['effect']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] "
            f"| {_p(r['p_holm'])} | {reading} |"
        )
    shares = {m: gap_share(rows, m) for m in dict.fromkeys(r["model"] for r in rows)}
    said = [f"{m}: {100 * s:.0f}%" for m, s in shares.items() if s is not None]
    if said:
        lines += [
            "",
            "Share of PSPO's gain over the eps-0 clip that the intended eps already closes, "
            "(clip − clip-eps0) / (PSPO − clip-eps0): " + "; ".join(said) + ".",
        ]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if math.isfinite(p) else ""


def write(study_dir: Path, out_dir: Path, benchmark: str = "synthetic") -> Path | None:
    """headline.md and headline.csv; None when the study has no PSPO runs beside one of the arms."""
    rows = table(study_dir, benchmark)
    if not rows:
        return None
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    rundir.atomic_write_text(out_dir / "headline.csv", buf.getvalue())
    path = out_dir / "headline.md"
    rundir.atomic_write_text(path, markdown(rows, benchmark))
    return path
