"""Cost of a `cpu`-profile optimizer step: the first tiny-model recipe against the current one, in one process.

Both recipes are warm-started here from scratch with the same, shortened warm start (``--warm-steps``, enough
for completions to end with ``#### N`` and stop, as trained models' do), then trained with the `cpu`
profile's regular arm (clip, 64 completions per step in two mini-batches of a 128-completion generation,
each used twice, without gradient checkpointing as in a study), the same number of steps, interleaved over
rounds. The baseline ("old") is the recipe the first committed study used: one token per character,
completions of at most 40 tokens. The current recipe ("new") has a token per word of the domain and per
digit and completions of at most 32 tokens. Both train in float32 with transformers' default attention
(SDPA), as the `cpu` profile does. The current recipe also trains with two further levers, apart and
together, so that each is seen alone: eager attention ("new-eager") and bf16 autocast over the float32
master weights ("new-bf16"; TRL's ``bf16=True``).

Printed: seconds per optimizer step (median over rounds of the mean over whole generation cycles after the
first), the share of that time a generation step spends beyond a training step's work, tokens per sequence
(prompt + completion, measured on the training rollouts), the ratios to the old step, the step's
arithmetic (GFLOP, over the step's 64 sequences: 6 x the parameters per token for the policy's forward and
backward; 2 x per token for the old-policy pass and 2 x per token for generation, the prompt's prefill and
each generated token, both once per generation of 128 and so 64 per step on average; TRL's fused LM head
scores every position on a CPU. A lower bound: generation also runs finished sequences until the batch's
last one stops) and the GFLOP/s it reached, and the seconds per warm-start step of each recipe.

    .venv/bin/python benchmarks/bench_cpu_step.py [--model tiny-general-l] [--steps 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from bench_probes import StepTimer  # noqa: E402  (this script's folder is on the path when it runs)

from pspo_repro.data import synthetic  # noqa: E402
from pspo_repro.models import loading, tiny  # noqa: E402
from pspo_repro.training import rewards  # noqa: E402
from pspo_repro.training.settings import TrainSettings  # noqa: E402
from pspo_repro.training.train import to_dataset  # noqa: E402
from pspo_repro.training.trainer import PSPOGRPOConfig, PSPOGRPOTrainer  # noqa: E402

CYCLE = 4  # optimizer steps per generation: two mini-batches, each used twice


class TokenCounter(PSPOGRPOTrainer):
    """Counts the prompt and completion tokens of every rollout it trains on."""

    prompt_tokens = 0
    completion_tokens = 0
    sequences = 0

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        TokenCounter.prompt_tokens += int(out["prompt_mask"].sum())
        TokenCounter.completion_tokens += int(out["completion_mask"].sum())
        TokenCounter.sequences += out["prompt_mask"].shape[0]
        return out


def with_attention(model, attention: str):
    """``model`` computing attention with transformers' ``attention`` implementation (eager or sdpa)."""
    model.set_attn_implementation(attention)
    return model


def train(
    model_dir: Path, max_completion: int, bf16: bool, attention: str, steps: int, dataset, out: str
) -> dict:
    """One training of ``steps`` optimizer steps; its seconds per step and tokens per sequence."""
    source = loading.resolve(str(model_dir))
    args = PSPOGRPOConfig(
        objective="clip",
        epsilon=0.2,
        output_dir=out,
        per_device_train_batch_size=64,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=8,
        max_completion_length=max_completion,
        learning_rate=1e-4,
        warmup_steps=0,
        max_steps=steps,
        loss_type="dapo",
        beta=0.0,
        report_to="none",
        use_cpu=True,
        bf16=bf16,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        probes=False,
        # as a study trains: TRL's GRPOConfig turns gradient checkpointing on, the study's settings turn it off
        gradient_checkpointing=TrainSettings.gradient_checkpointing,
    )
    timer = StepTimer()
    TokenCounter.prompt_tokens = TokenCounter.completion_tokens = TokenCounter.sequences = 0
    trainer = TokenCounter(
        model=with_attention(loading.load_model(source), attention),
        reward_funcs=[rewards.paper_reward],
        args=args,
        train_dataset=dataset,
        processing_class=loading.load_tokenizer(source),
        callbacks=[timer],
    )
    trainer.train()
    n = max(1, TokenCounter.sequences)
    return {
        # whole generation cycles after the first (whose first step pays one-off costs): a generation step
        # costs several training steps, so a mean over part of a cycle would weigh generation wrongly
        "seconds": statistics.mean(timer.times[CYCLE:]),
        "generation": generation_share(timer.times[CYCLE:]),
        "prompt": TokenCounter.prompt_tokens / n,
        "completion": TokenCounter.completion_tokens / n,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }


def generation_share(times: list[float]) -> float:
    """The share of the steps' time spent on what a generation step does beyond a training step (sampling
    the completions, scoring rewards, the old-policy pass): each cycle's first step less the cycle's others'
    mean."""
    cycles = [times[i : i + CYCLE] for i in range(0, len(times), CYCLE)]
    extra = sum(c[0] - statistics.mean(c[1:]) for c in cycles)
    return extra / sum(times)


def gflop(row: dict) -> float:
    """A step's arithmetic over its 64 sequences (see the module's docstring)."""
    tokens = row["prompt"] + row["completion"]
    n = row["parameters"]
    return 64 * (6 + 2 + 2) * n * tokens / 1e9  # training, old-policy pass, generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny-general-l", choices=[m for m in tiny.names() if m != "tiny-test"]
    )
    parser.add_argument("--warm-steps", type=int, default=300)
    parser.add_argument(
        "--steps",
        type=int,
        default=12,
        help=f"optimizer steps per training: a multiple of {CYCLE}, at least {2 * CYCLE}",
    )
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    if opts.steps % CYCLE or opts.steps < 2 * CYCLE:
        parser.error(f"--steps must be a multiple of {CYCLE} and at least {2 * CYCLE}, got {opts.steps}")
    torch.set_num_threads(1)  # as a `cpu` study's workers run: one thread each

    base = tiny.recipe_of(opts.model)
    recipes = {
        # the first committed recipe: a token per character, no corpus, the 0.65 teacher
        "old": replace(
            base,
            tokenizer="byte",
            corpus_size=0,
            init_from=None,
            sft_steps=opts.warm_steps,
            teacher_errors={k: 0.65 for k in base.teacher_errors},
        ),
        "new": replace(base, init_from=None, sft_steps=opts.warm_steps),
    }
    # variant -> (recipe, completion tokens, bf16 autocast, attention); "new" is the `cpu` profile's step
    variants = {
        "old": ("old", 40, False, "sdpa"),
        "new": ("new", 32, False, "sdpa"),
        "new-eager": ("new", 32, False, "eager"),
        "new-bf16": ("new", 32, True, "sdpa"),
        "new-bf16-eager": ("new", 32, True, "eager"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        built, warm = {}, {}
        for key, recipe in recipes.items():
            name = f"bench-{key}"
            tiny.RECIPES[name] = replace(recipe, eval_n=32)
            record = tiny.build(name, Path(tmp) / name, progress=False)
            built[key], warm[key] = Path(tmp) / name, record["seconds_per_step"]
        dataset = to_dataset(synthetic.generate("train", n=2000))
        per_round: dict[str, list[dict]] = {k: [] for k in variants}
        for r in range(opts.rounds):
            for key in variants if r % 2 == 0 else reversed(list(variants)):
                recipe_key, max_completion, bf16, attention = variants[key]
                per_round[key].append(
                    train(
                        built[recipe_key],
                        max_completion,
                        bf16,
                        attention,
                        opts.steps,
                        dataset,
                        f"{tmp}/{key}-{r}",
                    )
                )
    summary = {}
    fields = ("seconds", "generation", "prompt", "completion")
    for key, rows in per_round.items():
        row = {f: statistics.median(r[f] for r in rows) for f in fields}
        row["parameters"] = rows[0]["parameters"]
        summary[key] = row
    old = summary["old"]
    print(
        f"model {opts.model}; {opts.steps} steps x {opts.rounds} rounds, 1 thread; warm start {opts.warm_steps} steps"
    )
    print(
        f"{'variant':<15} {'s/step':>7} {'ratio':>6} {'generating':>10} {'tokens/seq':>10} {'ratio':>6} {'GFLOP':>6} {'GFLOP/s':>8}"
    )
    for key, row in summary.items():
        tokens = row["prompt"] + row["completion"]
        work = gflop(row)
        print(
            f"{key:<15} {row['seconds']:>7.3f} {old['seconds'] / row['seconds']:>5.2f}x "
            f"{row['generation']:>10.0%} {tokens:>10.1f} "
            f"{(old['prompt'] + old['completion']) / tokens:>5.2f}x {work:>6.1f} {work / row['seconds']:>8.1f}"
        )
    print(
        f"warm start s/step: old {warm['old']:.3f}, new {warm['new']:.3f} ({warm['old'] / warm['new']:.2f}x)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
