"""Claim: PSPO's soft trust region holds back the policy it trains. What is exact is only a fact about the
smoothed policy pi~ = (1 - alpha) pi_theta + alpha pi_old (a TV equality and a KL bound against pi_old),
reported beside the verdict; the verdict is on pi_theta, PSPO's against the clip's in the same arm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pspo_repro.analysis import identities
from pspo_repro.analysis.audit.formatting import num, table
from pspo_repro.analysis.audit.measurement import IDENTITIES_FILE
from pspo_repro.analysis.audit.runs import Run, arm_name, base_model, by
from pspo_repro.analysis.audit.section import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
    Z,
    plot_arms,
)
from pspo_repro.analysis.audit.stats import mean, se_diff

TOLERANCE = 0.1  # PSPO's policy may move up to 10% further than the clip's and still count as held back
FIELDS = ("kl_old_theta", "mean_abs_r_minus_1")  # how far pi_theta moved from pi_old, in order of preference

TITLE = "Soft trust region"
CLAIM = (
    "PSPO's update is a trust region for the policy it trains: pi_theta moves no further from pi_old under "
    "PSPO than under the clip at the same optimizer, learning rate, reuse and length. (The exact statement "
    "behind it is about the smoothed mixture pi~ = (1 - alpha) pi_theta + alpha pi_old only: "
    "TV(pi~, pi_old) = (1 - alpha) TV(pi_theta, pi_old) and KL(pi~ || pi_old) <= (1 - alpha) "
    "KL(pi_theta || pi_old); it is checked and reported as a fact, and it bounds pi~, not pi_theta.)"
)
TEST = (
    "How far pi_theta moved from pi_old on each run's stale steps (staleness 1 or more: updates made since "
    "the batch was generated): the probes' KL(pi_old || pi_theta) on the sampled tokens (k3 estimate; mean "
    "|r - 1| where a run has no KL), averaged per run; PSPO's runs against the clip's (eps > 0) in the same "
    "model and arm, the difference of means with its standard error over runs (builds and seeds). Beside it, "
    "the identity for pi~: exact TV and KL on the full next-token distributions at states sampled from "
    "training batches of the measured runs."
)
RULE = (
    f"Per arm: {NOT_SUPPORTED} if PSPO's policy moves further than the clip's by more than {Z:g} standard "
    f"errors; {SUPPORTED} if even the difference plus {Z:g} standard errors is at most {TOLERANCE:.0%} of "
    f"the clip's movement; {INCONCLUSIVE} otherwise (the largest excess not excluded is stated). Overall: "
    f"{NOT_SUPPORTED} if some arm says so, {SUPPORTED} if every arm does, else {INCONCLUSIVE}. The identity "
    f"for pi~ (TV within {identities.DIST_ATOL:g}, KL bound never exceeded by more) decides nothing."
)


def identity_holds(tv_error: float, kl_excess: float) -> bool:
    """The pi~ identity holds: the largest TV-equality error and KL-bound excess within the tolerance (both
    exact statements)."""
    return tv_error <= identities.DIST_ATOL and kl_excess <= identities.DIST_ATOL


def arm_verdict(diff: float, se: float, clip_movement: float) -> str:
    """One arm's verdict from (PSPO's movement minus the clip's, its standard error over runs, the clip's
    movement): further beyond noise refutes; an upper bound within the tolerance supports."""
    if not math.isfinite(se):
        return INCONCLUSIVE
    if diff > Z * se:
        return NOT_SUPPORTED
    if diff + Z * se <= TOLERANCE * clip_movement:
        return SUPPORTED
    return INCONCLUSIVE


def rule(comparisons: Sequence[tuple[float, float, float]]) -> str:
    """The verdict from each arm's (difference, se, clip movement): one arm where PSPO's policy moves
    further refutes the claim; every arm held back supports it; anything else decides nothing."""
    verdicts = [arm_verdict(*c) for c in comparisons]
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


def movement(r: Run) -> tuple[float, str] | None:
    """How far the run's pi_theta moved from pi_old: a probe field's mean over its stale steps (all steps
    where none is stale), the first of FIELDS it recorded; None when it recorded none."""
    stale = [p for p in r.probes if p.get("staleness", 0) >= 1] or r.probes
    for name in FIELDS:
        values = [p[name] for p in stale if p.get(name) is not None]
        if values:
            return mean(values), name
    return None


def movement_rows(ctx: Context) -> tuple[list[list[str]], list[tuple[float, float, float]]]:
    """Per (model, arm, PSPO label, clip label): the movement table's row and the rule's numbers."""
    rows, comparisons = [], []
    runs = [r for r in ctx.runs if r.objective in ("pspo", "clip") and not r.control]
    for (model, arm), g in sorted(by(runs, lambda r: (base_model(r.model), r.arm)).items(), key=str):
        moved = {r.name: movement(r) for r in g}
        labels = by([r for r in g if moved[r.name]], lambda r: r.label)
        for p_label, ps in sorted(labels.items()):
            for c_label, cs in sorted(labels.items()):
                if ps[0].objective != "pspo" or cs[0].objective != "clip" or cs[0].config["epsilon"] <= 0:
                    continue
                fields = {moved[r.name][1] for r in ps + cs}
                if len(fields) > 1:
                    continue  # one field for both sides, or no comparison
                a, b = [moved[r.name][0] for r in ps], [moved[r.name][0] for r in cs]
                diff, se = mean(a) - mean(b), se_diff(a, b)
                comparisons.append((diff, se, mean(b)))
                verdict = arm_verdict(diff, se, mean(b))
                rows.append(
                    [
                        model,
                        arm_name(arm),
                        f"{p_label} / {c_label}",
                        fields.pop(),
                        f"{len(a)} / {len(b)}",
                        num(mean(a), ".4g"),
                        num(mean(b), ".4g"),
                        f"{num(diff, '.3g')} ({num(se, '.2g')})",
                        num(diff + Z * se, ".3g"),
                        verdict,
                    ]
                )
    return rows, comparisons


def soft_trust_region(ctx: Context) -> Section:
    """The section: how far pi_theta moves under PSPO and the clip (the verdict by :func:`rule`), and the pi~
    identity by staleness on the measured runs beside it."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    rows, comparisons = movement_rows(ctx)
    if not comparisons:
        s.missing = "needs pspo and clip (eps > 0) runs with probes on the same model and arm" + (
            "" if ctx.identities else f"; and there are no identity measurements ({IDENTITIES_FILE})"
        )
        return s
    s.verdict = rule(comparisons)
    s.labels = sorted({label for row in rows for label in row[2].split(" / ")})
    s.body = (
        "How far pi_theta moved from pi_old on the stale steps, PSPO against the clip (mean per run, then over "
        "runs):\n\n"
        + table(
            [
                "model",
                "arm",
                "pspo / clip",
                "measure",
                "runs",
                "pspo",
                "clip",
                "difference (se)",
                f"difference + {Z:g} se",
                "verdict",
            ],
            rows,
        )
    )
    if s.verdict == INCONCLUSIVE:
        s.body += (
            f"\n\nThe smallest excess this design can exclude is the difference + {Z:g} se column: "
            f"PSPO's policy moving that much further than the clip's could not be told from noise."
        )
    if not ctx.identities:
        s.body += f"\n\nThe identity for pi~: no identity measurements ({IDENTITIES_FILE})."
        return s
    tv = max(m["tv_error_max"] for m in ctx.identities.values())
    kl = max(m["kl_excess_max"] for m in ctx.identities.values())
    ident = []
    for name, m in sorted(ctx.identities.items()):
        for k, st in sorted(m["by_staleness"].items(), key=lambda kv: int(kv[0])):  # JSON keys are text
            ident.append(
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
    s.body += (
        f"\n\nThe identity for pi~ (a fact, not the verdict): it "
        f"{'holds' if identity_holds(tv, kl) else 'does not hold'}; largest TV error {num(tv, '.2e')}, "
        f"largest KL excess {num(kl, '.2e')} (the bound holds when it is at most {identities.DIST_ATOL:g}; "
        "negative values are its slack). It bounds pi~; the pi_theta columns are how far the trained policy "
        "itself moved.\n\n"
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
            ident,
        )
    )

    def draw(ax: Any) -> None:
        for key, suffix, dashed in (("tv_theta", " π_θ", False), ("tv_smooth", " π~", True)):
            curves: dict[str, list[dict[int, float]]] = {}
            for name, m in sorted(ctx.identities.items()):
                label = name.split("/")[1]  # <model>/<label>/seed<k>
                curves.setdefault(label, []).append({int(k): v[key] for k, v in m["by_staleness"].items()})
            plot_arms(ax, curves, suffix=suffix, dashed=dashed)
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("mean TV distance from π_old")
        ax.set_title("π_θ (solid) and the smoothed π~ (dashed) against π_old")

    s.figures = [f for f in [ctx.figure("trust-region", draw)] if f]
    return s
