"""Worst-case timings that the tests check only for correctness, each against a baseline in this process.

- Grading hostile texts (the ``ADVERSARIAL`` inputs of tests/test_grading.py), each graded with ``score``
  for both kinds and two golds plus ``paper_reward``, as the test does; baseline: an ordinary completion
  graded the same way.
- math-verify from two worker threads (where signal timeouts are off and the trace deadline bounds it);
  baseline: the same cases on the main thread. Caches are cleared before each run.
- The worker-thread deadline: how long after its budget it stops a loop that never ends; baseline: the
  budget itself.
- Generating the synthetic RL-prompt split; baseline: hashing its questions once (the split rule's primitive).
- ``tiny.ensure`` of an already built model; baseline: ``tiny.fingerprint``, which it must compute anyway
  (a ratio near 1 means nothing is rebuilt). Uses the first tiny model already in the cache, if any.

Usage: .venv/bin/python benchmarks/bench_worst_cases.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pspo_repro.data import synthetic  # noqa: E402
from pspo_repro.evaluation import grading, verify_guard  # noqa: E402
from pspo_repro.models import tiny  # noqa: E402
from tests.test_grading import ADVERSARIAL  # noqa: E402

ORDINARY = "She has 3 apples and buys 2 more: 3 + 2 = 5.\n#### 5"
LATEX_CASES = [
    (r"\boxed{\frac{\sqrt{8}}{4}}", r"\frac{\sqrt{2}}{2}"),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{2}}{2}"),
    (r"\boxed{2^{2^{2^{100}}}}", "5"),
    (r"\boxed{\sum_{k=1}^{10^{8}} \sin(k)}", "5"),
]


def clear_caches() -> None:
    grading._latex_equal.cache_clear()
    verify_guard.mv_parse.cache_clear()


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` cold runs (grading caches cleared before each)."""
    best = float("inf")
    for _ in range(repeats):
        clear_caches()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def grade_all(text: str) -> None:
    for kind in grading.KINDS:
        for gold in ("5", r"\frac{14}{3}"):
            grading.score(text, gold, kind)
            grading.paper_reward(text, gold, kind)


def bench_adversarial(repeats: int) -> None:
    baseline = best_time(lambda: grade_all(ORDINARY), repeats)
    print(
        f"\nHostile texts, graded 4 ways (best of {repeats}); baseline: an ordinary completion {baseline:.4f} s"
    )
    print(f"{'input':>5} {'length':>9} {'seconds':>9} {'x baseline':>11}")
    worst = 0.0
    for i, text in enumerate(ADVERSARIAL):
        seconds = best_time(lambda text=text: grade_all(text), repeats)
        worst = max(worst, seconds)
        print(f"{i:>5} {len(text):>9,} {seconds:>9.3f} {seconds / baseline:>11.0f}")
    print(f"worst: {worst:.2f} s, {worst / baseline:.0f}x the ordinary completion")


def bench_threads(repeats: int) -> None:
    def main_thread() -> None:
        for completion, gold in LATEX_CASES:
            grading.score(completion, gold, "latex")

    def workers() -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda case: grading.score(case[0], case[1], "latex"), LATEX_CASES))

    t_main = best_time(main_thread, repeats)
    t_workers = best_time(workers, repeats)
    print(f"\nmath-verify on {len(LATEX_CASES)} LaTeX cases (best of {repeats})")
    print(
        f"main thread (signal timeouts) {t_main:.2f} s; two worker threads (trace deadline) {t_workers:.2f} s"
    )
    print(f"ratio workers/main thread: {t_workers / t_main:.2f}x")


def bench_deadline(repeats: int, budget: float = 0.2) -> None:
    stops: list[float] = []

    def step(i: int) -> int:  # the deadline is checked on Python calls, as in sympy's code
        return i + 1

    def spin() -> None:
        start = time.perf_counter()
        try:
            with verify_guard.deadline(budget):
                i = 0
                while time.perf_counter() - start < 20:
                    i = step(i)
        except verify_guard.DeadlineExceeded:
            stops.append(time.perf_counter() - start)

    for _ in range(repeats):
        worker = threading.Thread(target=spin, daemon=True)
        worker.start()
        worker.join(timeout=30)
    if len(stops) < repeats:
        print(f"\ndeadline: stopped {len(stops)} of {repeats} loops (a tracer may be active)")
        return
    print(f"\nWorker-thread deadline of {budget} s on an endless loop ({repeats} runs)")
    print(
        f"stopped after {min(stops):.3f} to {max(stops):.3f} s: {max(stops) / budget:.2f}x the budget at worst"
    )


def bench_synthetic(repeats: int) -> None:
    best, problems = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        problems = synthetic.generate("train", seed=11)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    for p in problems:
        hashlib.sha256(p.question.encode()).digest()
    hashing = time.perf_counter() - start
    print(f"\nSynthetic RL-prompt split, {len(problems):,} problems (best of {repeats})")
    print(f"generation {best:.3f} s; baseline (hash every question once) {hashing:.4f} s")
    print(f"ratio generation/hashing: {best / hashing:.0f}x")


def bench_ensure(repeats: int) -> None:
    built = [name for name in tiny.names() if tiny.is_built(name)]
    if not built:
        print(f"\ntiny.ensure: no tiny model built in {tiny.cache_root()}; skipped")
        return
    name = built[0]
    t_ensure = best_time(lambda: tiny.ensure(name, progress=False), repeats)
    t_fingerprint = best_time(lambda: tiny.fingerprint(name), repeats)
    print(f"\ntiny.ensure({name!r}) of a built model (best of {repeats})")
    print(f"ensure {t_ensure:.4f} s; baseline (fingerprint) {t_fingerprint:.4f} s")
    print(f"ratio ensure/fingerprint: {t_ensure / t_fingerprint:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best is shown")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    grading._math_verify()  # import sympy and math-verify before timing
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    bench_adversarial(args.repeats)
    bench_threads(args.repeats)
    bench_deadline(args.repeats)
    bench_synthetic(args.repeats)
    bench_ensure(args.repeats)


if __name__ == "__main__":
    main()
