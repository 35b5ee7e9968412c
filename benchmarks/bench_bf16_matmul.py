"""Whether this CPU does bf16 arithmetic: one thread's matrix products in float32 against bf16, in one process.

bf16 autocast is the paper's precision, and a lever for the CPU profile's step on CPUs with AMX or
AVX512-BF16. Where the CPU has neither (AVX2 only), PyTorch emulates bf16 products and they run far slower
than float32: a profile under bf16 would then be slower, not faster (which is why `tests/test_paper_smoke.py`
trains in float32 there). The shapes are a tiny model's layers at a
training micro-batch (tokens x hidden by hidden x MLP width) and SmolLM2-135M's.

Printed: the kernel path PyTorch chose, then per shape the median milliseconds and GFLOP/s of each dtype and
the ratio bf16 / float32 of their times (above 1: bf16 is slower).

    .venv/bin/python benchmarks/bench_bf16_matmul.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {  # name: (rows, inner, columns)
    "tiny-general-l MLP (64 x 51 tokens)": (3264, 160, 480),
    "SmolLM2-135M MLP (8 x 128 tokens)": (1024, 576, 1536),
}


def median_seconds(a: torch.Tensor, b: torch.Tensor, rounds: int) -> float:
    for _ in range(3):  # warm-up: kernel selection and caches
        a @ b
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed products per shape and dtype (>= 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    torch.set_num_threads(1)
    print(f"kernel path: {torch.backends.cpu.get_cpu_capability()}, 1 thread, torch {torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    for name, (rows, inner, cols) in SHAPES.items():
        a = torch.randn(rows, inner, generator=generator)
        b = torch.randn(inner, cols, generator=generator)
        flop = 2 * rows * inner * cols
        seconds = {
            dt: median_seconds(a.to(dt), b.to(dt), args.rounds) for dt in (torch.float32, torch.bfloat16)
        }
        cells = "   ".join(
            f"{str(dt).removeprefix('torch.')} {s * 1e3:8.2f} ms {flop / s / 1e9:6.1f} GFLOP/s"
            for dt, s in seconds.items()
        )
        print(f"{name:<38} {cells}   bf16 / float32 {seconds[torch.bfloat16] / seconds[torch.float32]:7.2f}x")


if __name__ == "__main__":
    main()
