"""Statistics over seeds: each arm's mean with its bootstrap interval (:func:`seed_interval`, scipy's bootstrap,
percentile method), the main accuracy table recomputed from the per-problem records (:func:`accuracy_table`),
and the paper's published numbers beside ours (:func:`with_published`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from importlib import resources

import numpy as np
import pandas as pd

from pspo_repro.analysis.results import KEYS, START, order_metrics

CONFIDENCE = 0.95
N_RESAMPLES = 9999


def seed_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and a ``confidence`` bootstrap interval of the mean over seeds (scipy.stats.bootstrap,
    percentile method, fixed generator). With one value there is no interval (nan, nan); with values all
    equal every resample has the same mean, so the interval is that value."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    if np.all(x == x[0]):
        return mean, mean, mean
    from scipy import stats

    res = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=N_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def over_seeds(frame: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """Mean of ``value`` over seeds with its 95% bootstrap interval (:func:`seed_interval`), per group
    ``by``; a run with several rows in a group (e.g. several steps) counts once, by its mean. Columns:
    ``by``, seeds, mean, ci_low, ci_high."""
    cols = [*by, "seeds", "mean", "ci_low", "ci_high"]
    data = frame.dropna(subset=[value])
    if data.empty:
        return pd.DataFrame(columns=cols)
    per_run = data.groupby([*by, "seed"], sort=False, dropna=False)[value].mean().reset_index()
    rows = []
    for key, g in per_run.groupby(list(by), sort=False, dropna=False):
        mean, low, high = seed_interval(g[value].tolist())
        rows.append([*(key if isinstance(key, tuple) else (key,)), len(g), mean, low, high])
    return pd.DataFrame(rows, columns=cols)


def per_seed_accuracy(records: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Accuracy of each run (or start) on each benchmark under each metric, from per-problem records:
    coordinates, benchmark, metric, accuracy, n."""
    if records.empty:
        return pd.DataFrame(
            columns=["model", "label", "objective", "seed", "benchmark", "metric", "accuracy", "n"]
        )
    keys = [*KEYS, "benchmark"]
    grouped = records.groupby(keys, dropna=False, sort=False)
    wide = grouped[list(metrics)].mean().reset_index()
    wide["n"] = grouped.size().to_numpy()
    return wide.melt(id_vars=[*keys, "n"], value_vars=list(metrics), var_name="metric", value_name="accuracy")


def accuracy_table(records: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The main table: per (model, arm, benchmark, metric), the mean accuracy over seeds with a 95%
    bootstrap interval (see :func:`seed_interval`), from the per-problem records. Columns: model, label,
    benchmark, metric, seeds, n (problems per run), mean, ci_low, ci_high."""
    per_seed = per_seed_accuracy(records, metrics)
    rows = []
    for (model, label, bench, metric), g in per_seed.groupby(
        ["model", "label", "benchmark", "metric"], sort=False
    ):
        mean, low, high = seed_interval(g["accuracy"].tolist())
        rows.append(
            {
                "model": model,
                "label": label,
                "benchmark": bench,
                "metric": metric,
                "seeds": 0 if label == START else len(g),
                "n": int(g["n"].iloc[0]),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    cols = ["model", "label", "benchmark", "metric", "seeds", "n", "mean", "ci_low", "ci_high"]
    out = pd.DataFrame(rows, columns=cols)
    # rows in the records' order of models, arms and benchmarks, metrics in their canonical order
    rank = {
        c: {v: i for i, v in enumerate(dict.fromkeys(records[c]))} for c in ("model", "label", "benchmark")
    }
    rank["metric"] = {m: i for i, m in enumerate(order_metrics(metrics))}
    return out.sort_values(list(rank), key=lambda col: col.map(rank[col.name]), kind="stable").reset_index(
        drop=True
    )


def format_interval(mean: float, low: float, high: float, seeds: int, scale: float = 100.0) -> str:
    """``71.2 [70.1, 72.3]``; one seed says so (no interval); the starting model has no seeds."""
    if pd.isna(mean):
        return "-"
    text = f"{scale * mean:.1f}"
    if seeds == 0:
        return text
    if seeds == 1 or pd.isna(low):
        return f"{text} (1 seed)"
    return f"{text} [{scale * low:.1f}, {scale * high:.1f}]"


def published() -> pd.DataFrame:
    """The paper's reported accuracies (``pspo_repro/published.csv``): version, model, label, benchmark,
    temperature, accuracy (percent), paper_method. Cells absent here are not reported by the paper."""
    with resources.files("pspo_repro").joinpath("published.csv").open() as f:
        return pd.read_csv(f, comment="#")


def with_published(table: pd.DataFrame, metric: str, models: Iterable[str] | None = None) -> pd.DataFrame:
    """Our accuracy under ``metric`` (percent: mean over seeds and interval) beside the published one, for
    every (model, arm, benchmark) of ``table`` (from :func:`accuracy_table`) whose model is in ``models``
    (default: every model), and every published cell besides: ``published`` is the paper's number or "not
    reported", ``ours`` is "not run" for a published cell without runs, ``difference`` is ours minus
    theirs where both exist."""
    ours = table[table["metric"] == metric]
    if models is not None:
        ours = ours[ours["model"].isin(set(models))]
    pub = published()
    pub_key = {(r.model, r.label, r.benchmark): r for r in pub.itertuples(index=False)}
    rows, seen = [], set()
    for r in ours.itertuples(index=False):
        key = (r.model, r.label, r.benchmark)
        seen.add(key)
        p = pub_key.get(key)
        rows.append(
            {
                "model": r.model,
                "label": r.label,
                "benchmark": r.benchmark,
                "ours": format_interval(r.mean, r.ci_low, r.ci_high, r.seeds),
                "published": "not reported" if p is None else f"{p.accuracy:.1f} ({p.version})",
                "difference": "" if p is None or pd.isna(r.mean) else f"{100 * r.mean - p.accuracy:+.1f}",
            }
        )
    for key, p in pub_key.items():
        if key not in seen:
            rows.append(
                {
                    "model": p.model,
                    "label": p.label,
                    "benchmark": p.benchmark,
                    "ours": "not run",
                    "published": f"{p.accuracy:.1f} ({p.version})",
                    "difference": "",
                }
            )
    frame = pd.DataFrame(rows, columns=["model", "label", "benchmark", "ours", "published", "difference"])
    return frame.assign(metric=metric)


def headline_metric(metrics: Sequence[str]) -> str:
    """The metric figures show when they show one: strict (the answer in the required format) if recorded."""
    return "strict" if "strict" in metrics else order_metrics(metrics)[0]


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`accuracy_table` for reading: one row per (model, arm), one column per (benchmark, metric),
    cells in percent as ``mean [low, high]`` (see :func:`format_interval`)."""
    cells = table.assign(
        cell=[
            format_interval(m, lo, hi, s)
            for m, lo, hi, s in zip(
                table["mean"], table["ci_low"], table["ci_high"], table["seeds"], strict=True
            )
        ],
        column=table["benchmark"].astype(str) + " " + table["metric"].astype(str),
    )
    rows = cells.drop_duplicates(["model", "label"])[["model", "label", "seeds"]]
    grid = cells.pivot(index=["model", "label"], columns="column", values="cell")
    columns = list(dict.fromkeys(cells["column"]))  # the table's order: benchmarks, then metrics
    return rows.join(grid[columns], on=["model", "label"]).reset_index(drop=True)


def transfer_gains(categories: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Gain over the starting model on problems that use a transfer template (``tagged``: the kind of step
    the warm-start teachers get wrong and RL corrects in-family) and on those that do not (``untagged``), per
    (model, arm, benchmark): mean over seeds and its standard error (sd / sqrt(seeds)), in accuracy units.
    A tagged gain out of distribution that exceeds the untagged one is the learned correction transferring.

    ``categories`` is :meth:`pspo_repro.analysis.results.Study.categories`; only its ``transfer`` rows are used
    (the synthetic benchmarks record how many transfer steps each problem has)."""
    columns = ["model", "label", "benchmark", "group", "seeds", "start", "gain", "gain_se", "n"]
    rows = categories[(categories["category"] == "transfer") & (categories["metric"] == metric)].copy()
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows["group"] = np.where(rows["value"].astype(str) == "0", "untagged", "tagged")
    rows["correct"] = rows["accuracy"] * rows["n"]
    keys = ["model", "label", "seed", "benchmark", "group"]
    pooled = rows.groupby(keys, dropna=False, sort=False)[["correct", "n"]].sum().reset_index()
    pooled["accuracy"] = pooled["correct"] / pooled["n"]
    start = pooled[pooled["label"] == START].set_index(["model", "benchmark", "group"])["accuracy"]
    out = []
    trained = pooled[pooled["label"] != START]
    for (model, label, bench, group), cell in trained.groupby(
        ["model", "label", "benchmark", "group"], sort=False
    ):
        if (model, bench, group) not in start.index:
            continue
        base = float(start.loc[(model, bench, group)])
        gains = cell["accuracy"].to_numpy() - base
        se = float(np.std(gains, ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else float("nan")
        out.append(
            [model, label, bench, group, len(gains), base, float(gains.mean()), se, int(cell["n"].iloc[0])]
        )
    return pd.DataFrame(out, columns=columns)
