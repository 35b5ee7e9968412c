"""Claim: permissive grading inflates accuracy over strict grading, with the paper's own metric between
them."""

from __future__ import annotations

from pspo_repro.analysis import tables
from pspo_repro.analysis.audit.formatting import pct, table
from pspo_repro.analysis.audit.runs import by
from pspo_repro.analysis.audit.section import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Context, Section
from pspo_repro.analysis.audit.stats import mean

TITLE = "Permissive metric inflation"
CLAIM = (
    "Permissive grading (the gold answer anywhere in the completion) inflates accuracy over strict "
    "grading (a `####` answer required), and the paper's own metric (the authors' extraction: the line "
    "after `####`, else the last number) sits between them."
)
TEST = (
    "Permissive minus strict, flexible minus strict and paper minus strict, in points, per model and run "
    "(mean over seeds), on every benchmark evaluated; the starting models included. (paper: n/a for "
    "evaluations recorded before the metric existed.)"
)
RULE = (
    f"{SUPPORTED} if permissive exceeds strict by more than 1 point on average over all runs and "
    f"benchmarks; {NOT_SUPPORTED} if by less than 0.25; {INCONCLUSIVE} in between."
)


def rule(inflation: float) -> str:
    """The verdict from permissive minus strict accuracy (a fraction), averaged over every run and
    benchmark: more than a point is inflation, under a quarter point is none, in between is unclear."""
    return SUPPORTED if inflation > 0.01 else NOT_SUPPORTED if inflation < 0.0025 else INCONCLUSIVE


def permissive_inflation(ctx: Context) -> Section:
    """The section: the metrics' differences per model, run and benchmark, the verdict by :func:`rule`."""
    s = Section(TITLE, CLAIM, TEST, RULE)
    rows, diffs = [], []
    sources = [(m, tables.START, [s_]) for m, s_ in sorted(ctx.starts.items())]
    sources += [
        (m, label, [r.summary for r in rs if r.summary])
        for (m, label), rs in sorted(by(ctx.runs, lambda r: (r.model, r.label)).items())
    ]
    for model, label, summaries in sources:
        if not summaries:
            continue
        for bench in sorted(summaries[0]["benchmarks"]):
            metrics = [x["benchmarks"][bench]["metrics"] for x in summaries if bench in x["benchmarks"]]
            perm = [m["permissive"]["accuracy"] - m["strict"]["accuracy"] for m in metrics]
            flex = [m["flexible"]["accuracy"] - m["strict"]["accuracy"] for m in metrics]
            paper = [m["paper"]["accuracy"] - m["strict"]["accuracy"] for m in metrics if "paper" in m]
            diffs += perm
            rows.append(
                [
                    model,
                    label,
                    bench,
                    str(len(metrics)),
                    pct(mean(perm)),
                    pct(mean(flex)),
                    pct(mean(paper)) if len(paper) == len(metrics) else "n/a",
                    pct(mean([m["strict"]["accuracy"] for m in metrics])),
                ]
            )
    if not diffs:
        s.missing = "needs evaluated runs (eval/summary.json)"
        return s
    overall = mean(diffs)
    s.labels = sorted({r.label for r in ctx.runs})
    s.verdict = rule(overall)
    s.body = (
        f"Permissive minus strict, mean over every run and benchmark: {pct(overall, 2)} points.\n\n"
        + table(
            [
                "model",
                "run",
                "benchmark",
                "seeds",
                "permissive - strict, points",
                "flexible - strict, points",
                "paper - strict, points",
                "strict %",
            ],
            rows,
        )
    )
    return s
