"""Claim: CISPO keeps every token's gradient (its weight is the ratio capped and detached, never 0), where the
clip in the same arm zeroes some."""

from __future__ import annotations

from pspo_repro.analysis.audit.formatting import pct, table
from pspo_repro.analysis.audit.runs import arm_name, by, largest
from pspo_repro.analysis.audit.section import (
    BINDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)
from pspo_repro.analysis.audit.stats import mean

TITLE = "CISPO keeps every gradient"
CLAIM = (
    "CISPO (MiniMax-M1, adopted by ScaleRL) zeroes no token's gradient: it caps the importance weight and "
    "detaches it, so a token whose ratio leaves the trust region still contributes, where the clip drops it."
)
TEST = (
    "The largest zero-gradient fraction (tokens with a nonzero advantage whose gradient weight is exactly 0) "
    "on any probed step of every CISPO run (shuffled-advantage controls left out), beside the clip runs "
    "(eps > 0) of the same model and arm, which show whether the ratios moved far enough for a trust region "
    "to act."
)
RULE = (
    f"{SUPPORTED} if no CISPO step zeroes any token's gradient while the clip in the same arms zeroes at least "
    f"{pct(BINDS, 0)}% on some step; {NOT_SUPPORTED} if some CISPO step zeroes at least {pct(BINDS, 0)}%; "
    f"{INCONCLUSIVE} otherwise (the clip never bound, so there was nothing to keep, or CISPO zeroed a "
    "fraction too small to tell from an underflowed ratio)."
)


def rule(cispo_max: float, clip_max: float | None) -> str:
    """The verdict from the largest zero-gradient fraction on any step of the CISPO runs and of the clip runs
    in their arms (None: no such clip run): a material CISPO zero refutes the claim; without a binding clip
    the claim was never put to the test."""
    if cispo_max >= BINDS:
        return NOT_SUPPORTED
    if cispo_max == 0 and clip_max is not None and clip_max >= BINDS:
        return SUPPORTED
    return INCONCLUSIVE


def cispo_keeps_gradients(ctx: Context) -> Section:
    """The section: CISPO's and the clip's largest zero-gradient fractions per arm, the verdict by
    :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    cispo = [r for r in ctx.all_runs if r.objective == "cispo" and not r.control and r.probes]
    if not cispo:
        s.missing = (
            "needs finished cispo runs with probes beside clip runs of the same arm: the cpu profile's phase "
            "grid, or the field profile's cispo and cispo-stress"
        )
        return s
    arms = {(r.model, r.arm) for r in cispo}
    clip = [
        r
        for r in ctx.all_runs
        if r.objective == "clip"
        and not r.control
        and r.config["epsilon"] > 0
        and r.probes
        and (r.model, r.arm) in arms
    ]
    clips = by(clip, lambda r: (r.model, r.arm))
    rows = []
    for (model, arm), rs in sorted(
        by(cispo, lambda r: (r.model, r.arm)).items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
    ):
        cs = clips.get((model, arm), [])
        outside = [p["ratio_outside"] for r in rs for p in r.probes if p.get("ratio_outside") is not None]
        rows.append(
            [
                model,
                arm_name(arm),
                ", ".join(sorted({r.label for r in rs})) + f" ({len(rs)})",
                pct(largest(rs, "zero_weight_frac"), 3),
                pct(mean(outside), 2) if outside else "-",
                ", ".join(sorted({r.label for r in cs})) + f" ({len(cs)})" if cs else "none",
                pct(largest(cs, "zero_weight_frac"), 3),
            ]
        )
    s.labels = sorted({r.label for r in cispo + clip})
    cispo_max = largest(cispo, "zero_weight_frac") or 0.0
    clip_max = largest(clip, "zero_weight_frac")
    s.verdict = rule(cispo_max, clip_max)
    s.body = (
        table(
            [
                "model",
                "arm",
                "cispo runs",
                "cispo: largest zero-gradient % on one step",
                "cispo: ratios above the cap % (mean over steps)",
                "clip runs in the arm",
                "clip: largest zero-gradient % on one step",
            ],
            rows,
        )
        + f"\n\nLargest zero-gradient fraction on any step: CISPO {pct(cispo_max, 3)}%, "
        + f"clip in the same arms {pct(clip_max, 3)}%."
    )
    return s
