"""Claim: TOPR collapses when its advantages are group-relative, as GRPO's are."""

from __future__ import annotations

from pspo_repro.analysis.audit.formatting import num, pct, table
from pspo_repro.analysis.audit.runs import Run
from pspo_repro.analysis.audit.section import (
    COLLAPSE,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)
from pspo_repro.analysis.audit.stats import mean

PROBE_SIGNATURE = ("entropy", "mean_abs_r_minus_1", "kl_old_theta", "grad_norm", "zero_weight_frac_neg")

TITLE = "TOPR under group-relative advantages"
CLAIM = (
    "TOPR (positive-advantage tokens kept at full weight, negatives truncated) collapses when its "
    "advantages are group-relative, as GRPO's are."
)
TEST = (
    f"A run collapses when its final validation accuracy (strict) is {pct(COLLAPSE, 0)} points or more "
    "below its step-0 value. For each TOPR run: validation at step 0 and at the end, and the probe "
    "signature (entropy, mean |r - 1|, KL(pi_old || pi_theta), gradient norm, zeroed negative-advantage "
    "tokens) over the first and the last quarter of its steps."
)
RULE = (
    f"{SUPPORTED} if some TOPR run collapses and its model's control does not; {NOT_SUPPORTED} if no TOPR run "
    f"collapses (in the regimes run); {INCONCLUSIVE} if the control collapses too."
)


def collapses(first: float, last: float) -> bool:
    """A run collapses: its last validation accuracy is COLLAPSE or more below its first."""
    return last <= first - COLLAPSE


def rule(collapsed: int, unexplained: int) -> str:
    """The verdict from the number of TOPR runs that collapse and of those whose model's control does not:
    only a collapse the control does not reproduce is TOPR's doing."""
    return NOT_SUPPORTED if not collapsed else SUPPORTED if unexplained else INCONCLUSIVE


def run_collapses(r: Run) -> bool:
    """:func:`collapses` on a run's validation at step 0 and at the end (strict)."""
    return collapses(r.done["validation_first"]["strict"], r.done["validation_last"]["strict"])


def probe_mean(probes: list[dict], key: str) -> float | None:
    """Mean of a probe field over the records that have it (None when none has)."""
    vs = [p[key] for p in probes if p.get(key) is not None]
    return mean(vs) if vs else None


def topr_collapse(ctx: Context) -> Section:
    """The section: each TOPR run's validation and probe signature, its control, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    topr = [r for r in ctx.runs if r.objective == "topr" and not r.control]
    if not topr:
        s.missing = "needs finished topr runs"
        return s
    rows, collapsed, unexplained = [], 0, 0
    for r in sorted(topr, key=lambda r: r.name):
        q = max(1, len(r.probes) // 4)
        sig = " ; ".join(
            f"{k} {num(probe_mean(r.probes[:q], k))} → {num(probe_mean(r.probes[-q:], k))}"
            for k in PROBE_SIGNATURE
        )
        c = run_collapses(r)
        control_collapses = any(run_collapses(x) for x in ctx.control_runs(r.model))
        collapsed += c
        unexplained += c and not control_collapses
        rows.append(
            [
                r.name,
                pct(r.done["validation_first"]["strict"]),
                pct(r.done["validation_last"]["strict"]),
                "yes" if c else "no",
                "yes" if control_collapses else "no",
                sig,
            ]
        )
    s.labels = sorted({r.label for r in topr} | {x.label for r in topr for x in ctx.control_runs(r.model)})
    s.verdict = rule(collapsed, unexplained)
    s.body = table(
        [
            "run",
            "validation step 0 %",
            "end %",
            "collapses",
            "a control run collapses",
            "probe signature (first → last quarter)",
        ],
        rows,
    )
    return s
