"""Claim: clip-higher (DAPO's asymmetric range) zeroes fewer positive-advantage tokens than the symmetric
clip, since only the upper bound, the one a positive advantage meets, is raised."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pspo_repro.analysis.audit.formatting import num, pct, pct_sd, table
from pspo_repro.analysis.audit.runs import Run, arm_name, by
from pspo_repro.analysis.audit.section import (
    BINDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
    Z,
)
from pspo_repro.analysis.audit.stats import mean, se_mean

TITLE = "Clip-higher spares positive-advantage tokens"
CLAIM = (
    "Raising the clip's upper bound (clip-higher, DAPO: eps_high > eps) zeroes the gradient of fewer "
    "positive-advantage tokens than the symmetric clip, so tokens the policy is learning to favour keep "
    "their gradient (DAPO's argument for exploration)."
)
TEST = (
    "Each clip-higher run beside the symmetric clip (eps_high absent or equal to eps) at the same eps, model, "
    "arm and seed: per run, the mean over its stale steps (staleness > 0, where a ratio can leave 1) of the "
    "fraction of positive-advantage tokens whose gradient is zeroed; per pair of runs, clip-higher's minus "
    "the symmetric clip's; the mean of those differences over seeds and its standard error."
)
RULE = (
    f"Per (model, arm, eps, eps_high), tested only where the symmetric clip zeroes at least {pct(BINDS, 0)}% "
    f"of positive tokens (else there is nothing to spare): {SUPPORTED} if clip-higher's fraction is lower by "
    f"more than {Z:g} standard errors; {NOT_SUPPORTED} if it is higher by more than {Z:g} standard errors, or "
    f"if even its reduction plus {Z:g} standard errors is under {pct(BINDS, 0)} points; {INCONCLUSIVE} "
    "otherwise (and with fewer than two paired seeds). Overall: the tested comparisons' common verdict, else "
    f"{INCONCLUSIVE}."
)


def comparison_verdict(diff: float, se: float, symmetric: float) -> str:
    """One comparison's verdict from (clip-higher minus symmetric zeroed positive fraction, mean over seeds),
    its paired standard error and the symmetric clip's fraction: a reduction beyond noise supports the claim;
    an increase beyond noise, or a reduction bounded below BINDS, refutes it; the rest is noise."""
    if not symmetric >= BINDS or not math.isfinite(se):
        return INCONCLUSIVE
    if diff < -Z * se:
        return SUPPORTED
    if diff > Z * se or -diff + Z * se < BINDS:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def rule(comparisons: Sequence[tuple[float, float, float]]) -> str:
    """The verdict from each comparison's (difference, its standard error, symmetric clip's fraction): only
    those where the symmetric clip binds test the claim, and they must agree; none tested decides nothing."""
    verdicts = [comparison_verdict(*c) for c in comparisons if c[2] >= BINDS]
    return verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE


def stale_mean(run: Run, field_name: str) -> float | None:
    """A probe field's mean over the run's steps with staleness > 0 (None: no such step recorded it)."""
    values = [
        p[field_name] for p in run.probes if p.get("staleness", 1) > 0 and p.get(field_name) is not None
    ]
    return mean(values) if values else None


def mean_of(xs: list[float | None]) -> float | None:
    """The mean of the values recorded (None: none was)."""
    values = [x for x in xs if x is not None]
    return mean(values) if values else None


def is_higher(run: Run) -> bool:
    """A clip-higher run: its upper range exceeds its lower one."""
    high = run.config.get("epsilon_high")
    return high is not None and high > run.config["epsilon"]


def is_symmetric(run: Run) -> bool:
    """A symmetric clip run: no upper range of its own, or one equal to the lower."""
    high = run.config.get("epsilon_high")
    return high is None or high == run.config["epsilon"]


def clip_higher_positive_tokens(ctx: Context) -> Section:
    """The section: zeroed positive-token fractions of clip-higher against the symmetric clip per seed, the
    verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    clips = [r for r in ctx.all_runs if r.objective == "clip" and not r.control and r.probes]

    def key(r: Run) -> tuple:
        return (r.model, r.arm, r.config["epsilon"], r.config.get("ratio_level") or "token")

    symmetric: dict[tuple, Run] = {}
    for r in clips:
        if is_symmetric(r):
            symmetric.setdefault((key(r), r.seed), r)
    highs = by([r for r in clips if is_higher(r)], lambda r: (key(r), r.config["epsilon_high"]))
    rows, comparisons, used = [], [], []
    for (k, high), rs in sorted(highs.items(), key=lambda kv: str(kv[0])):
        pairs = [(h, symmetric[(k, h.seed)]) for h in rs if (k, h.seed) in symmetric]
        measured = [
            (stale_mean(h, "zero_weight_frac_pos"), stale_mean(c, "zero_weight_frac_pos")) for h, c in pairs
        ]
        pos = [(a, b) for a, b in measured if a is not None and b is not None]
        if not pos:
            continue
        used += [r for pair in pairs for r in pair]
        diffs = [a - b for a, b in pos]
        sym = [b for _, b in pos]
        diff, se = mean(diffs), se_mean(diffs)
        comparisons.append((diff, se, mean(sym)))
        neg_sym = mean_of([stale_mean(c, "zero_weight_frac_neg") for _, c in pairs])
        neg_high = mean_of([stale_mean(h, "zero_weight_frac_neg") for h, _ in pairs])
        model, arm, eps, level = k
        rows.append(
            [
                model,
                arm_name(arm) + ("" if level == "token" else f", {level} level"),
                f"{eps:g} / {high:g}",
                str(len(pos)),
                pct_sd(sym, 2),
                pct_sd([a for a, _ in pos], 2),
                f"{pct(diff, 2)} ({num(se * 100, '.2f')})",
                f"{pct(neg_sym, 2)} / {pct(neg_high, 2)}",
                comparison_verdict(diff, se, mean(sym)),
            ]
        )
    if not comparisons:
        s.missing = (
            "needs clip-higher runs (the clip with epsilon_high > epsilon) and symmetric clip runs at the same "
            "eps, model, arm and seeds, with probes: the cpu-full profile's phase grid, or the field "
            "profile's clip-higher beside clip and clip-higher-stress beside clip-stress"
            + ("" if highs else " (no clip-higher run)")
        )
        return s
    s.labels = sorted({r.label for r in used})
    s.verdict = rule(comparisons)
    s.body = table(
        [
            "model",
            "arm",
            "eps / eps_high",
            "paired seeds",
            "symmetric: +A tokens zeroed %",
            "clip-higher: +A tokens zeroed %",
            "difference (se), points",
            "-A tokens zeroed %, symmetric / clip-higher",
            "verdict",
        ],
        rows,
    )
    return s
