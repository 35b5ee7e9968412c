"""Claim: the released script's clip ran with eps = 0 (a bug), and the intended eps is a stronger baseline,
so part of the published clip-vs-PSPO gap comes from the bug."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pspo_repro.analysis.audit.formatting import num, pct, pct_sd, table
from pspo_repro.analysis.audit.runs import accuracies, arm_name, by
from pspo_repro.analysis.audit.section import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Context, Section, Z
from pspo_repro.analysis.audit.stats import mean, se_diff

TITLE = "The clip baseline"
CLAIM = (
    "The released script's clip ran with eps = 0 (a control-flow bug); the intended eps gives a stronger "
    "baseline, so part of the published clip-vs-PSPO gap comes from the bug."
)
TEST = (
    "Clip at eps 0 against the intended eps at the same learning rate and reuse (test accuracy, strict, "
    "mean ± sd over seeds), and the share of PSPO's gap over clip at eps 0 that the intended eps closes: "
    "(clip_eps - clip_0) / (pspo - clip_0)."
)
RULE = (
    f"Per arm: the intended clip beats eps 0 by more than {Z:g} standard errors ({SUPPORTED}), loses by more "
    f"({NOT_SUPPORTED}), or neither ({INCONCLUSIVE}). Overall: the arms' common verdict, else {INCONCLUSIVE} "
    "(the table says where it holds)."
)


def arm_verdict(diff: float, se: float) -> str:
    """One arm's verdict from (intended-eps clip minus eps-0 clip, in accuracy) and its standard error."""
    if math.isfinite(se) and diff > Z * se:
        return SUPPORTED
    if math.isfinite(se) and diff < -Z * se:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def rule(comparisons: Sequence[tuple[float, float]]) -> str:
    """The verdict from each (arm, intended eps)'s (accuracy difference to eps 0, its standard error): the
    arms must agree for the claim to be decided; none at all decides nothing."""
    verdicts = [arm_verdict(diff, se) for diff, se in comparisons]
    return verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE


def clip_baseline(ctx: Context) -> Section:
    """The section: clip at eps 0 against the intended eps per arm, PSPO's gap, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    clips = [r for r in ctx.runs if r.objective == "clip" and not r.control]
    groups = by(clips, lambda r: (r.model, r.arm))
    usable = {
        k: g
        for k, g in groups.items()
        if any(r.config["epsilon"] == 0 for r in g) and any(r.config["epsilon"] > 0 for r in g)
    }
    if not usable:
        s.missing = "needs clip runs at eps 0 and at eps > 0 on the same model and arm (the audit profile's clip-eps0 beside clip)"
        return s
    rows, comparisons = [], []
    for (model, arm), g in sorted(usable.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        zero = accuracies([r for r in g if r.config["epsilon"] == 0], ctx.benchmark)
        pspo_runs = [
            r
            for r in ctx.runs
            if r.objective == "pspo"
            and not r.control
            and r.model == model
            and r.arm == arm
            and r.config["alpha"] == g[0].config["alpha"]
        ]
        pspo = accuracies(pspo_runs, ctx.benchmark)
        s.labels += [r.label for r in pspo_runs]
        for eps in sorted({r.config["epsilon"] for r in g if r.config["epsilon"] > 0}):
            accs = accuracies([r for r in g if r.config["epsilon"] == eps], ctx.benchmark)
            if not accs or not zero:
                continue
            diff, se = mean(accs) - mean(zero), se_diff(accs, zero)
            comparisons.append((diff, se))
            gap = mean(pspo) - mean(zero) if pspo else float("nan")
            share = diff / gap if pspo and gap != 0 else float("nan")
            rows.append(
                [
                    model,
                    arm_name(arm),
                    f"{eps:g}",
                    pct_sd(zero),
                    pct_sd(accs),
                    f"{pct(diff)} ({num(se * 100, '.1f')})",
                    pct_sd(pspo),
                    pct(gap),
                    pct(share, 0) + ("%" if math.isfinite(share) else ""),
                    arm_verdict(diff, se),
                ]
            )
        s.labels += sorted({r.label for r in g})
    s.labels = sorted(set(s.labels))
    s.verdict = rule(comparisons)
    s.body = table(
        [
            "model",
            "arm",
            "intended eps",
            "clip eps 0 %",
            "clip at eps %",
            "difference (se), points",
            "pspo %",
            "pspo - clip eps 0, points",
            "share of that gap closed",
            "verdict",
        ],
        rows,
    )
    return s
