"""Claim: the released script's clip ran with eps = 0 (a bug), and the intended eps is a stronger baseline,
so part of the published clip-vs-PSPO gap comes from the bug."""

from __future__ import annotations

from collections.abc import Sequence

from pspo_repro.analysis import inference
from pspo_repro.analysis.audit.formatting import table
from pspo_repro.analysis.audit.runs import arm_name, base_model, by, comparable, evaluated_arm
from pspo_repro.analysis.audit.section import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Context, Section

TITLE = "The clip baseline"
CLAIM = (
    "The released script's clip ran with eps = 0 (a control-flow bug); the intended eps gives a stronger "
    "baseline, so part of the published clip-vs-PSPO gap comes from the bug."
)
TEST = (
    "Per model and arm (optimizer, learning rate, reuse, length): the clip at the intended eps against the "
    "clip at eps 0, and PSPO against the clip at eps 0, in test accuracy (strict) by the hierarchical "
    "bootstrap (builds a random factor, each arm's seeds, test problems), two-sided, Holm-adjusted over the "
    "arms compared (one family for each question). The share of PSPO's gap over eps 0 that the intended eps "
    "closes, (clip_eps - clip_0) / (pspo - clip_0), is stated only where PSPO beats eps 0 significantly: "
    "otherwise there is no gap to share."
)
RULE = (
    f"Per arm: the intended clip beats eps 0 after Holm (p < {inference.ALPHA:g}; {SUPPORTED}), loses to it "
    f"({NOT_SUPPORTED}), or neither ({INCONCLUSIVE}, with the smallest detectable difference). Overall: the "
    f"arms' common verdict, else {INCONCLUSIVE} (the table says where it holds)."
)


def arm_verdict(effect: float, p_adjusted: float) -> str:
    """One arm's verdict from (intended-eps clip minus eps-0 clip, in points) and its Holm-adjusted p."""
    if p_adjusted < inference.ALPHA:
        return SUPPORTED if effect > 0 else NOT_SUPPORTED
    return INCONCLUSIVE


def rule(comparisons: Sequence[tuple[float, float]]) -> str:
    """The verdict from each (arm, intended eps)'s (difference to eps 0 in points, Holm-adjusted p): the arms
    must agree for the claim to be decided; none at all decides nothing."""
    verdicts = [arm_verdict(effect, p) for effect, p in comparisons]
    return verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE


def share(clip: inference.Comparison, pspo: inference.Comparison | None) -> str:
    """The share of PSPO's gap over eps 0 that the intended eps closes, in words; only where PSPO beats eps 0
    after Holm (a gap that may be noise, or negative, has no share to close)."""
    if pspo is None:
        return "no PSPO run in this arm"
    if pspo.verdict != "a > b":
        return "no gap to share (PSPO does not beat eps 0)"
    return f"{100 * clip.effect / pspo.effect:.0f}% of {pspo.effect:+.1f} points"


def clip_baseline(ctx: Context) -> Section:
    """The section: clip at eps 0 against the intended eps per arm, PSPO's gap, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    clips = [r for r in ctx.runs if r.objective == "clip" and not r.control]
    clip_pairs, pspo_pairs, where = [], [], []
    for (model, arm), g in sorted(by(clips, lambda r: (base_model(r.model), r.arm)).items(), key=str):
        zero = evaluated_arm([r for r in g if r.config["epsilon"] == 0], ctx.benchmark, "clip eps 0")
        if zero is None:
            continue
        pspo_runs = [
            r
            for r in ctx.runs
            if r.objective == "pspo"
            and not r.control
            and base_model(r.model) == model
            and r.arm == arm
            and r.config["alpha"] == g[0].config["alpha"]
        ]
        pspo = evaluated_arm(pspo_runs, ctx.benchmark, "pspo")
        k = None  # this arm's PSPO comparison, when there is one
        if pspo is not None and comparable(pspo, zero):
            k = len(pspo_pairs)
            pspo_pairs.append((pspo, zero))
            s.labels += [r.label for r in pspo_runs]
        for eps in sorted({r.config["epsilon"] for r in g if r.config["epsilon"] > 0}):
            clip = evaluated_arm(
                [r for r in g if r.config["epsilon"] == eps], ctx.benchmark, f"clip eps {eps:g}"
            )
            if clip is None or not comparable(clip, zero):
                continue
            clip_pairs.append((clip, zero))
            where.append((model, arm, eps, k))
        s.labels += sorted({r.label for r in g})
    if not clip_pairs:
        s.missing = "needs clip runs at eps 0 and at eps > 0 evaluated on the same model and arm (the audit profile's clip-eps0 beside clip)"
        return s
    found = inference.compare_family(clip_pairs)
    gaps = inference.compare_family(pspo_pairs) if pspo_pairs else []
    rows, lines = [], []
    for c, (model, arm, eps, k) in zip(found, where, strict=True):
        gap = gaps[k] if k is not None else None
        rows.append(
            [
                model,
                arm_name(arm),
                f"{eps:g}",
                f"{c.effect:+.1f} [{c.ci_low:+.1f}, {c.ci_high:+.1f}]",
                "< 0.001" if c.p_adjusted < 0.001 else f"{c.p_adjusted:.3f}",
                "-" if c.verdict != inference.NO_DIFFERENCE else f"{c.mdd:.1f}",
                "-" if gap is None else f"{gap.effect:+.1f} [{gap.ci_low:+.1f}, {gap.ci_high:+.1f}]",
                share(c, gap),
                arm_verdict(c.effect, c.p_adjusted),
            ]
        )
        lines.append(f"- {model}, {arm_name(arm)}: {c.describe()}" + (f"; {gap.describe()}" if gap else ""))
    s.labels = sorted(set(s.labels))
    s.verdict = rule([(c.effect, c.p_adjusted) for c in found])
    s.body = table(
        [
            "model",
            "arm",
            "intended eps",
            "clip eps - clip eps 0, points [95% CI]",
            "p (Holm)",
            "MDD, points",
            "pspo - clip eps 0, points [95% CI]",
            "share of that gap closed",
            "verdict",
        ],
        rows,
    )
    s.body += "\n\n" + "\n".join(lines)
    return s
