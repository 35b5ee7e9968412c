"""Claim: at staleness 0 the importance ratio is exactly 1, so a clip at eps 0 (the authors' released
script) zeroes no token's gradient by rounding alone; measured in float32 and under bf16 autocast
(:mod:`pspo_repro.analysis.staleness_numerics`, kept in ``identities.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pspo_repro.analysis.audit.formatting import num, pct, table
from pspo_repro.analysis.audit.measurement import IDENTITIES_FILE, IDENTITY_LABELS, STALENESS_ZERO
from pspo_repro.analysis.audit.section import (
    BINDS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Context,
    Section,
)

TITLE = "The ratio at staleness 0"
CLAIM = (
    "At staleness 0 (the first update on a fresh generation) the ratio pi_theta / pi_old is exactly 1, so a "
    "clip at eps 0 zeroes no token's gradient by rounding alone."
)
TEST = (
    "On the first generation batch of each measured run (its starting model, prompts, sampler and "
    "micro-batch), the old policy's log-probabilities are scored as TRL scores them when it keeps them (no "
    "gradient, the generation in order, in chunks) and again as the loss scores them (with gradients, per "
    "micro-batch), both through the trainer's own `_get_per_token_logps_and_entropies` on the same weights, "
    "in float32 and under bf16 autocast; with the chunks paired as TRL pairs them (same size, shuffled "
    "micro-batches), as the same rows, and as the whole generation in one pass against smaller "
    "micro-batches. Reported over the completion tokens: max |r - 1|, the sd of r - 1, the share of tokens "
    "with r != 1, and the share of tokens with A != 0 whose gradient the clip at eps 0 zeroes (A > 0 and "
    "r > 1, or A < 0 and r < 1)."
)
RULE = (
    f"{SUPPORTED} if that share is 0 in every run, precision and pairing; {NOT_SUPPORTED} if it reaches "
    f"{pct(BINDS, 0)}% (where the audit says a clip acts) in one; {INCONCLUSIVE} otherwise (rounding zeroes "
    "some gradients, fewer than that) or when nothing was measured."
)


def rule(zero_fracs: Sequence[float]) -> str:
    """The verdict from the eps-0 clip's zero-gradient share of every (run, precision, pairing) measured:
    exactly 0 everywhere holds the claim, a share that would count as the clip acting anywhere refutes it,
    a smaller nonzero share (or nothing measured, or nan) decides nothing."""
    if not zero_fracs:
        return INCONCLUSIVE
    if any(x >= BINDS for x in zero_fracs):
        return NOT_SUPPORTED
    return SUPPORTED if all(x == 0 for x in zero_fracs) else INCONCLUSIVE


def rows_of(name: str, measured: dict[str, Any]) -> list[list[str]]:
    """The table rows of one run's staleness-0 measurement: one per (precision, pairing)."""
    return [
        [
            name,
            measured["device"],
            r["precision"],
            r["pairing"],
            str(r["tokens_signed"]),
            num(r["max_abs_r_minus_1"], ".2e"),
            num(r["sd_r_minus_1"], ".2e"),
            pct(r["frac_r_not_1"], 2),
            pct(r["zero_frac_eps0"], 2),
            num(r["max_abs_logp_vs_float32"], ".2e"),
        ]
        for r in measured["records"]
    ]


def staleness_zero_ratio(ctx: Context) -> Section:
    """The section: the staleness-0 ratio per run, precision and pairing, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE, labels=list(IDENTITY_LABELS))
    measured = {name: m[STALENESS_ZERO] for name, m in (ctx.identities or {}).items() if STALENESS_ZERO in m}
    if not measured:
        s.missing = (
            f"no staleness-0 measurements in {IDENTITIES_FILE} (none kept, or kept before they were "
            "measured: remove it to measure again): needs a finished run labelled "
            + " or ".join(IDENTITY_LABELS)
        )
        return s
    rows, fracs = [], []
    for name, m in sorted(measured.items()):
        rows += rows_of(name, m)
        fracs += [r["zero_frac_eps0"] for r in m["records"] if r["zero_frac_eps0"] is not None]
    s.verdict = rule(fracs)
    s.labels = sorted({name.split("/")[1] for name in measured})
    sizes = sorted({(m["completions"], m["micro_batch"]) for m in measured.values()})
    s.body = (
        "Generations of "
        + ", ".join(f"{g} completions in micro-batches of {b}" for g, b in sizes)
        + "; pairing: the old-policy pass's chunk (all: one pass) / the training micro-batch.\n\n"
        + table(
            [
                "measured on (run)",
                "device",
                "precision",
                "pairing",
                "tokens with A != 0",
                "max abs(r - 1)",
                "sd(r - 1)",
                "r != 1 %",
                "zero-gradient % at eps 0",
                "max abs(log p - float32's)",
            ],
            rows,
        )
    )
    return s
