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
    f"{SUPPORTED} if the largest relative difference of every run is at most the tolerance of the precision "
    f"it was measured in ({identities.GRAD_RTOL_EPS['float32']:g} float32 epsilons, "
    f"{identities.grad_rtol('float32'):.2e}, in float32; {identities.GRAD_RTOL_EPS['bf16']:g} bf16 epsilons, "
    f"{identities.grad_rtol('bf16'):.2e}, under bf16 autocast); {NOT_SUPPORTED} otherwise."
)


def rule(worst_rel_diff: float, tolerance: float = identities.GRAD_RTOL) -> str:
    """The verdict from the largest relative gradient difference over the measured micro-batches of a run,
    against the tolerance of its precision (:func:`~pspo_repro.analysis.identities.grad_rtol`; float32's by
    default): an identity holds to that precision or it does not (nan does not)."""
    return SUPPORTED if worst_rel_diff <= tolerance else NOT_SUPPORTED


def worst_run(ident: dict[str, Any]) -> tuple[float, str, float]:
    """The largest relative difference relative to its tolerance, over the runs: (difference, precision,
    tolerance); a run measured before precisions were recorded was measured in float32 (nan ranks worst)."""

    def entry(m: dict[str, Any]) -> tuple[float, str, float]:
        precision = m.get("precision", "float32")
        return m["grad_rel_diff_max"], precision, identities.grad_rtol(precision)

    def badness(e: tuple[float, str, float]) -> float:
        ratio = e[0] / e[2]
        return float("inf") if ratio != ratio else ratio

    return max((entry(m) for m in ident.values()), key=badness)


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
    worst, precision, tolerance = worst_run(ctx.identities)
    s.verdict = rule(worst, tolerance)
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
        + f" Measured in {precision} (tolerance {tolerance:.2e})."
    )
    return s
