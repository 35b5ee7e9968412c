"""Claim: TOPR collapses when its advantages are group-relative, as GRPO's are."""

from __future__ import annotations

from collections.abc import Sequence

from pspo_repro.analysis.audit.formatting import num, pct, table
from pspo_repro.analysis.audit.runs import Run, arm_name, base_model, by
from pspo_repro.analysis.audit.section import (
    COLLAPSE,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)
from pspo_repro.analysis.audit.stats import mean
from pspo_repro.study import rundir
from pspo_repro.study.profiles import parse_grid_label

PROBE_SIGNATURE = ("entropy", "mean_abs_r_minus_1", "kl_old_theta", "grad_norm", "zero_weight_frac_neg")

TITLE = "TOPR under group-relative advantages"
CLAIM = (
    "TOPR (positive-advantage tokens kept at full weight, negatives truncated) collapses when its "
    "advantages are group-relative, as GRPO's are."
)
TEST = (
    f"A run collapses when its validation accuracy (strict) at some step after 0 (DONE's lowest, else the "
    f"validation history) is {pct(COLLAPSE, 0)} points or more below its step-0 value. Every run in TOPR's "
    "arms (same model, optimizer, learning rate, reuse and length; main runs and phase-diagram cells) is "
    "checked, TOPR's and the other objectives', with the arm's shuffled-advantage control where there is one. "
    "For each TOPR run: validation at step 0 and its lowest after, and the probe signature (entropy, mean "
    "|r - 1|, KL(pi_old || pi_theta), gradient norm, zeroed negative-advantage tokens) over the first and the "
    "last quarter of its steps."
)
RULE = (
    f"{SUPPORTED} if TOPR collapses in some arm whose control does not; {NOT_SUPPORTED} if another objective "
    f"collapses in an arm where TOPR does not; {INCONCLUSIVE} if nothing collapses in TOPR's arms (TOPR never "
    "ran where anything collapses) or only where the control collapses too."
)


def collapses(first: float, lowest: float) -> bool:
    """A run collapses: its lowest validation accuracy after step 0 is COLLAPSE or more below step 0's."""
    return lowest <= first - COLLAPSE


def rule(arms: Sequence[tuple[bool, bool, bool]]) -> str:
    """The verdict from each of TOPR's arms' (a TOPR run collapses, another objective's run collapses, the
    control collapses): a collapse is TOPR's doing only where the control holds; TOPR holding where others
    collapse refutes the claim; an arm where nothing collapses cannot tell TOPR from the rest."""
    if any(topr and not control for topr, _, control in arms):
        return SUPPORTED
    if any(other and not topr and not control for topr, other, control in arms):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def validation_lowest(r: Run) -> float | None:
    """The run's lowest validation accuracy (strict) after step 0: DONE's record, else the history's."""
    lowest = r.done.get("validation_lowest")
    if lowest is not None:
        return lowest["strict"]
    history = rundir.read_jsonl(r.folder / rundir.VALIDATION)
    after = [h["strict"] for h in history if h["step"] > 0]
    return min(after) if after else None


def validation_first(r: Run) -> float | None:
    """The run's validation accuracy (strict) at step 0: DONE's record, else the history's."""
    first = r.done.get("validation_first")
    if first is not None:
        return first["strict"]
    history = [h for h in rundir.read_jsonl(r.folder / rundir.VALIDATION) if h["step"] == 0]
    return history[0]["strict"] if history else None


def run_collapses(r: Run) -> bool | None:
    """:func:`collapses` on a run's validation at step 0 and its lowest after (None: not recorded)."""
    first, lowest = validation_first(r), validation_lowest(r)
    return None if first is None or lowest is None else collapses(first, lowest)


def cell(r: Run) -> str:
    """Where a run ran: the phase diagram's cell (reuse, learning rate) or the main study's arm."""
    grid = parse_grid_label(r.label)
    return f"grid reuse {grid[1]}, lr {grid[2]:g}" if grid else arm_name(r.arm)


def probe_mean(probes: list[dict], key: str) -> float | None:
    """Mean of a probe field over the records that have it (None when none has)."""
    vs = [p[key] for p in probes if p.get(key) is not None]
    return mean(vs) if vs else None


def topr_collapse(ctx: Context) -> Section:
    """The section: every run in TOPR's arms (main runs and phase-diagram cells), whether it collapses, each
    TOPR run's probe signature, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    runs = ctx.all_runs
    topr = [r for r in runs if r.objective == "topr" and not r.control]
    if not topr:
        s.missing = "needs finished topr runs"
        return s
    groups = by(runs, lambda r: (base_model(r.model), r.arm))
    arms, rows, signatures = [], [], []
    for key in sorted({(base_model(r.model), r.arm) for r in topr}, key=str):
        g = groups[key]
        state = {r.name: run_collapses(r) for r in g}
        t = any(state[r.name] for r in g if r.objective == "topr" and not r.control)
        other = sorted({r.label for r in g if r.objective != "topr" and not r.control and state[r.name]})
        control = any(state[r.name] for r in g if r.control)
        arms.append((t, bool(other), control))
        has_control = any(r.control for r in g)
        rows.append(
            [
                key[0],
                cell(g[0]),
                str(len(g)),
                "yes" if t else "no",
                ", ".join(other) or "none",
                ("yes" if control else "no") if has_control else "no control",
            ]
        )
        s.labels += sorted({r.label for r in g})
    for r in sorted(topr, key=lambda r: r.name):
        q = max(1, len(r.probes) // 4)
        sig = " ; ".join(
            f"{k} {num(probe_mean(r.probes[:q], k))} → {num(probe_mean(r.probes[-q:], k))}"
            for k in PROBE_SIGNATURE
        )
        c = run_collapses(r)
        signatures.append(
            [
                r.name,
                pct(validation_first(r)),
                pct(validation_lowest(r)),
                "-" if c is None else "yes" if c else "no",
                sig,
            ]
        )
    s.labels = sorted(set(s.labels))
    s.verdict = rule(arms)
    s.body = table(
        ["model", "arm", "runs", "TOPR collapses", "other objectives that collapse", "control collapses"],
        rows,
    )
    if s.verdict == INCONCLUSIVE:
        if any(topr or other for topr, other, _ in arms):
            why = (
                "Every collapse in TOPR's arms is in an arm whose control collapses too: there neither TOPR's "
                "collapse nor its holding can be told from the noise floor."
            )
        else:
            why = (
                "Nothing collapses in TOPR's arms: TOPR never ran where another objective collapses, so "
                "holding there does not tell it apart."
            )
        s.body += "\n\n" + why
    s.body += "\n\nTOPR runs:\n\n" + table(
        [
            "run",
            "validation step 0 %",
            "lowest after %",
            "collapses",
            "probe signature (first → last quarter)",
        ],
        signatures,
    )
    return s
