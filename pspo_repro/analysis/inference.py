"""Inference for comparisons between arms: is one objective's accuracy different from another's, by how much,
and, where no difference is found, how large a difference the design could have missed.

An arm's runs are nested: build (an independent warm start of the tiny model) -> seed -> a 0/1 correctness
vector over one fixed test set. :func:`bootstrap_difference` is a hierarchical bootstrap with one level for
each source of variation a claim must survive:

* builds are resampled with replacement from the builds both arms share, and the same draw serves both arms:
  a build is a random factor (another warm start could behave otherwise), and the arms are paired on it;
* within each drawn build, each arm's seeds are resampled independently: seeds are not paired across arms,
  and each arm's own seed spread enters the interval;
* problems are resampled once per replicate and the same problems serve every run of both arms: the test
  set is a sample of the task, and pairing on it removes the between-problem difficulty both arms share.

From the bootstrap distribution come a 95% percentile interval, a two-sided p-value (the distribution centred
on the observed effect), and the smallest detectable difference; :func:`compare_family` adjusts the p-values
of a family of comparisons by Holm's step-down method (:func:`holm`), with enough replicates for the family's
size (:func:`replicates_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np

from pspo_repro.study import rundir

ALPHA = 0.05
POWER = 0.8
METRICS = ("strict", "flexible", "permissive", "paper")
NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True, eq=False)
class Arm:
    """One arm's runs: (build, seed) -> correctness over the problems, in an order shared by every run.
    ``problem_ids`` (optional) names that order, so arms from different sources can be checked to align."""

    name: str
    runs: dict[tuple[int, int], np.ndarray]
    problem_ids: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError(f"arm {self.name!r}: no runs; an arm needs at least one (build, seed) vector")
        runs = {}
        for key, vector in self.runs.items():
            x = np.asarray(vector, dtype=float)
            if x.ndim != 1 or x.size == 0 or not np.isin(x, (0.0, 1.0)).all():
                raise ValueError(
                    f"arm {self.name!r}, run {key}: correctness must be a non-empty 1-D vector of 0/1 or "
                    f"booleans, got shape {x.shape}"
                )
            x.flags.writeable = False
            runs[(int(key[0]), int(key[1]))] = x
        lengths = {key: x.size for key, x in runs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"arm {self.name!r}: runs cover different numbers of problems {lengths}; all equal"
            )
        object.__setattr__(self, "runs", runs)
        if self.problem_ids is not None and len(self.problem_ids) != self.n_problems:
            raise ValueError(
                f"arm {self.name!r}: {len(self.problem_ids)} problem ids for vectors of length "
                f"{self.n_problems}; they must be equal"
            )

    @property
    def n_problems(self) -> int:
        return next(iter(self.runs.values())).size

    @property
    def builds(self) -> tuple[int, ...]:
        return tuple(sorted({build for build, _ in self.runs}))

    def matrix(self, builds: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
        """The vectors of ``builds``' runs as rows (sorted by build, seed), and each build's row count."""
        keys = sorted(key for key in self.runs if key[0] in builds)
        return np.stack([self.runs[key] for key in keys]), [sum(k[0] == b for k in keys) for b in builds]


def _shared_builds(a: Arm, b: Arm) -> tuple[int, ...]:
    """The builds both arms have; the problems must also agree (runs outside shared builds are not used)."""
    na, nb = a.n_problems, b.n_problems
    if na != nb:
        raise ValueError(f"arms {a.name!r} and {b.name!r} cover {na} and {nb} problems; they must be equal")
    if a.problem_ids is not None and b.problem_ids is not None and a.problem_ids != b.problem_ids:
        raise ValueError(f"arms {a.name!r} and {b.name!r} list different problem ids; they must be the same")
    shared = tuple(sorted(set(a.builds) & set(b.builds)))
    if not shared:
        raise ValueError(
            f"arms {a.name!r} (builds {list(a.builds)}) and {b.name!r} (builds {list(b.builds)}) share no "
            "build; a comparison is paired on builds, so they need at least one in common"
        )
    return shared


def bootstrap_difference(a: Arm, b: Arm, *, replicates: int = 2000, seed: int = 0) -> np.ndarray:
    """``replicates`` draws of mean accuracy(a) - mean accuracy(b), in points, from the hierarchical
    bootstrap of the module docstring. Counts stand in for index draws: a replicate's problems are a
    multinomial count vector, so each run's resampled accuracy is one dot product; its seeds are multinomial
    counts per build (drawing m copies of a build with s seeds pools into one draw of m * s). A build with one
    seed on one side always redraws that seed: no seed spread is seen there, which the interval cannot show."""
    builds = _shared_builds(a, b)
    if replicates < 2:
        raise ValueError(f"replicates must be at least 2, got {replicates}")
    rng = np.random.default_rng(seed)
    n = a.n_problems
    # (R, n): how often each problem is drawn; counting n uniform draws is a multinomial, many times faster
    draws = rng.integers(0, n, size=(replicates, n)) + n * np.arange(replicates)[:, None]
    problems = np.bincount(draws.ravel(), minlength=replicates * n).reshape(replicates, n).astype(float)
    build_counts = rng.multinomial(len(builds), np.full(len(builds), 1.0 / len(builds)), size=replicates)

    def accuracy(arm: Arm) -> np.ndarray:
        x, seeds_per_build = arm.matrix(builds)
        correct = problems @ x.T  # (R, runs): each run's correct answers on the replicate's problems
        weights = np.concatenate(
            [
                rng.multinomial(build_counts[:, i] * s, np.full(s, 1.0 / s))
                for i, s in enumerate(seeds_per_build)
            ],
            axis=1,
        )
        return (weights * correct).sum(axis=1) / (weights.sum(axis=1) * n)

    return 100.0 * (accuracy(a) - accuracy(b))


@dataclass(frozen=True)
class Comparison:
    """The comparison of arm ``a`` with arm ``b``; effect, interval, se, mdd and spreads are in points."""

    a: str
    b: str
    effect: float
    ci_low: float
    ci_high: float
    se: float
    p: float
    p_adjusted: float
    mdd: float
    n_a: int
    n_b: int
    builds: tuple[int, ...]
    sd_a: float
    sd_b: float

    @property
    def verdict(self) -> str:
        if self.p_adjusted < ALPHA:
            return "a > b" if self.effect > 0 else "a < b"
        return NO_DIFFERENCE

    def describe(self) -> str:
        """One line: the effect with its interval and adjusted p; an inconclusive one states the MDD."""
        p = "< 0.001" if self.p_adjusted < 0.001 else f"{self.p_adjusted:.3f}"
        text = (
            f"{self.a} vs {self.b}: {self.effect:+.1f} points [95% CI {self.ci_low:+.1f}, {self.ci_high:+.1f}], "
            f"p_holm {p}"
        )
        if self.verdict == NO_DIFFERENCE:
            return f"{text}: {NO_DIFFERENCE}; none larger than {self.mdd:.1f} points would likely have been missed"
        return f"{text}: {self.a} {self.verdict[2]} {self.b}"


def mdd(se: float, family_size: int = 1) -> float:
    """The smallest difference found with 80% power at the family's Bonferroni level, two-sided:
    (z_{1-alpha/(2m)} + z_{0.8}) * se. An approximation: it takes the bootstrap distribution as normal with
    the same se under the alternative (and Holm is at least as powerful as Bonferroni)."""
    z = NormalDist()
    return (z.inv_cdf(1 - ALPHA / (2 * family_size)) + z.inv_cdf(POWER)) * se


def _run_sd(arm: Arm, builds: tuple[int, ...]) -> float:
    """Sd of the per-run accuracies in points (nan for a single run: no spread can be seen)."""
    acc = 100.0 * arm.matrix(builds)[0].mean(axis=1)
    return float(acc.std(ddof=1)) if acc.size > 1 else float("nan")


def compare(a: Arm, b: Arm, *, replicates: int = 2000, seed: int = 0, family_size: int = 1) -> Comparison:
    """Arm ``a`` against arm ``b`` over their shared builds; ``family_size`` sets the MDD's level."""
    builds = _shared_builds(a, b)
    xa, xb = a.matrix(builds)[0], b.matrix(builds)[0]
    effect = 100.0 * float(xa.mean() - xb.mean())
    d = bootstrap_difference(a, b, replicates=replicates, seed=seed)
    p = (np.count_nonzero(np.abs(d - effect) >= abs(effect)) + 1) / (replicates + 1)
    se = float(d.std(ddof=1))
    low, high = np.percentile(d, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Comparison(
        a=a.name, b=b.name, effect=effect, ci_low=float(low), ci_high=float(high), se=se, p=float(p),
        p_adjusted=float(p), mdd=mdd(se, family_size), n_a=len(xa), n_b=len(xb), builds=builds,
        sd_a=_run_sd(a, builds), sd_b=_run_sd(b, builds),
    )  # fmt: skip


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest is multiplied by m - i + 1,
    then made monotone (a running maximum) and capped at 1. Controls the family-wise error at any alpha."""
    p = np.asarray(p_values, dtype=float)
    if p.size and (np.isnan(p).any() or (p < 0).any() or (p > 1).any()):
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted.tolist()


def replicates_for(family_size: int, replicates: int = 2000) -> int:
    """Bootstrap replicates for a family of ``family_size`` comparisons: at least ``replicates``, and enough
    that the smallest Holm-adjusted p the family can reach, ``family_size / (R + 1)``, is a tenth of alpha.
    With a fixed 2,000, a family of 150 comparisons could never show a difference (its floor is 0.075)."""
    if family_size < 1:
        raise ValueError(f"a family has at least one comparison, got {family_size}")
    return max(replicates, math.ceil(10 * family_size / ALPHA) - 1)


def compare_family(
    pairs: list[tuple[Arm, Arm]], *, replicates: int = 2000, seed: int = 0
) -> list[Comparison]:
    """Every pair compared (comparison i draws with ``seed + i``) with at least ``replicates`` replicates,
    more for a large family (:func:`replicates_for`); MDDs at the family's level, p Holm-adjusted."""
    if not pairs:
        return []
    drawn = replicates_for(len(pairs), replicates)
    found = [
        compare(a, b, replicates=drawn, seed=seed + i, family_size=len(pairs))
        for i, (a, b) in enumerate(pairs)
    ]
    adjusted = holm([c.p for c in found])
    return [replace(c, p_adjusted=p) for c, p in zip(found, adjusted, strict=True)]


def _build_of(model: str) -> int:
    """The build in a model name: "tiny-general-l@1" -> 1; no "@": build 0 (as models.tiny.split_build)."""
    _, mark, build = model.partition("@")
    if not mark:
        return 0
    if not build.isdigit():
        raise ValueError(f"model {model!r}: the build after '@' must be a number >= 0, got {build!r}")
    return int(build)


def arm_from_runs(
    run_folders: list[Path], benchmark: str, metric: str = "strict", name: str | None = None
) -> Arm:
    """An arm from run folders: each run's greedy (first) sample graded by ``metric`` on ``benchmark``, records
    sorted by id so every run has the same problem order; build and seed from the run's config.json."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if not run_folders:
        raise ValueError("no run folders; an arm needs at least one")
    runs: dict[tuple[int, int], np.ndarray] = {}
    ids: tuple[str, ...] | None = None
    labels = []
    for folder in map(Path, run_folders):
        config = rundir.read_json(folder / rundir.CONFIG)
        labels.append(config.get("label") or folder.parent.name)
        key = (_build_of(str(config["model"])), int(config["seed"]))
        path = folder / rundir.EVAL / f"{benchmark}.jsonl"
        run_ids, grades = graded(path, metric)
        if not run_ids:
            raise ValueError(f"{path}: no records; evaluate the run on {benchmark!r} first")
        if key in runs:
            raise ValueError(
                f"{folder}: (build, seed) {key} appears twice; each run must be another seed or build"
            )
        if ids is not None and run_ids != ids:
            raise ValueError(
                f"{path}: its problem ids differ from the first run's; all runs need the same test set"
            )
        ids = run_ids
        runs[key] = grades
    return Arm(name or str(labels[0]), runs, problem_ids=ids)


def graded(path: Path, metric: str = "strict") -> tuple[tuple[str, ...], np.ndarray]:
    """An evaluation's records file (``<run>/eval/<benchmark>.jsonl``) as its problem ids, sorted, and the
    greedy (first) sample's grade by ``metric`` on each; empty when the file does not exist."""
    stat = path.stat() if path.is_file() else None
    ids, grades = _graded(str(path), stat and (stat.st_mtime_ns, stat.st_size), metric)
    return ids, grades.copy()


@lru_cache(maxsize=1024)
def _graded(path: str, version: tuple[int, int] | None, metric: str) -> tuple[tuple[str, ...], np.ndarray]:
    """A records file's problem ids (sorted) and their greedy sample's grade; kept per file version
    (modification time and size), since the tables, the headline and the phase diagram read the same files."""
    records = sorted(rundir.read_jsonl(path), key=lambda r: r["id"]) if version is not None else []
    return tuple(str(r["id"]) for r in records), np.array([bool(r["grades"][0][metric]) for r in records])
