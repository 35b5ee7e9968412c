"""Claim: the smoothed policy pi~ = (1 - alpha) pi_theta + alpha pi_old obeys an exact TV equality and a KL
bound against pi_old (while pi_theta itself is not held back)."""

from __future__ import annotations

from typing import Any

from pspo_repro.analysis import identities
from pspo_repro.analysis.audit.formatting import num, table
from pspo_repro.analysis.audit.measurement import IDENTITIES_FILE
from pspo_repro.analysis.audit.runs import by, staleness_means
from pspo_repro.analysis.audit.section import NOT_SUPPORTED, SUPPORTED, Context, Section

TITLE = "Soft trust region"
CLAIM = (
    "With pi~ = (1 - alpha) pi_theta + alpha pi_old, TV(pi~, pi_old) = (1 - alpha) TV(pi_theta, pi_old) and "
    "KL(pi~ || pi_old) <= (1 - alpha) KL(pi_theta || pi_old). The bound is about pi~, not the policy the "
    "update produces: pi_theta itself is not held back."
)
TEST = (
    "Exact computation on the full next-token distributions of the model at states sampled from those "
    "training batches (pi_old: the policy that generated the batch; pi_theta: the policy after "
    "the updates made since), and how far pi_theta moves from pi_old under PSPO and under clip, by "
    "staleness (exact TV and KL at those states; the probes' mean |r - 1| on every run)."
)
RULE = (
    f"{SUPPORTED} if the TV equality holds within {identities.DIST_ATOL:g} and the KL bound is never "
    f"exceeded by more than {identities.DIST_ATOL:g}; {NOT_SUPPORTED} otherwise."
)


def rule(tv_error: float, kl_excess: float) -> str:
    """The verdict from the largest TV-equality error and the largest KL-bound excess over all measured
    states: both are exact statements, so both must hold to the tolerance."""
    holds = tv_error <= identities.DIST_ATOL and kl_excess <= identities.DIST_ATOL
    return SUPPORTED if holds else NOT_SUPPORTED


def soft_trust_region(ctx: Context) -> Section:
    """The section: TV and KL by staleness on the measured runs, how far every run moves, the verdict by
    :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    if not ctx.identities:
        s.missing = f"no identity measurements ({IDENTITIES_FILE})"
        return s
    tv = max(m["tv_error_max"] for m in ctx.identities.values())
    kl = max(m["kl_excess_max"] for m in ctx.identities.values())
    s.verdict = rule(tv, kl)
    s.labels = sorted({name.split("/")[1] for name in ctx.identities})
    rows = []
    for name, m in sorted(ctx.identities.items()):
        for k, st in sorted(m["by_staleness"].items(), key=lambda kv: int(kv[0])):  # JSON keys are text
            rows.append(
                [
                    name,
                    k,
                    num(st["tv_theta"], ".4f"),
                    num(st["tv_theta_max"], ".3f"),
                    num(st["tv_smooth"], ".4f"),
                    num(st["kl_theta"], ".4f"),
                    num(st["kl_smooth"], ".4f"),
                ]
            )
    movement = []
    moving = [r for r in ctx.runs if r.objective in ("pspo", "clip", "noclip") and not r.control and r.probes]
    for (model, label), rs in sorted(by(moving, lambda r: (r.model, r.label)).items()):
        per = staleness_means(rs, "mean_abs_r_minus_1")
        if per:
            stale = max(per)
            movement.append(
                [
                    model,
                    label,
                    str(len(rs)),
                    num(per.get(1), ".4f"),
                    num(per[stale], ".4f") + f" (at {stale})",
                ]
            )
    s.body = (
        f"Largest TV error {num(tv, '.2e')}; largest KL excess {num(kl, '.2e')} (the bound "
        "holds when it is at most the tolerance; negative values are its slack).\n\n"
        + table(
            [
                "measured on",
                "staleness",
                "TV(pi_theta, pi_old) mean",
                "max",
                "TV(pi~, pi_old) mean",
                "KL(pi_theta || pi_old) mean",
                "KL(pi~ || pi_old) mean",
            ],
            rows,
        )
        + "\n\nHow far pi_theta moves from pi_old on the sampled tokens, every run (probes, mean |r - 1|):\n\n"
        + table(["model", "run", "seeds", "staleness 1", "stalest"], movement)
    )

    def draw(ax: Any) -> None:
        for name, m in sorted(ctx.identities.items()):
            ks = sorted(int(k) for k in m["by_staleness"])
            ax.plot(
                ks, [m["by_staleness"][str(k)]["tv_theta"] for k in ks], marker="o", label=f"{name} pi_theta"
            )
            ax.plot(ks, [m["by_staleness"][str(k)]["tv_smooth"] for k in ks], ls="--", label=f"{name} pi~")
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("mean TV distance from pi_old")
        ax.set_title("pi_theta and the smoothed pi~ against pi_old")

    s.figures = [f for f in [ctx.figure("trust-region", draw)] if f]
    return s
