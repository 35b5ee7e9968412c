"""Cost of the analysis steps that every process of a study repeats, old way against new, in one process.

1. The bootstrap's problem counts: ``multinomial(n, uniform, size=R)`` (the old draw) against counting
   ``R x n`` uniform indices with ``bincount`` (the new one: the same distribution).
2. A tiny model's warm-start data digest in a fresh process: generating and hashing the data (the old way,
   every process) against reading the digest kept on disk (the new way, after the first process).
3. Reading one evaluation records file into an arm's grades: parsing it (the old way, every reader) against
   the per-process cache (the new way, every reader after the first), on a records file written here.

Printed: seconds of each (median over rounds) and the ratio old / new.

    .venv/bin/python benchmarks/bench_analysis.py [--rounds 5] [--problems 1024] [--replicates 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _report(name: str, old: float, new: float) -> None:
    print(f"{name:<46} old {old:9.4f} s   new {new:9.4f} s   old / new {old / new:8.1f}x")


def bench_bootstrap(problems: int, replicates: int, rounds: int) -> None:
    rng = np.random.default_rng(0)

    def old() -> np.ndarray:
        return rng.multinomial(problems, np.full(problems, 1.0 / problems), size=replicates)

    def new() -> np.ndarray:
        draws = rng.integers(0, problems, size=(replicates, problems))
        draws += problems * np.arange(replicates)[:, None]
        return np.bincount(draws.ravel(), minlength=replicates * problems).reshape(replicates, problems)

    # the same distribution: each problem drawn once per replicate on average, with binomial spread
    for counts in (old(), new()):
        assert counts.sum(axis=1).tolist() == [problems] * replicates
    _report(
        f"bootstrap counts ({replicates} x {problems})", *(_median_seconds(f, rounds) for f in (old, new))
    )


def bench_digest(rounds: int) -> None:
    from pspo_repro.data import synthetic
    from pspo_repro.models import tiny

    recipe = tiny.recipe_of("tiny-general-s")
    args = (
        recipe.data_seed,
        recipe.train_size,
        tuple(sorted(recipe.teacher_errors.items())),
        recipe.corpus_size,
        recipe.ood_size,
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PSPO_CACHE_DIR"] = cache
        kept = Path(cache) / "tiny" / ".data-digests"

        def old() -> str:  # a fresh process without the kept file: nothing generated yet
            tiny._training_data_digest.cache_clear()
            synthetic._generate.cache_clear()
            for path in kept.glob("*"):
                path.unlink()
            return tiny._training_data_digest(*args)

        def new() -> str:  # a fresh process that finds the kept file
            tiny._training_data_digest.cache_clear()
            return tiny._training_data_digest(*args)

        first = old()
        assert new() == first
        seconds_old = _median_seconds(old, max(1, rounds // 2))
        seconds_new = _median_seconds(new, rounds)
    tiny._training_data_digest.cache_clear()
    _report("warm-start data digest (tiny-general-s)", seconds_old, seconds_new)


def bench_records(problems: int, rounds: int) -> None:
    from pspo_repro.analysis import inference

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic.jsonl"
        rng = np.random.default_rng(0)
        grades = ("strict", "flexible", "permissive", "paper")
        with path.open("w") as out:
            for i in range(problems):  # a record as the evaluation writes it, prompt and completion included
                right = bool(rng.random() < 0.5)
                record = {
                    "id": f"test-{i:05d}",
                    "benchmark": "synthetic",
                    "prompt": "<|user|>" + "Zoe starts with 32 apples. She gives 1 apples to Owen. " * 2,
                    "completions": ["32 - 1 = 31\n31 - 9 = 22\n#### 22"],
                    "grades": [dict.fromkeys(grades, right)],
                }
                out.write(json.dumps(record) + "\n")

        def old() -> object:
            inference._graded.cache_clear()
            return inference.graded(path)

        def new() -> object:
            return inference.graded(path)

        new()
        _report(
            f"records file into grades ({problems} problems)",
            *(_median_seconds(f, rounds) for f in (old, new)),
        )
        inference._graded.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--problems", type=int, default=1024)
    parser.add_argument("--replicates", type=int, default=2000)
    args = parser.parse_args()
    if args.rounds < 1 or args.problems < 1 or args.replicates < 2:
        parser.error(
            f"--rounds and --problems must be >= 1 and --replicates >= 2, got {args.rounds}, {args.problems}, "
            f"{args.replicates}"
        )
    bench_bootstrap(args.problems, args.replicates, args.rounds)
    bench_records(args.problems, args.rounds)
    bench_digest(args.rounds)


if __name__ == "__main__":
    main()
