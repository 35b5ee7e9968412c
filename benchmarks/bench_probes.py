"""Probe overhead: seconds per optimizer step of stock GRPOTrainer, ours with probes off, ours with probes on.

All three train the same tiny model on the same data with the same settings, in one process, interleaved
over several rounds. A round's figure is its mean seconds per step (after the first), so generation steps
and reuse steps weigh as they do in training; the script prints the median over rounds and the ratios to
stock. Goals: probes off within 1.02x of stock, probes on (default settings) within 1.10x.

    .venv/bin/python benchmarks/bench_probes.py [--model tiny-general-s] [--steps 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from pspo_repro.data import synthetic  # noqa: E402
from pspo_repro.models import loading  # noqa: E402
from pspo_repro.training import rewards  # noqa: E402
from pspo_repro.training.train import to_dataset  # noqa: E402
from pspo_repro.training.trainer import PSPOGRPOConfig, PSPOGRPOTrainer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def run(kind: str, model_spec: str, steps: int, dataset, out: str) -> list[float]:
    source = loading.resolve(model_spec)
    common = dict(
        output_dir=out,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=8,
        max_completion_length=48,
        learning_rate=1e-4,
        warmup_steps=0,
        max_steps=steps,
        loss_type="dapo",
        epsilon=0.2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    if kind == "stock":
        cls, args = GRPOTrainer, GRPOConfig(**common)
    else:
        cls = PSPOGRPOTrainer
        args = PSPOGRPOConfig(
            objective="clip", probes=kind == "probes-on", probes_file=f"{out}/probes.jsonl", **common
        )
    timer = StepTimer()
    trainer = cls(
        model=loading.load_model(source),
        reward_funcs=[rewards.paper_reward],
        args=args,
        train_dataset=dataset,
        processing_class=loading.load_tokenizer(source),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times[1:]  # the first step pays one-off costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-general-s")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    dataset = to_dataset(synthetic.generate("train", n=2000))
    kinds = ["stock", "probes-off", "probes-on"]
    per_round: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(opts.rounds):
            for kind in kinds if r % 2 == 0 else reversed(kinds):
                times = run(kind, opts.model, opts.steps, dataset, f"{tmp}/{kind}-{r}")
                per_round[kind].append(sum(times) / len(times))
    base = statistics.median(per_round["stock"])
    print(
        f"model {opts.model}, {opts.steps} steps x {opts.rounds} rounds; 32 completions per step, 64 per generation, each used twice"
    )
    print(f"{'variant':<12} {'s/step (median of rounds)':>26} {'ratio to stock':>15}  rounds")
    for kind in kinds:
        med = statistics.median(per_round[kind])
        rounds = " ".join(f"{t:.3f}" for t in per_round[kind])
        print(f"{kind:<12} {med:>26.3f} {med / base:>15.3f}  {rounds}")


if __name__ == "__main__":
    main()
