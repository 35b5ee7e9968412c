"""Run folders written by hand, as a finished and evaluated run leaves them, for the analyses' tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_run(
    study: Path,
    model: str,
    label: str,
    seed: int,
    correct: np.ndarray,
    zero: float = 0.0,
    validation: tuple[float, ...] = (0.4, 0.5),
) -> Path:
    """A run folder: settings, DONE, per-problem grades of the greedy completion, summary, probes, validation."""
    folder = study / model / label / f"seed{seed}"
    (folder / "eval").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "seed": seed, "label": label}))
    (folder / "DONE").write_text("{}")
    grades = [dict.fromkeys(("strict", "flexible", "permissive", "paper"), bool(c)) for c in correct]
    records = [{"id": f"p{i:04d}", "grades": [g]} for i, g in enumerate(grades)]
    (folder / "eval" / "synthetic.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = {"benchmarks": {"synthetic": {"metrics": {"strict": {"accuracy": float(np.mean(correct))}}}}}
    (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    probes = [{"step": s, "staleness": s % 4, "zero_weight_frac": zero} for s in range(0, 20, 5)]
    (folder / "probes.jsonl").write_text("\n".join(json.dumps(p) for p in probes) + "\n")
    history = [{"step": 10 * i, "strict": v} for i, v in enumerate(validation)]
    (folder / "validation.jsonl").write_text("\n".join(json.dumps(h) for h in history) + "\n")
    return folder


def write_start(study: Path, model: str, accuracy: float, n: int = 400) -> None:
    """A model's starting evaluation beside its runs: the first ``round(accuracy * n)`` of ``n`` problems right."""
    start = study / model / "start" / "eval"
    start.mkdir(parents=True)
    right = round(accuracy * n)
    grades = [dict.fromkeys(("strict", "flexible", "permissive", "paper"), i < right) for i in range(n)]
    records = [{"id": f"p{i:04d}", "grades": [g]} for i, g in enumerate(grades)]
    (start / "synthetic.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = {"benchmarks": {"synthetic": {"metrics": {"strict": {"accuracy": right / n}}}}}
    (start / "summary.json").write_text(json.dumps(summary))


def correct(rate: float, seed: int, n: int = 400) -> np.ndarray:
    """A 0/1 vector over n problems, right at about ``rate``."""
    return np.random.default_rng(seed).random(n) < rate
