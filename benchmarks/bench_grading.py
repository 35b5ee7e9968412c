"""Grading throughput: completions graded per second, numeric path and math-verify path.

Numeric path: GSM8K test reference solutions plus perturbed variants of each (wrong final answer, no
``####`` line, answer restated in prose with ``$`` and thousands separators, answer glued to ``####``),
graded with ``score`` (all four metrics) and with ``paper_reward``. Baseline, timed in the same process
on the same texts: a naive plain-regex last-number extractor with a float comparison (one metric, no
tolerance handling, no ``####`` rule), the extractor a quick script would use.

LaTeX path: MATH-500 solutions against their gold answers (decided by the fast path: the boxed answer
and the gold are the same string after normalisation), the same solutions against the NEXT problem's
gold (wrong answers: every metric reaches math-verify), and math-verify alone on the boxed answer against
the gold with the fast path skipped. Baseline, same process: math-verify used the plain way,
``verify(parse(gold), parse(completion))`` on the whole solution. Caches are cleared before every timed
run, so every number is a cold pass.

Usage: .venv/bin/python benchmarks/bench_grading.py [--data-dir DIR] [--repeats 3] [--latex-limit 500]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pspo_repro.data import loaders  # noqa: E402
from pspo_repro.evaluation import grading, verify_guard  # noqa: E402
from pspo_repro.training.rewards import paper_reward_value  # noqa: E402

_NAIVE_NUMBER = re.compile(r"-?\d+\.?\d*")


def naive_last_number_correct(completion: str, gold: str) -> bool:
    """The baseline: strip commas, take the last regex number, compare floats exactly."""
    numbers = _NAIVE_NUMBER.findall(completion.replace(",", ""))
    if not numbers:
        return False
    try:
        return float(numbers[-1]) == float(gold)
    except ValueError:
        return False


def gsm8k_completions(problems: Sequence[loaders.Problem]) -> list[tuple[str, str]]:
    """(completion, gold) pairs: each reference solution and four perturbed variants of it."""
    pairs = []
    for p in problems:
        solution, gold = p.solution or "", p.answer
        body = solution.rsplit("####", 1)[0].rstrip()
        try:
            wrong = str(int(float(gold)) + 1)
        except ValueError:
            wrong = gold + "1"
        pairs += [
            (solution, gold),
            (f"{body}\n#### {wrong}", gold),
            (body, gold),
            (f"{body}\nSo the answer is ${int(float(gold)):,} in total.", gold),
            (f"{body}\n####{gold}\nThat is all, from {wrong} options.", gold),
        ]
    return pairs


def clear_caches() -> None:
    grading._latex_equal.cache_clear()
    verify_guard.mv_parse.cache_clear()


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` cold runs (caches cleared before each), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        clear_caches()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def row(name: str, n: int, seconds: float, note: str = "") -> tuple[str, int, float, float, str]:
    return name, n, seconds, n / seconds if seconds > 0 else float("inf"), note


def print_table(title: str, rows: list[tuple[str, int, float, float, str]]) -> None:
    print(f"\n{title}")
    print(f"{'path':<44} {'n':>6} {'seconds':>9} {'per second':>11}  note")
    for name, n, seconds, rate, note in rows:
        print(f"{name:<44} {n:>6} {seconds:>9.3f} {rate:>11,.0f}  {note}")


def bench_numeric(data_dir: Path | None, repeats: int) -> None:
    problems = loaders.load("gsm8k", "test", data_dir=data_dir)
    pairs = gsm8k_completions(problems)
    n = len(pairs)
    t_score, grades = timed(lambda: [grading.score(c, g) for c, g in pairs], repeats)
    t_reward, rewards = timed(lambda: [paper_reward_value(c, g) for c, g in pairs], repeats)
    t_naive, naive = timed(lambda: [naive_last_number_correct(c, g) for c, g in pairs], repeats)
    acc = {m: sum(getattr(gr, m) for gr in grades) / n for m in grading.METRICS}
    note = ", ".join(f"{m} {v:.3f}" for m, v in acc.items())
    print_table(
        f"Numeric path: {len(problems)} GSM8K test solutions x 5 variants (best of {repeats})",
        [
            row("score (strict, flexible, permissive, paper)", n, t_score, note),
            row("paper_reward", n, t_reward, f"mean reward {sum(rewards) / n:.3f}"),
            row("baseline: naive regex last number", n, t_naive, f"accuracy {sum(naive) / n:.3f}"),
        ],
    )
    print(
        f"ratio score/baseline time: {t_score / t_naive:.1f}x slower "
        f"({n / t_score:,.0f} vs {n / t_naive:,.0f} completions/s); "
        f"paper_reward/baseline: {t_reward / t_naive:.1f}x"
    )


def bench_latex(data_dir: Path | None, repeats: int, limit: int) -> None:
    from math_verify import parse, verify

    problems = loaders.load("math500", "test", data_dir=data_dir)[:limit]
    n = len(problems)
    right = [(p.solution or "", p.answer) for p in problems]
    wrong = [(a.solution or "", b.answer) for a, b in zip(problems, problems[1:] + problems[:1], strict=True)]
    boxed = [(grading.extract_boxed(c) or "", g) for c, g in right]

    t_right, g_right = timed(lambda: [grading.score(c, g, "latex") for c, g in right], repeats)
    t_wrong, g_wrong = timed(lambda: [grading.score(c, g, "latex") for c, g in wrong], repeats)
    t_mv, mv = timed(lambda: [verify_guard.equivalent(b, g) for b, g in boxed], repeats)
    t_plain, plain = timed(lambda: [verify(parse(g), parse(c)) for c, g in right], 1)

    def summary(grades: list[grading.Grade]) -> str:
        return ", ".join(f"{m} {sum(getattr(gr, m) for gr in grades)}/{n}" for m in grading.METRICS)

    print_table(
        f"LaTeX path: {n} MATH-500 solutions (best of {repeats}; plain math-verify: 1 run)",
        [
            row("score, own gold (fast path)", n, t_right, summary(g_right)),
            row("score, next problem's gold (math-verify)", n, t_wrong, summary(g_wrong)),
            row("math-verify only: boxed vs gold", n, t_mv, f"equivalent {sum(mv)}/{n}"),
            row("baseline: verify(parse(gold), parse(text))", n, t_plain, f"correct {sum(plain)}/{n}"),
        ],
    )
    print(
        f"ratio plain math-verify/score time: own gold {t_plain / t_right:.1f}x; "
        f"next problem's gold: {t_plain / t_wrong:.2f}x"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="benchmark data folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best is shown")
    parser.add_argument("--latex-limit", type=int, default=500, help="MATH-500 problems to grade")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.latex_limit < 1:
        raise SystemExit("--repeats and --latex-limit must be at least 1")
    data_dir = args.data_dir
    if data_dir is None and not os.environ.get(loaders.DATA_DIR_ENV):
        data_dir = REPO.parent / "shared" / "data"
    verify_guard._math_verify()  # import sympy and math-verify before timing
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, main thread (math-verify signal timeouts on)"
    )
    bench_numeric(data_dir, args.repeats)
    bench_latex(data_dir, args.repeats, args.latex_limit)


if __name__ == "__main__":
    main()
