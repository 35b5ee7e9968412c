"""Claim: PSPO never zeroes a token's gradient, while ratio clipping does (the probes' zero-gradient
fraction)."""

from __future__ import annotations

from typing import Any

from pspo_repro.analysis.audit.formatting import pct, table
from pspo_repro.analysis.audit.runs import by, staleness_means
from pspo_repro.analysis.audit.section import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
    plot_arms,
)
from pspo_repro.analysis.audit.stats import mean

TITLE = "Gradient preservation"
CLAIM = "PSPO never zeroes a token's gradient, while ratio clipping does."
TEST = (
    "The probes' zero-gradient fraction (tokens with a nonzero advantage whose gradient weight is exactly 0) "
    "at every optimizer step, by objective and by staleness (updates since the rollouts were generated)."
)
RULE = (
    f"{SUPPORTED} if no PSPO run (alpha < 1) ever zeroes a token's gradient and some clip run does; "
    f"{NOT_SUPPORTED} if a PSPO run does; {INCONCLUSIVE} if no clip run ever binds."
)


def rule(pspo_max: float, clip_max: float) -> str:
    """The verdict from the largest zero-gradient fraction on any step of the PSPO runs and of the clip runs:
    one zeroed PSPO gradient refutes the claim; without a binding clip there is nothing to contrast."""
    return NOT_SUPPORTED if pspo_max > 0 else SUPPORTED if clip_max > 0 else INCONCLUSIVE


def gradient_preservation(ctx: Context) -> Section:
    """The section: zero-gradient fractions by run and staleness, and the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    pspo = [r for r in ctx.runs if r.objective == "pspo" and r.config["alpha"] < 1 and r.probes]
    clip = [r for r in ctx.runs if r.objective == "clip" and r.probes]
    if not pspo or not clip:
        s.missing = (
            "needs finished pspo and clip runs with probes"
            + ("" if pspo else " (no pspo run)")
            + ("" if clip else " (no clip run)")
        )
        return s
    groups = by([r for r in ctx.runs if r.probes], lambda r: (r.model, r.label))
    rows = []
    for (model, label), rs in sorted(groups.items()):
        per = staleness_means(rs, "zero_weight_frac")
        if not per:  # no step with a nonzero advantage
            continue
        worst = max(
            p["zero_weight_frac"] for r in rs for p in r.probes if p.get("zero_weight_frac") is not None
        )
        stale = max(per)
        rows.append(
            [
                model,
                label,
                str(len(rs)),
                pct(mean(list(per.values())), 2),
                pct(per.get(0), 2),
                pct(per.get(stale), 2) + f" (at {stale})",
                pct(worst, 2),
            ]
        )
    s.labels = sorted({label for _, label in groups})
    pspo_max = max(p["zero_weight_frac"] or 0.0 for r in pspo for p in r.probes)
    clip_max = max(p["zero_weight_frac"] or 0.0 for r in clip for p in r.probes)
    s.verdict = rule(pspo_max, clip_max)
    s.body = (
        table(
            [
                "model",
                "run",
                "seeds",
                "zero-gradient % (mean over staleness)",
                "at staleness 0",
                "at the stalest step",
                "largest on one step",
            ],
            rows,
        )
        + f"\n\nLargest zero-gradient fraction on any step: PSPO {pct(pspo_max, 3)}%, clip {pct(clip_max, 3)}%."
    )

    def draw(ax: Any) -> None:
        curves: dict[str, list[dict[int, float]]] = {}
        for (_model, label), rs in sorted(groups.items()):
            if rs[0].objective in ("clip", "pspo"):
                curves.setdefault(label, []).append(staleness_means(rs, "zero_weight_frac"))
        plot_arms(ax, curves, scale=100, linear_below=1)
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("zero-gradient tokens % (log above 1)")
        ax.set_title("Tokens whose gradient the objective zeroes (thin: each model)")

    s.figures = [f for f in [ctx.figure("zero-gradient", draw)] if f]
    return s
