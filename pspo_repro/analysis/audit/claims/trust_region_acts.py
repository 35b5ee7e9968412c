"""Claim: under rollout reuse the clip's trust region acts, zeroing the gradient of a material share of
tokens on the stalest updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pspo_repro.analysis.audit.formatting import pct, table
from pspo_repro.analysis.audit.runs import arm_name, by, staleness_means
from pspo_repro.analysis.audit.section import (
    BINDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
    plot_arms,
)

TITLE = "How often the trust region acts"
CLAIM = (
    "Under rollout reuse the clip's trust region acts: it zeroes the gradient of a material share of "
    f"tokens (at least {pct(BINDS, 0)}% on the stalest updates)."
)
TEST = (
    "The clip-binding fraction (zero-gradient tokens of clip runs) by staleness at each eps, in each arm "
    "(regular and stress), so each run's regime is visible."
)
RULE = (
    f"Per (arm, eps > 0): binds if the stalest steps' mean is at least {pct(BINDS, 0)}%. {SUPPORTED} if "
    f"every such arm binds, {NOT_SUPPORTED} if none does, {INCONCLUSIVE} if some do (the table says which)."
)


def acts(stalest_zero_frac: float) -> bool:
    """The clip binds in an arm: its stalest steps zero at least BINDS of the token gradients on average."""
    return stalest_zero_frac >= BINDS


def rule(stalest: Sequence[float]) -> str:
    """The verdict from the stalest steps' mean zero-gradient fraction of each (arm, eps > 0): the claim
    holds where every arm binds, fails where none does; mixed regimes (or no arm) decide nothing."""
    binds = [acts(x) for x in stalest]
    if not binds:
        return INCONCLUSIVE
    return SUPPORTED if all(binds) else NOT_SUPPORTED if not any(binds) else INCONCLUSIVE


def trust_region_acts(ctx: Context) -> Section:
    """The section: clip-binding fractions by staleness per arm and eps, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    clips = [r for r in ctx.runs if r.objective == "clip" and not r.control and r.probes]
    if not clips:
        s.missing = "needs finished clip runs with probes"
        return s
    groups = by(clips, lambda r: (r.model, r.arm, r.config["epsilon"]))
    rows, stalest = [], []
    for (model, arm, eps), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        per = staleness_means(rs, "zero_weight_frac")
        out = staleness_means(rs, "ratio_outside")
        if not per:
            continue
        stale = max(per)
        if eps > 0:
            stalest.append(per[stale])
        rows.append(
            [model, arm_name(arm), f"{eps:g}", str(len(rs))]
            + [" / ".join(pct(per.get(k), 2) for k in sorted(per))]
            + [pct(out.get(stale), 2), "binds" if acts(per[stale]) else "rarely"]
        )
    s.labels = sorted({r.label for r in clips})
    s.verdict = rule(stalest)
    s.body = table(
        [
            "model",
            "arm",
            "eps",
            "seeds",
            "zero-gradient % by staleness 0 / 1 / ...",
            "ratios outside % (stalest)",
            "regime",
        ],
        rows,
    )

    def draw(ax: Any) -> None:
        curves: dict[str, list[dict[int, float]]] = {}
        for (_model, label), rs in sorted(by(clips, lambda r: (r.model, r.label)).items()):
            curves.setdefault(label, []).append(staleness_means(rs, "zero_weight_frac"))
        plot_arms(ax, curves, scale=100, linear_below=1)
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("clip-binding tokens % (log above 1)")
        ax.set_title("Where the clip binds (thin: each model)")

    s.figures = [f for f in [ctx.figure("clip-binding", draw)] if f]
    return s
