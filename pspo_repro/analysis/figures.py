"""The report's figures, from the frames of :mod:`pspo_repro.analysis.results`, each arm drawn in its one style
(:func:`pspo_repro.analysis.style.arm_style`). Each function returns the figure; the notebooks save it.

Lines carry their arm's label (``Line2D.get_label()``), so a figure's series can be read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pspo_repro.analysis import aggregate, results, style

PANEL_HEIGHT = 2.6
METRIC_MARKERS = {"paper": "P", "strict": "o", "flexible": "s", "permissive": "^"}


def _panels(
    n: int, height: float = PANEL_HEIGHT, sharey: bool = True, columns: int | None = None
) -> tuple[Any, list[Any]]:
    """``n`` panels in rows of ``columns`` (default: one row)."""
    import matplotlib.pyplot as plt

    cols = max(1, min(n, columns or n))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(style.FIGURE_WIDTH, height * rows),
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[: max(n, 1)]


def _legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[x] for x in labels], labels, loc="outside right upper", fontsize="small")


def _present(labels: Sequence[str], frame: pd.DataFrame) -> list[str]:
    found = set(frame["label"]) if "label" in frame else set()
    return [x for x in labels if x in found]


def curves(
    frame: pd.DataFrame,
    value: str,
    labels: Sequence[str],
    models: Sequence[str],
    ylabel: str,
    x: str = "step",
    scale: float = 1.0,
    linear_below: float | None = None,
) -> Any:
    """One panel per model: ``value`` against ``x`` per arm, the mean over seeds as a line and its 95%
    bootstrap interval as a band (none with one seed). Rows of one run with the same ``x`` are averaged
    first (e.g. the steps of one staleness level). ``linear_below``: a symmetric-log y axis, linear up to
    that value and logarithmic above it, for arms whose values differ by orders of magnitude (1% beside
    40%) and would otherwise lie flat on the axis."""
    models = [m for m in models if m in set(frame.get("model", []))]
    fig, axes = _panels(len(models), columns=3)  # a row per three models (or builds)
    for ax, model in zip(axes, models, strict=False):
        data = frame[frame["model"] == model]
        for label in _present(labels, data):
            c = aggregate.over_seeds(data[data["label"] == label], value, [x]).sort_values(x)
            if c.empty:
                continue
            st = style.arm_style(label)
            ax.plot(c[x], scale * c["mean"], label=label, markersize=4, **st)
            ax.fill_between(
                c[x].astype(float),
                scale * c["ci_low"].astype(float),
                scale * c["ci_high"].astype(float),
                color=st["color"],
                alpha=0.15,
                linewidth=0,
            )
        ax.set_title(model, fontsize="medium")
        ax.set_xlabel(x)
        if linear_below is not None:
            style.log_above(ax, linear_below)
    if axes:
        axes[0].set_ylabel(ylabel if linear_below is None else f"{ylabel}, log above {linear_below:g}")
    _legend(fig, axes)
    return fig


def accuracy_points(table: pd.DataFrame, panels: Sequence[tuple[str, str]], labels: Sequence[str]) -> Any:
    """One panel per (benchmark, metric) of ``panels``: each arm's accuracy (percent), models along x, the
    mean over seeds with its 95% bootstrap interval as error bars (table from
    :func:`pspo_repro.analysis.aggregate.accuracy_table`)."""
    models = list(dict.fromkeys(table["model"]))
    arms = _present(labels, table)
    fig, axes = _panels(len(panels), height=PANEL_HEIGHT + 0.4, columns=2)
    width = 0.8 / max(len(arms), 1)
    for ax, (benchmark, metric) in zip(axes, panels, strict=False):
        d = table[(table["benchmark"] == benchmark) & (table["metric"] == metric)]
        for j, label in enumerate(arms):
            rows = d[d["label"] == label].set_index("model").reindex(models)
            xs = np.arange(len(models)) - 0.4 + width * (j + 0.5)
            mean = 100 * rows["mean"].astype(float).to_numpy()
            err = np.vstack(
                [mean - 100 * rows["ci_low"].astype(float), 100 * rows["ci_high"].astype(float) - mean]
            )
            st = style.arm_style(label)
            ax.errorbar(
                xs,
                mean,
                yerr=np.nan_to_num(err),
                label=label,
                color=st["color"],
                marker=st["marker"],
                linestyle="none",
                markersize=5,
                capsize=2,
            )
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize="x-small")
        ax.set_title(f"{benchmark}, {metric}", fontsize="medium")
    if axes:
        axes[0].set_ylabel("accuracy (%)")
    _legend(fig, axes)
    return fig


def weight_vs_ratio(
    samples: pd.DataFrame, configs: dict[tuple[str, str, int], dict], labels: Sequence[str]
) -> Any:
    """One panel per arm: each sampled token's gradient weight w (d loss / d log r = -w A) against its
    ratio r, filled for A > 0 and hollow for A < 0, over the objective's closed-form w(r) (solid for
    A > 0, dashed for A < 0; one pair per distinct setting of its parameters). The x axis spans the
    central 98% of the sampled ratios and at least [0.5, 1.5]."""
    from pspo_repro.training import objectives

    arms = [x for x in _present(labels, samples) if x != results.START]
    cols = min(len(arms), 4) or 1
    rows_n = -(-len(arms) // cols) if arms else 1
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows_n,
        cols,
        figsize=(style.FIGURE_WIDTH, 2.2 * rows_n),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.flat)
    for ax, label in zip(flat, arms, strict=False):
        st = style.arm_style(label)
        d = samples[samples["label"] == label]
        # the view spans the central 98% of sampled ratios (at least 0.5 to 1.5): a few stale tokens
        # with huge ratios would otherwise flatten everything else
        lo, hi = min(0.5, d["ratio"].quantile(0.01)), max(1.5, d["ratio"].quantile(0.99))
        top = 0.0
        pos, neg = d[d["advantage"] > 0], d[d["advantage"] < 0]
        ax.scatter(pos["ratio"], pos["weight"], s=6, color=st["color"], alpha=0.5, label=f"{label} A>0")
        ax.scatter(
            neg["ratio"],
            neg["weight"],
            s=6,
            facecolors="none",
            edgecolors=st["color"],
            alpha=0.5,
            label=f"{label} A<0",
        )
        settings = {}
        for (_, lab, _), cfg in configs.items():
            if lab == label:
                name = cfg["objective"]
                params = {p: cfg[p] for p in objectives.PARAMS[name] if cfg.get(p) is not None}
                settings[tuple(sorted(params.items()))] = (name, cfg.get("ratio_level", "token"), params)
        grid = np.linspace(lo, hi, 400)
        import torch

        for name, level, params in settings.values():
            obj = objectives.get(name, level, **params)
            tag = ", ".join(f"{k}={v:g}" for k, v in params.items())
            for sign, ls in ((1.0, "-"), (-1.0, "--")):
                w = obj.grad_weight(torch.tensor(grid), torch.full((grid.size,), sign)).numpy()
                top = max(top, float(w.max()))
                ax.plot(
                    grid,
                    w,
                    color="black",
                    linestyle=ls,
                    linewidth=1,
                    label=f"closed form A{'>' if sign > 0 else '<'}0"
                    + (f" ({tag})" if len(settings) > 1 else ""),
                )
                if (
                    sign > 0 and len(settings) > 1
                ):  # several settings (alpha per model): say which line is which
                    ax.annotate(
                        tag.replace("alpha=", "α = "),
                        (grid[-1], w[-1]),
                        xytext=(-2, 3),
                        textcoords="offset points",
                        ha="right",
                        va="bottom",
                        fontsize="x-small",
                    )
        shown = d[(d["ratio"] >= lo) & (d["ratio"] <= hi)]["weight"]
        top = max(top, float(shown.max()) if len(shown) else 0.0, 1.0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.05 * top, 1.08 * top)
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("ratio r")
    for ax in flat[len(arms) :]:
        ax.set_visible(False)
    flat[0].set_ylabel("gradient weight w")
    return fig


def grad_norm_groups(probes: pd.DataFrame, labels: Sequence[str], models: Sequence[str]) -> Any:
    """One panel per model: the distribution over optimizer steps (and seeds) of the gradient norm of each
    parameter group, per arm (box: quartiles; whiskers: 1.5 IQR; log scale)."""
    import seaborn as sns

    groups = [c for c in probes.columns if c.startswith("grad_norm_")]
    long = probes.melt(id_vars=["model", "label"], value_vars=groups, var_name="group", value_name="norm")
    long["group"] = long["group"].str.removeprefix("grad_norm_")
    long = long.dropna(subset=["norm"])
    models = [m for m in models if m in set(long["model"])]
    fig, axes = _panels(len(models), height=PANEL_HEIGHT + 0.4, columns=3)
    for index, (ax, model) in enumerate(zip(axes, models, strict=False)):
        d = long[long["model"] == model]
        arms = _present(labels, d)
        sns.boxplot(
            d,
            x="group",
            y="norm",
            hue="label",
            hue_order=arms,
            palette=style.palette(arms),
            ax=ax,
            fliersize=1,
            linewidth=0.6,
            log_scale=True,
            legend=ax is axes[0],
        )
        ax.set_title(model, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_xlabel("")  # the tick labels name the parameter groups
        ax.set_ylabel("gradient norm" if index % 3 == 0 else "")  # three panels a row, as _panels lays out
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    _legend(fig, axes[:1])
    return fig


def heatmap(frame: pd.DataFrame, benchmark: str, category: str, metric: str, labels: Sequence[str]) -> Any:
    """Accuracy (percent, mean over seeds) per (model, arm) row and category value column, on one
    benchmark (frame from :meth:`pspo_repro.analysis.results.Study.categories`)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = frame[
        (frame["benchmark"] == benchmark) & (frame["category"] == category) & (frame["metric"] == metric)
    ]
    cell = d.groupby(["model", "label", "value"], sort=False)["accuracy"].mean().reset_index()
    order = {x: i for i, x in enumerate(labels)}
    cell["row"] = cell["model"] + " / " + cell["label"]
    rows = (
        cell[["model", "label", "row"]]
        .drop_duplicates()
        .sort_values(
            ["model", "label"], key=lambda c: c.map(order) if c.name == "label" else c, kind="stable"
        )["row"]
    )
    values = sorted(
        cell["value"].unique(),
        key=lambda v: (
            not str(v).lstrip("-").isdigit(),
            int(v) if str(v).lstrip("-").isdigit() else 0,
            str(v),
        ),
    )
    grid = 100 * cell.pivot(index="row", columns="value", values="accuracy").reindex(
        index=rows, columns=values
    )
    n = d.drop_duplicates("value").set_index("value")["n"].reindex(values)
    grid.columns = [f"{v}\n(n={k})" for v, k in zip(values, n, strict=True)]
    fig, ax = plt.subplots(
        figsize=(min(style.FIGURE_WIDTH, 3.5 + 0.9 * len(values)), 1.2 + 0.28 * len(grid)),
        layout="constrained",
    )
    sns.heatmap(
        grid,
        annot=True,
        fmt=".0f",
        cmap="viridis",
        vmin=0,
        vmax=100,
        ax=ax,
        cbar_kws={"label": f"{metric} accuracy (%)"},
        annot_kws={"fontsize": "small"},
    )
    ax.tick_params(axis="x", labelrotation=0, labelsize="small")
    ax.set_title(f"{benchmark} by {category}", fontsize="medium")
    ax.set_xlabel(category)
    ax.set_ylabel("")
    return fig


def metric_spread(table: pd.DataFrame, benchmark: str, metrics: Sequence[str], labels: Sequence[str]) -> Any:
    """One row per (model, arm): its accuracy (percent, mean over seeds) on ``benchmark`` under each
    metric, one marker per metric on a grey line from the lowest to the highest."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    d = table[table["benchmark"] == benchmark]
    order = {x: i for i, x in enumerate(labels)}
    pairs = (
        d[["model", "label"]]
        .drop_duplicates()
        .sort_values(
            ["model", "label"], key=lambda c: c.map(order) if c.name == "label" else c, kind="stable"
        )
    )
    pairs = list(pairs.itertuples(index=False, name=None))
    fig, ax = plt.subplots(figsize=(style.FIGURE_WIDTH, 0.8 + 0.28 * len(pairs)), layout="constrained")
    for y, (model, label) in enumerate(pairs):
        row = d[(d["model"] == model) & (d["label"] == label)].set_index("metric")["mean"]
        vals = [100 * row.get(m, np.nan) for m in metrics]
        ax.plot([np.nanmin(vals), np.nanmax(vals)], [y, y], color="0.7", linewidth=2, zorder=1)
        colour = style.arm_style(label)["color"]
        for i, (m, v) in enumerate(zip(metrics, vals, strict=True)):
            # a small vertical offset per metric, so that equal accuracies stay visible
            dy = 0.12 * (i - (len(metrics) - 1) / 2)
            ax.scatter(
                [v], [y + dy], marker=METRIC_MARKERS.get(m, "x"), color=colour, s=30, zorder=2, label=m
            )
    ax.set_yticks(range(len(pairs)), [f"{m} / {lab}" for m, lab in pairs], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(f"{benchmark} accuracy (%)")
    handles = [
        Line2D([], [], marker=METRIC_MARKERS.get(m, "x"), color="black", linestyle="none", label=m)
        for m in metrics
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig
