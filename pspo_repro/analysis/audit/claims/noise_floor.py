"""Claim: the accuracy differences between objectives exceed the noise of seeds, builds and test problems, and
a collapse the shuffled-advantage control reproduces is not an objective's doing."""

from __future__ import annotations

from collections.abc import Sequence

from pspo_repro.analysis import inference
from pspo_repro.analysis.audit.formatting import pct, pct_sd, table
from pspo_repro.analysis.audit.runs import (
    Run,
    accuracies,
    arm_name,
    base_model,
    by,
    comparable,
    evaluated_arm,
)
from pspo_repro.analysis.audit.section import (
    COLLAPSE,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)
from pspo_repro.analysis.audit.stats import mean

MATERIAL = 5.0  # points of test accuracy: a smaller difference between objectives is not material

TITLE = "Noise floor"
CLAIM = (
    "The accuracy differences between objectives exceed the noise floor (each arm's own spread over seeds "
    "and builds, and the sampling of test problems); a collapse the control reproduces is not an "
    "objective's doing."
)
TEST = (
    "Every pair of objectives run on the same model with the same optimizer, learning rate, reuse and length, "
    "and each of them against that arm's shuffled-advantage control where there is one: the difference of "
    "test accuracy (strict) by a hierarchical bootstrap (builds resampled as a random factor and shared by "
    "both arms, each arm's seeds resampled within a build, test problems resampled and shared), with its 95% "
    "interval and two-sided p, Holm-adjusted over every pair of the section; for a pair with no detectable "
    "difference, the smallest difference the design would have found (MDD, 80% power). Collapses (test "
    f"accuracy {pct(COLLAPSE, 0)} points or more below the starting model) are listed with whether the arm's "
    "control collapses too."
)
RULE = (
    f"{SUPPORTED} if some pair of objectives differs after Holm (p < {inference.ALPHA:g}); {NOT_SUPPORTED} if "
    f"no pair differs and every such pair's MDD is below {MATERIAL:g} points (no difference larger than "
    f"{MATERIAL:g} points between objectives); {INCONCLUSIVE} otherwise (the largest MDD is stated). Pairs "
    "with the control are reported, not counted."
)


def rule(pairs: Sequence[tuple[float, float]]) -> str:
    """The verdict from each pair of objectives' (Holm-adjusted p, MDD in points): one real difference
    supports the claim; none, where the design would have found any material one, refutes it; none where a
    material difference could have been missed (or nothing compared) decides nothing."""
    if any(p < inference.ALPHA for p, _ in pairs):
        return SUPPORTED
    if pairs and all(mdd < MATERIAL for _, mdd in pairs):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def arms_of(ctx: Context) -> dict[tuple[str, tuple], dict[str, inference.Arm]]:
    """The evaluated arms by (model, Run.arm): each objective label's runs over builds and seeds, the
    control's under its own label."""
    out: dict[tuple[str, tuple], dict[str, inference.Arm]] = {}
    for key, g in by(ctx.runs, lambda r: (base_model(r.model), r.arm)).items():
        for label, rs in sorted(by(g, lambda r: r.label).items()):
            arm = evaluated_arm(rs, ctx.benchmark, label)
            if arm is not None:
                out.setdefault(key, {})[label] = arm
    return out


def controls(runs: list[Run]) -> set[str]:
    """The labels of the shuffled-advantage controls among the runs."""
    return {r.label for r in runs if r.control}


def noise_floor(ctx: Context) -> Section:
    """The section: every pair of objectives of one model and arm, and each against the arm's control, by
    :func:`pspo_repro.analysis.inference.compare_family`; the collapses; the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    control_labels = controls(ctx.runs)
    pairs: list[tuple[inference.Arm, inference.Arm]] = []
    where: list[tuple[str, tuple, bool]] = []  # (model, arm, against the control)
    for (model, arm), labelled in sorted(arms_of(ctx).items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        objectives = sorted(k for k in labelled if k not in control_labels)
        ctrl = sorted(k for k in labelled if k in control_labels)
        for i, a in enumerate(objectives):
            for b in objectives[i + 1 :]:
                if not comparable(labelled[a], labelled[b]):
                    continue
                pairs.append((labelled[a], labelled[b]))
                where.append((model, arm, False))
            for c in ctrl:
                if not comparable(labelled[a], labelled[c]):
                    continue
                pairs.append((labelled[a], labelled[c]))
                where.append((model, arm, True))
    if not any(not control for _, _, control in where):
        s.missing = (
            "needs two or more objectives evaluated on the same model with the same optimizer, learning rate, "
            "reuse and length (e.g. the cpu profile's clip and pspo)"
        )
        return s
    found = inference.compare_family(pairs)
    rows, judged = [], []
    for c, (model, arm, control) in zip(found, where, strict=True):
        if not control:
            judged.append((c.p_adjusted, c.mdd))
        p = "< 0.001" if c.p_adjusted < 0.001 else f"{c.p_adjusted:.3f}"
        differs = c.verdict != inference.NO_DIFFERENCE
        rows.append(
            [
                model,
                arm_name(arm),
                f"{c.a} - {c.b}" + (" (control)" if control else ""),
                f"{c.effect:+.1f} [{c.ci_low:+.1f}, {c.ci_high:+.1f}]",
                p,
                "-" if differs else f"{c.mdd:.1f}",
                "yes" if differs else "no",
            ]
        )
        s.labels += [c.a, c.b]
    s.labels = sorted(set(s.labels))
    s.verdict = rule(judged)
    s.body = table(
        ["model", "arm", "pair", "difference, points [95% CI]", "p (Holm)", "MDD, points", "differs"], rows
    )
    largest = max(mdd for p, mdd in judged if p >= inference.ALPHA) if s.verdict != SUPPORTED else None
    s.body += (
        f"\n\n{len(judged)} pairs of objectives and {len(found) - len(judged)} against a control, Holm over "
        f"all {len(found)}."
    )
    if largest is not None:
        s.body += (
            f" No pair of objectives differs; the largest difference the design could have missed (largest "
            f"MDD) is {largest:.1f} points"
            + (f", below the {MATERIAL:g} points that count as material." if largest < MATERIAL else ".")
        )
    s.body += "\n\nCollapses:\n\n" + collapse_table(ctx, control_labels)
    return s


def collapse_table(ctx: Context, control_labels: set[str]) -> str:
    """The objectives whose mean test accuracy ends a collapse below the starting model, and whether their
    arm's control does too."""
    rows = []
    for (model, _arm), g in sorted(by(ctx.runs, lambda r: (r.model, r.arm)).items(), key=str):
        start = ctx.start_accuracy(model)
        if start is None:
            continue
        control = accuracies([r for r in g if r.label in control_labels], ctx.benchmark)
        for label, rs in sorted(
            by([r for r in g if r.label not in control_labels], lambda r: r.label).items()
        ):
            accs = accuracies(rs, ctx.benchmark)
            if accs and mean(accs) <= start - COLLAPSE:
                too = "-" if not control else "yes" if mean(control) <= start - COLLAPSE else "no"
                rows.append([model, label, pct_sd(accs), pct(start), pct_sd(control), too])
    if not rows:
        return "none."
    return table(["model", "run", "test strict %", "start %", "control %", "control collapses too"], rows)
