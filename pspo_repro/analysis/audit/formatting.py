"""How audit.md writes numbers and tables: one place, so that every section prints them alike."""

from __future__ import annotations

import math

from pspo_repro.analysis.audit.stats import mean, sd


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as percent (points), '-' when absent or not finite."""
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def num(x: float | None, fmt: str = ".3g") -> str:
    """A number in ``fmt``, '-' when absent or not finite."""
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def pct_sd(xs: list[float], digits: int = 1) -> str:
    """Accuracies over seeds as 'mean ± sd' in percent (one seed: its value; none: '-')."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return pct(xs[0], digits)
    return f"{pct(mean(xs), digits)} ± {pct(sd(xs), digits)}"


def table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
