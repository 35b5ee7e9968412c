"""SmolLM2-135M-Instruct, greedy, with our evaluator: accuracy under the four metrics, and throughput.

The first 200 problems of GSM8K, SVAMP and ASDiv (128 new tokens, the paper's budget) and the first
100 of MATH-500. MATH-500 is capped at 512 new tokens here instead of the evaluator's 1024: on a CPU a
1024-token budget doubles the cost of every completion that rambles to the limit, and 512 still fits
91% of the MATH-500 reference solutions (SmolLM2 tokenizer: median 173 tokens, 9% above 512); the
fraction of completions cut at the limit is printed, so the cap's effect is visible.

Records and summary go to ``<out>/eval/`` (default ``results/smollm2/``); a rerun resumes or reuses them.

Usage: python benchmarks/smollm2_accuracy.py [OUT] [--batch-size 64] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pspo_repro.evaluation import evaluate as ev  # noqa: E402

# (benchmarks, problems each, new-token budget: None = the evaluator's per-benchmark default)
PLAN: list[tuple[list[str], int, int | None]] = [
    (["gsm8k", "svamp", "asdiv"], 200, None),
    (["math500"], 100, 512),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "results" / "smollm2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()

    started = time.perf_counter()
    entries: dict[str, dict] = {}
    for names, limit, budget in PLAN:
        summary = ev.evaluate(
            args.model,
            names,
            args.out,
            limit=limit,
            max_new_tokens=budget,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
        )
        entries.update({name: summary["benchmarks"][name] for name in names})
    total = time.perf_counter() - started

    header = (
        f"{'benchmark':<10} {'n':>4} {'tokens':>6} | "
        + "".join(f"{m:>17} | " for m in ev.METRICS)
        + f"{'mean len':>8} {'cut':>5} | {'seconds':>7} {'compl/s':>7}"
    )
    print(f"\n{args.model}, greedy, batch {args.batch_size}; 95% Wilson intervals")
    print(header)
    print("-" * len(header))
    generated = seconds = 0.0
    for name, e in entries.items():
        cells = []
        for metric in ev.METRICS:
            m = e["metrics"][metric]
            cells.append(f"{100 * m['accuracy']:5.1f} [{100 * m['ci95'][0]:4.1f},{100 * m['ci95'][1]:5.1f}]")
        secs = e["generation_seconds"]
        rate = f"{e['generated_problems'] / secs:7.2f}" if secs else "   (reused)"
        print(
            f"{name:<10} {e['n_problems']:>4} {e['max_new_tokens']:>6} | {' | '.join(cells)} | "
            f"{e['mean_completion_tokens']:8.1f} {100 * e['truncated_fraction']:4.0f}% | {secs or 0:7.1f} {rate}"
        )
        if secs:
            generated += e["generated_problems"]
            seconds += secs
    if seconds:
        print(
            f"generation: {generated:.0f} completions in {seconds:.0f} s = {generated / seconds:.2f} completions/s"
        )
    print(f"wall time (model loads included): {total:.0f} s; records in {args.out / 'eval'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
