"""Claim: the sigmoid soft clip (SAPO) saturates like a hard clip, its gradient weight vanishing far from
ratio 1."""

from __future__ import annotations

import math

from pspo_repro.analysis.audit.formatting import num, pct, table
from pspo_repro.analysis.audit.section import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SATURATED,
    SUPPORTED,
    Context,
    Section,
)

TITLE = "Sigmoid saturation"
CLAIM = (
    "The sigmoid soft clip (SAPO) saturates like a hard clip: far from ratio 1 its gradient weight "
    f"vanishes (falls below {pct(SATURATED, 0)}% of its value at ratio 1)."
)
TEST = (
    "The sampled tokens (probe samples, nonzero advantage) whose sigmoid weight w(r) = 4 s (1 - s) r, "
    f"s = sigmoid(tau (r - 1)), is below {pct(SATURATED, 0)}% of w(1) = 1; and how far their ratios went: "
    "from the closed form, for the run's temperature (tau_pos for A > 0, tau_neg otherwise), the distance "
    f"|r - 1| at which the weight first falls below {pct(SATURATED, 0)}% on either side of 1 (the reach: "
    "the weight must vanish by then on the nearer side), and the tokens whose |r - 1| reached it."
)
RULE = (
    f"{SUPPORTED} if some sampled token's weight is saturated; {NOT_SUPPORTED} if none is although some "
    f"token's |r - 1| reached its temperature's reach; {INCONCLUSIVE} if the ratios never went that far."
)


def weight(r: float, tau: float) -> float:
    """The sigmoid objective's gradient weight at ratio ``r`` (objectives._sigmoid's, 1 at r = 1)."""
    s = 1.0 / (1.0 + math.exp(-tau * (r - 1.0))) if tau * (r - 1.0) > -700 else 0.0
    return 4.0 * s * (1.0 - s) * r


def saturation_bounds(tau: float, level: float = SATURATED) -> tuple[float, float]:
    """(r_lo, r_hi): below r_lo and above r_hi the weight is under ``level``. Bisection on the closed form:
    w rises from 0 to 1 on [0, 1], and above 1 rises, then falls towards 0 (so any r > 1 under ``level`` is
    past its peak)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if weight(mid, tau) >= level else (mid, hi)
    r_lo = lo
    lo, hi = 1.0, 2.0
    while weight(hi, tau) >= level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if weight(mid, tau) >= level else (lo, mid)
    return r_lo, hi


def reach(tau: float) -> float:
    """The |r - 1| at which the weight is saturated on the nearer side of 1: a ratio that far from 1 is
    where saturation, if the claim holds, must show."""
    r_lo, r_hi = saturation_bounds(tau)
    return min(1.0 - r_lo, r_hi - 1.0)


def rule(saturated: int, reached: int) -> str:
    """The verdict from the sampled tokens whose weight is saturated and those whose |r - 1| reached their
    temperature's reach: saturation seen supports the claim; ratios that far without it refute it; ratios
    that never went that far cannot show it either way."""
    if saturated:
        return SUPPORTED
    return NOT_SUPPORTED if reached else INCONCLUSIVE


def sigmoid_saturation(ctx: Context) -> Section:
    """The section: saturated tokens and how far the ratios went, per run, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    sig = [r for r in ctx.runs if r.objective == "sigmoid" and not r.control]
    samples: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for r in sig:
        taus = (r.config["sapo_temperature_pos"], r.config["sapo_temperature_neg"])
        for p in r.probes:
            for ratio, a, w in p.get("samples", []):
                if a != 0:
                    tau = taus[0] if a > 0 else taus[1]
                    samples.setdefault((r.model, r.label), []).append((ratio, a, w, tau))
    if not samples:
        s.missing = "needs finished sigmoid runs with probe samples"
        return s
    rows, total, low, far = [], 0, 0, 0
    reaches = {tau: reach(tau) for triples in samples.values() for *_, tau in triples}
    for (model, label), tokens in sorted(samples.items()):
        sat = sum(1 for _, _, w, _ in tokens if w < SATURATED)
        went = sum(1 for r, _, _, tau in tokens if abs(r - 1) >= reaches[tau])
        total, low, far = total + len(tokens), low + sat, far + went
        rows.append(
            [
                model,
                label,
                str(len(tokens)),
                pct(sat / len(tokens), 3),
                num(min(r for r, *_ in tokens), ".3f") + " – " + num(max(r for r, *_ in tokens), ".3f"),
                num(max(abs(r - 1) for r, *_ in tokens), ".3f"),
                " / ".join(num(reaches[t], ".3f") for t in sorted({t for *_, t in tokens})),
                str(went),
            ]
        )
    s.labels = sorted({label for _, label in samples})
    s.verdict = rule(low, far)
    s.body = table(
        [
            "model",
            "run",
            "sampled tokens",
            "saturated %",
            "ratios sampled",
            "largest |r - 1|",
            "reach (per temperature)",
            "tokens that reached it",
        ],
        rows,
    )
    bounds = "; ".join(
        f"tau {t:g}: saturated below r = {num(saturation_bounds(t)[0], '.4f')} and above "
        f"r = {num(saturation_bounds(t)[1], '.3f')}"
        for t in sorted(reaches)
    )
    s.body += f"\n\nSaturated overall: {pct(low / total, 3)}% of {total} sampled tokens ({bounds})."
    if s.verdict == INCONCLUSIVE:
        s.body += (
            f" No ratio went as far as the reach (largest |r - 1| "
            f"{num(max(abs(r - 1) for ts in samples.values() for r, *_ in ts), '.3f')}): saturation could not "
            "show at this scale."
        )
    return s
