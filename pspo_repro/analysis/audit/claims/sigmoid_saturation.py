"""Claim: the sigmoid soft clip (SAPO) saturates like a hard clip, its gradient weight vanishing for a
material share of tokens far from ratio 1."""

from __future__ import annotations

from pspo_repro.analysis.audit.formatting import num, pct, table
from pspo_repro.analysis.audit.section import BINDS, INCONCLUSIVE, SATURATED, SUPPORTED, Context, Section

TITLE = "Sigmoid saturation"
CLAIM = (
    "The sigmoid soft clip (SAPO) saturates like a hard clip: far from ratio 1 its gradient weight "
    "vanishes for a material share of tokens."
)
TEST = (
    f"The fraction of sampled tokens (probe samples, nonzero advantage) whose sigmoid weight is below "
    f"{pct(SATURATED, 0)}% of its value at ratio 1 (where it is 1)."
)
RULE = (
    f"{SUPPORTED} if at least {pct(BINDS, 0)}% of sampled tokens are saturated; {INCONCLUSIVE} otherwise (the "
    "ratios at this scale may not reach the saturated region: the largest |r - 1| sampled is shown)."
)


def rule(saturated_share: float) -> str:
    """The verdict from the share of sampled tokens whose sigmoid weight is saturated: few saturated tokens
    may only mean the ratios never went far, so the rule never says not supported."""
    return SUPPORTED if saturated_share >= BINDS else INCONCLUSIVE


def sigmoid_saturation(ctx: Context) -> Section:
    """The section: saturated shares of the probes' sampled tokens per run, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    sig = [r for r in ctx.runs if r.objective == "sigmoid" and not r.control]
    samples = {(r.model, r.label): [] for r in sig}
    for r in sig:
        for p in r.probes:
            samples[(r.model, r.label)] += [t for t in p.get("samples", []) if t[1] != 0]
    samples = {k: v for k, v in samples.items() if v}
    if not samples:
        s.missing = "needs finished sigmoid runs with probe samples"
        return s
    rows, total, low = [], 0, 0
    for (model, label), triples in sorted(samples.items()):
        sat = sum(1 for _, _, w in triples if w < SATURATED)
        total += len(triples)
        low += sat
        rows.append(
            [
                model,
                label,
                str(len(triples)),
                pct(sat / len(triples), 3),
                num(max(abs(r - 1) for r, _, _ in triples), ".3f"),
            ]
        )
    s.labels = sorted({label for _, label in samples})
    s.verdict = rule(low / total)
    s.body = table(["model", "run", "sampled tokens", "saturated %", "largest |r - 1|"], rows)
    s.body += f"\n\nSaturated overall: {pct(low / total, 3)}% of {total} sampled tokens."
    return s
