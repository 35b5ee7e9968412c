"""The phase diagram's figures: per objective, a reuse x learning-rate heatmap of the effect over the
shuffled-advantage control and one of the zeroed-gradient fraction, and the "who wins where" map (see
:mod:`pspo_repro.analysis.phase` for the numbers)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pspo_repro.analysis import style

SIGNIFICANT = 0.05
FIGURE_WIDTH_MAX = 10.0  # inches: wider lattices wrap their panels onto more rows


def _axes_grid(n: int, width: int) -> tuple[Any, list[Any], int]:
    """n heatmap panels, each ``width`` cells wide, as many to a row as leave a cell about half an inch; returns
    the figure, the panels and the number to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = 0.5 * width + 0.8  # inches: the cells and the panel's tick labels
    cols = max(1, min(n, 4, int(FIGURE_WIDTH_MAX // panel)))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * panel + 1.2, 2.1 * rows + 0.9), dpi=130, squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n], cols


def _lattice(rows: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    return sorted({r["reuse"] for r in rows}), sorted({r["learning_rate"] for r in rows})


def _heatmaps(
    rows: list[dict[str, Any]],
    value: str,
    title: str,
    colourbar: str,
    cmap: str,
    symmetric: bool,
    path: Path,
    mark: str | None = None,
) -> None:
    import numpy as np

    reuses, lrs = _lattice(rows)
    objectives = list(dict.fromkeys(r["objective"] for r in rows if r[value] is not None))
    values = [100 * r[value] for r in rows if r[value] is not None and math.isfinite(r[value])]
    if not objectives or not values:
        return
    top = max(abs(v) for v in values) or 1.0
    vmin, vmax = (-top, top) if symmetric else (0.0, max(values) or 1.0)
    fig, axes, cols = _axes_grid(len(objectives), len(reuses))
    image = None
    for i, (ax, objective) in enumerate(zip(axes, objectives, strict=True)):
        grid = np.full((len(lrs), len(reuses)), np.nan)
        for r in rows:
            if r["objective"] == objective and r[value] is not None:
                grid[lrs.index(r["learning_rate"]), reuses.index(r["reuse"])] = 100 * r[value]
        image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        for r in rows:
            if r["objective"] != objective or r[value] is None:
                continue
            v = 100 * r[value]
            star = "*" if mark and r.get(mark) is not None and r[mark] < SIGNIFICANT else ""
            red, green, blue, _ = image.cmap(image.norm(v))  # the cell's own colour decides the text's
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                reuses.index(r["reuse"]),
                lrs.index(r["learning_rate"]),
                f"{v:+.0f}{star}" if symmetric else f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
        ax.set_title(objective, fontsize=9)
        ax.set_xticks(range(len(reuses)), [str(x) for x in reuses], fontsize=7)
        ax.set_yticks(range(len(lrs)), [f"{x:g}" for x in lrs], fontsize=7)
        if i + cols >= len(axes):  # the axis titles once, on the panels' outer edges
            ax.set_xlabel("reuse (updates per generation)", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("learning rate", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    cax = fig.add_axes((0.9, 0.15, 0.015, 0.7))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(colourbar, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    _save(fig, path)


def _winner_map(wins: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    reuses, lrs = _lattice(wins)
    # a cell of about 1.4 x 1.0 inches holds five short lines; the numbers behind each are in phase.md
    fig, ax = plt.subplots(figsize=(1.4 * len(reuses) + 2.6, 1.0 * len(lrs) + 1.3), dpi=130)
    shown: dict[str, str] = {}
    for w in wins:
        x, y = reuses.index(w["reuse"]), lrs.index(w["learning_rate"])
        colour = style.arm_style(w["winner"])["color"] if w["winner"] else "#E6E6E6"
        if w["winner"]:
            shown[w["winner"]] = colour
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=colour, edgecolor="white", lw=2))
        if w["winner"]:
            text = (
                f"{w['winner']}\nover {w['runner_up']}\n{100 * w['difference']:+.1f} pp\n"
                f"[{100 * w['ci_low']:+.1f}, {100 * w['ci_high']:+.1f}]\np {w['p_holm']:.3f}"
            )
        elif w.get("tied_with_best"):
            names = w["tied_with_best"].split(", ")
            rows = [", ".join(names[i : i + 2]) for i in range(0, len(names), 2)]
            text = "no winner: tied\n" + "\n".join(rows)
        else:
            text = (
                f"no winner\nbest {w['best']}\n{100 * w['difference']:+.1f} pp (p {w['p_holm']:.2f})\n"
                f"detectable: {100 * w['mdd']:.0f} pp"
            )
        ax.text(x, y, text, ha="center", va="center", fontsize=6, color="white" if w["winner"] else "black")
    ax.set_xlim(-0.5, len(reuses) - 0.5)
    ax.set_ylim(-0.5, len(lrs) - 0.5)
    ax.set_xticks(range(len(reuses)), [str(x) for x in reuses])
    ax.set_yticks(range(len(lrs)), [f"{x:g}" for x in lrs])
    ax.set_xlabel("reuse: optimizer updates per generation (staleness)")
    ax.set_ylabel("learning rate")
    ax.set_title(
        "Who wins where: best objective vs runner-up, final test accuracy\n(Holm over cells)", fontsize=9
    )
    handles = [Patch(facecolor=c, label=n) for n, c in sorted(shown.items())]
    handles.append(Patch(facecolor="#E6E6E6", label="no significant winner"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def draw(rows: list[dict[str, Any]], wins: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The three figures into ``out_dir``; returns their paths."""
    model = rows[0]["model"] if rows else ""
    gain = out_dir / "phase-gain.png"
    zero = out_dir / "phase-zero-gradient.png"
    winners = out_dir / "phase-winners.png"
    objectives = [r for r in rows if not r["objective"].endswith("-shuffled")]
    _heatmaps(
        objectives,
        "effect_over_control",
        f"Final test accuracy (strict) over the shuffled-advantage control, {model}; * p < 0.05 after Holm",
        "points over the control",
        "RdBu",
        True,
        gain,
        mark="p_holm",
    )
    _heatmaps(
        objectives,
        "zero_gradient_fraction",
        f"Token gradients zeroed by the objective (all probed steps), {model}",
        "% of tokens with A != 0",
        "Greys",
        False,
        zero,
    )
    if wins:
        _winner_map(wins, winners)
    return [p for p in (gain, zero, winners) if p.is_file()]
