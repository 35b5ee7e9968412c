"""Claim: the accuracy differences between objectives exceed the noise floor that the shuffled-advantage
control's spread over seeds sets."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pspo_repro.analysis.audit.formatting import pct, pct_sd, table
from pspo_repro.analysis.audit.runs import accuracies, arm_name, by
from pspo_repro.analysis.audit.section import COLLAPSE, INCONCLUSIVE, SUPPORTED, Context, Section, Z
from pspo_repro.analysis.audit.stats import mean, sd

TITLE = "Noise floor"
CLAIM = (
    "The accuracy differences between objectives exceed the noise floor (the shuffled-advantage "
    "control's spread over seeds); a collapse the control reproduces is not an objective's doing."
)
TEST = (
    "Every pair of objectives (same model and arm): the difference of mean test accuracy (strict) against "
    "the standard error the control's seed-to-seed spread implies for a difference of two means, "
    "sd_control * sqrt(2 / seeds). Collapses (test accuracy 10 points or more below the starting model) "
    "are listed with whether the control collapses too."
)
RULE = (
    f"{SUPPORTED} if some pair differs by more than {Z:g} such standard errors; {INCONCLUSIVE} otherwise "
    "(no difference is distinguishable from noise with these seeds)."
)


def beyond(diff: float, se: float) -> bool:
    """A pair's accuracy difference stands out of the noise: more than Z of the control's standard errors."""
    return abs(diff) > Z * se


def rule(pairs: Sequence[tuple[float, float]]) -> str:
    """The verdict from every pair's (accuracy difference, noise standard error): one difference beyond the
    noise supports the claim; none cannot refute it with these seeds, so the rule never says not supported."""
    return SUPPORTED if any(beyond(diff, se) for diff, se in pairs) else INCONCLUSIVE


def noise_floor(ctx: Context) -> Section:
    """The section: every pair of objectives against the control's noise, the collapses, the verdict by
    :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    rows, pairs, collapses = [], [], []
    for model in sorted({r.model for r in ctx.runs}):
        control = accuracies(ctx.control_runs(model), ctx.benchmark)
        if len(control) < 2:
            continue
        start = ctx.start_accuracy(model)
        s.labels += sorted({r.label for r in ctx.control_runs(model)})
        arms = by([r for r in ctx.runs if r.model == model and not r.control], lambda r: r.arm)
        for arm, g in sorted(arms.items(), key=lambda kv: str(kv[0])):
            per = {
                label: accuracies(rs, ctx.benchmark) for label, rs in sorted(by(g, lambda r: r.label).items())
            }
            per = {k: v for k, v in per.items() if v}
            labels = sorted(per)
            for i, a in enumerate(labels):
                if start is not None and mean(per[a]) <= start - COLLAPSE:
                    collapses.append(
                        [
                            model,
                            a,
                            pct_sd(per[a]),
                            pct(start),
                            pct_sd(control),
                            "yes" if mean(control) <= start - COLLAPSE else "no",
                        ]
                    )
                for b in labels[i + 1 :]:
                    n = min(len(per[a]), len(per[b]))
                    se = sd(control) * math.sqrt(2 / n)
                    diff = mean(per[a]) - mean(per[b])
                    pairs.append((diff, se))
                    rows.append(
                        [
                            model,
                            arm_name(arm),
                            f"{a} - {b}",
                            pct(diff),
                            pct(se),
                            "yes" if beyond(diff, se) else "no",
                        ]
                    )
                    s.labels += [a, b]
    if not rows:
        s.missing = "needs a shuffled-advantage control (an arm with shuffle_advantages, e.g. clip-shuffled) with two or more seeds, and objective runs on the same model"
        return s
    s.labels = sorted(set(s.labels))
    s.verdict = rule(pairs)
    s.body = table(["model", "arm", "difference", "points", "noise se, points", f"beyond {Z:g} se"], rows)
    s.body += "\n\nCollapses:\n\n" + (
        table(["model", "run", "test strict %", "start %", "control %", "control collapses too"], collapses)
        if collapses
        else "none."
    )
    return s
