"""What every claim's section is made of: the verdicts, the thresholds the rules share, the section record
and the context a section reads its runs from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspo_repro.analysis.audit.runs import Run

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this scale"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

BINDS = 0.01  # a clip "acts" where it zeroes at least 1% of token gradients
SATURATED = 0.01  # a sigmoid weight below 1% of its value at ratio 1 (which is 1)
COLLAPSE = 0.10  # a run collapses when its validation accuracy ends 10 points below its step-0 value
Z = 3.0  # differences count when they exceed 3 standard errors


@dataclass
class Section:
    """One claim as audit.md prints it: its texts, its numbers (``body``), its verdict or what is missing."""

    title: str
    claim: str
    test: str
    rule: str
    labels: list[str] = field(default_factory=list)  # the run labels it reads (for the command)
    body: str = ""
    verdict: str | None = None
    missing: str | None = None
    figures: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Everything a section reads: the study's finished runs, its starting models, the identities."""

    study_dir: Path
    out_dir: Path
    profile: str
    benchmark: str
    runs: list[Run]
    starts: dict[str, dict[str, Any]]
    identities: dict[str, Any] | None
    plot: bool = True
    grid_runs: list[Run] = field(default_factory=list)  # the phase diagram's cells (not in ``runs``)

    @property
    def all_runs(self) -> list[Run]:
        """The main runs and the phase diagram's cells: for claims about an objective wherever it ran."""
        return self.runs + self.grid_runs

    def figure(self, name: str, draw: Callable[[Any], None]) -> str | None:
        """Draw a PNG with ``draw(axes)`` into the output folder; returns its file name."""
        if not self.plot:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
        draw(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = self.out_dir / f"audit-{name}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        tmp.replace(path)
        return path.name

    def start_accuracy(self, model: str, metric: str = "strict") -> float | None:
        """The starting model's accuracy on the audited benchmark (None when it was not evaluated)."""
        s = self.starts.get(model)
        if s is None or self.benchmark not in s["benchmarks"]:
            return None
        return s["benchmarks"][self.benchmark]["metrics"][metric]["accuracy"]

    def control_runs(self, model: str) -> list[Run]:
        """The model's shuffled-advantage control runs (the noise floor)."""
        return [r for r in self.runs if r.model == model and r.control]


def plot_arms(
    ax: Any,
    curves: dict[str, list[dict[int, float]]],
    *,
    scale: float = 1.0,
    suffix: str = "",
    dashed: bool = False,
    linear_below: float | None = None,
) -> None:
    """Curves of an integer x (staleness) -> value, one colour per arm (the report's): each model's or
    build's curve thin, their mean thick and in the legend once, so that the legend names arms, not runs.
    ``linear_below``: a y axis linear up to that value and logarithmic above (values orders apart)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from pspo_repro.analysis import style

    for label, per_model in sorted(curves.items()):
        look = style.arm_style(label)
        line = "--" if dashed else look["linestyle"]
        for per in per_model:
            xs = sorted(per)
            ax.plot(xs, [scale * per[k] for k in xs], color=look["color"], ls=line, lw=0.7, alpha=0.4)
        xs = sorted({k for per in per_model for k in per})
        mean = [scale * float(np.mean([per[k] for per in per_model if k in per])) for k in xs]
        ax.plot(
            xs,
            mean,
            color=look["color"],
            ls=line,
            lw=2,
            marker=look["marker"],
            label=f"{label}{suffix} (mean of {len(per_model)})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if linear_below is not None:
        style.log_above(ax, linear_below)
