"""The exact identities measured on real training batches of the study's own runs (kept beside audit.md
in ``identities.json``): which runs, and how they are retrained to measure them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pspo_repro.analysis import identities
from pspo_repro.analysis.audit.runs import Run, load_runs

IDENTITIES_FILE = "identities.json"
# The runs whose real training batches the identities are measured on (one seed each), when present.
IDENTITY_LABELS = ("pspo", "clip", "pspo-stress", "clip-stress")


def measure_identities(study_dir: Path, work_dir: Path, steps: int | None = None) -> dict[str, Any]:
    """The identities on real training batches of the runs labelled :data:`IDENTITY_LABELS` (lowest seed of
    each model): ``steps`` optimizer steps (default: two reuse cycles, at least 8, at most the run's length)
    of each run's settings, retrained from its starting model with the recording trainer."""
    from pspo_repro.training.settings import TrainSettings

    chosen: dict[tuple[str, str], Run] = {}
    for r in load_runs(study_dir):
        if r.label in IDENTITY_LABELS:
            key = (r.model, r.label)
            if key not in chosen or r.config["seed"] < chosen[key].config["seed"]:
                chosen[key] = r
    out = {}
    for _key, r in sorted(chosen.items()):
        settings = TrainSettings.from_dict(r.config)
        n = steps or min(max(8, 2 * r.cycle if r.cycle < 8 else r.cycle), r.config["max_steps"])
        records = identities.measure(settings, work_dir / r.name.replace("/", "--"), steps=n)
        out[r.name] = {"alpha": settings.alpha, "steps": n, **identities.summarise(records)}
    return out
