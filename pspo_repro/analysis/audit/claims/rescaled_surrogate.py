"""Claim: PSPO's parameter gradient is (1 - alpha) times the unclipped surrogate's (measured exactly on the
study's own training batches)."""

from __future__ import annotations

from typing import Any

from pspo_repro.analysis import identities
from pspo_repro.analysis.audit.formatting import num, table
from pspo_repro.analysis.audit.measurement import IDENTITIES_FILE, IDENTITY_LABELS
from pspo_repro.analysis.audit.section import NOT_SUPPORTED, SUPPORTED, Context, Section

TITLE = "PSPO is a rescaled unclipped surrogate"
CLAIM = "PSPO's parameter gradient equals (1 - alpha) times the unclipped importance-weighted gradient."
TEST = (
    "The first optimizer steps of the study's pspo and clip runs are trained again from their starting "
    "model with their settings (TRL's GRPOTrainer); on every micro-batch TRL hands to the loss, both "
    "gradients are computed with autograd through the package's objectives; the "
    "largest relative difference ||g_pspo - (1 - alpha) g_noclip|| / ||(1 - alpha) g_noclip|| is reported."
)
RULE = (
    f"{SUPPORTED} if the largest relative difference is at most {identities.GRAD_RTOL:g} (float32 "
    f"precision); {NOT_SUPPORTED} otherwise."
)


def rule(worst_rel_diff: float) -> str:
    """The verdict from the largest relative gradient difference over all measured micro-batches: an
    identity holds to float32 precision or it does not (nan does not)."""
    return SUPPORTED if worst_rel_diff <= identities.GRAD_RTOL else NOT_SUPPORTED


def identity_rows(ident: dict[str, Any]) -> list[list[str]]:
    """One table row per measured run: its sizes and its three largest identity errors."""
    rows = []
    for name, m in sorted(ident.items()):
        rows.append(
            [
                name,
                str(m["alpha"]),
                str(m["batches"]),
                str(m["states"]),
                num(m["grad_rel_diff_max"], ".2e"),
                num(m["tv_error_max"], ".2e"),
                num(m["kl_excess_max"], ".2e"),
            ]
        )
    return rows


def rescaled_surrogate(ctx: Context) -> Section:
    """The section: the identity measurements per run, and the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE, labels=list(IDENTITY_LABELS))
    if not ctx.identities:
        s.missing = (
            f"no identity measurements ({IDENTITIES_FILE}): needs a finished run labelled "
            + " or ".join(IDENTITY_LABELS)
        )
        return s
    worst = max(m["grad_rel_diff_max"] for m in ctx.identities.values())
    s.verdict = rule(worst)
    s.labels = sorted({name.split("/")[1] for name in ctx.identities})
    s.body = (
        table(
            [
                "measured on (run)",
                "alpha",
                "micro-batches",
                "states",
                "gradient rel. difference",
                "TV error",
                "KL excess",
            ],
            identity_rows(ctx.identities),
        )
        + f"\n\nLargest relative difference: {num(worst, '.2e')}."
    )
    return s
