"""Claim: GSPO's trust region acts on whole sequences: a sequence's gradient is kept or dropped whole, never
zeroed in some of its tokens."""

from __future__ import annotations

from pspo_repro.analysis.audit.formatting import pct, table
from pspo_repro.analysis.audit.runs import Run, arm_name, by, largest
from pspo_repro.analysis.audit.section import (
    BINDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)
from pspo_repro.analysis.audit.stats import mean

PARTIAL = "seq_partial_zero_frac"

TITLE = "GSPO keeps or drops whole sequences"
CLAIM = (
    "GSPO clips the sequence-level ratio (the geometric mean of the token ratios), so its trust region acts "
    "on sequences, not tokens: a sequence's gradient is kept or dropped whole."
)
TEST = (
    "From the probes of every GSPO run (shuffled-advantage controls left out), at every step: the fraction "
    "of sequences with a nonzero advantage zeroed in part (some tokens' gradients 0, not all) and the "
    "fraction dropped whole (every token's gradient 0)."
)
RULE = (
    f"{NOT_SUPPORTED} if some step zeroes a sequence in part; {SUPPORTED} if none ever does and some step "
    f"drops at least {pct(BINDS, 0)}% of sequences whole (the sequence clip acted); {INCONCLUSIVE} otherwise "
    "(the clip never acted, or probes recorded before the partial count existed)."
)


def rule(partial_max: float | None, dropped_max: float) -> str:
    """The verdict from the largest fraction of sequences zeroed in part on any step (None: not recorded on
    some step, and none seen) and of those dropped whole: one sequence zeroed in part refutes the claim;
    without a sequence dropped the clip never acted, so whole-sequence action was never shown."""
    if partial_max is not None and partial_max > 0:
        return NOT_SUPPORTED
    if partial_max is None:
        return INCONCLUSIVE
    return SUPPORTED if dropped_max >= BINDS else INCONCLUSIVE


def unrecorded(run: Run) -> bool:
    """The run has a sequence-level step without the partial count (probes written before it existed)."""
    return any("n_sequences" in p and PARTIAL not in p for p in run.probes)


def gspo_whole_sequences(ctx: Context) -> Section:
    """The section: sequences zeroed in part and dropped whole per model and arm, the verdict by
    :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    gspo = [r for r in ctx.all_runs if r.objective == "gspo" and not r.control and r.probes]
    if not gspo:
        s.missing = (
            "needs finished gspo runs with probes: the cpu profile's phase grid, or the field profile's gspo "
            "and gspo-stress"
        )
        return s
    rows = []
    groups = by(gspo, lambda r: (r.model, r.arm))
    for (model, arm), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        dropped = [
            p["seq_zero_weight_frac"]
            for r in rs
            for p in r.probes
            if p.get("seq_zero_weight_frac") is not None
        ]
        moved = [p["seq_mean_abs_s_minus_1"] for r in rs for p in r.probes if "seq_mean_abs_s_minus_1" in p]
        missing = sum(unrecorded(r) for r in rs)
        rows.append(
            [
                model,
                arm_name(arm),
                ", ".join(sorted({r.label for r in rs})) + f" ({len(rs)})",
                pct(largest(rs, PARTIAL), 3) + (f" ({missing} runs not recorded)" if missing else ""),
                pct(largest(rs, "seq_zero_weight_frac"), 2),
                pct(mean(dropped), 2) if dropped else "-",
                f"{mean(moved):.2e}" if moved else "-",
            ]
        )
    s.labels = sorted({r.label for r in gspo})
    partial_max = largest(gspo, PARTIAL) or 0.0
    if partial_max == 0 and any(unrecorded(r) for r in gspo):
        partial_max = None
    dropped_max = largest(gspo, "seq_zero_weight_frac") or 0.0
    s.verdict = rule(partial_max, dropped_max)
    s.body = (
        table(
            [
                "model",
                "arm",
                "gspo runs",
                "sequences zeroed in part %, largest on one step",
                "sequences dropped whole %, largest on one step",
                "dropped whole %, mean over steps",
                "mean abs(s - 1)",
            ],
            rows,
        )
        + "\n\nOn any step: sequences zeroed in part, "
        + (f"at most {pct(partial_max, 3)}%" if partial_max is not None else "not recorded by every run")
        + f"; dropped whole, at most {pct(dropped_max, 2)}%."
    )
    return s
