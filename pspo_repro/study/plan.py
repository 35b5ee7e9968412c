"""A study's plan before it runs (``pspo-repro study --dry-run``): every run with the settings that set it
apart, its optimizer steps and completions counted as TRL's ``GRPOTrainer`` counts them, and an estimate of
its GPU-hours from stated throughput assumptions.

Counting (TRL 1.16, one process per run). A generation is ``batch_size x steps_per_generation`` completions
(``steps_per_generation`` defaults to ``grad_accum``), i.e. that many divided by ``num_generations`` prompts.
TRL's ``RepeatSampler`` drops the last incomplete group of prompts and repeats each group
``num_iterations x steps_per_generation`` times; the dataloader serves ``batch_size x steps_per_generation``
rows per batch, so an epoch is ``groups x num_iterations x steps_per_generation`` micro-batches, and
transformers' ``Trainer`` makes ``ceil(micro-batches / grad_accum)`` optimizer steps of it and
``ceil(epochs x that)`` in all (``max_steps`` > 0 overrides). TRL generates anew every
``steps_per_generation x num_iterations`` micro-batches.

The estimate is a first-principles order of magnitude, not a measurement: each assumption is printed with
the table (see :data:`ASSUMPTIONS`).

Disk (:func:`disk`), from the model's parameter count (:mod:`pspo_repro.models.footprint`: read from its config
without loading weights, or for the paper's hub models not on disk from a table of their counts): a run keeps
its best checkpoint (float32 weights, as training saves them); while it trains it also holds its trainer
checkpoint (weights, Adam's two moments, kilobytes of scheduler and random states). Its peak comes while a new
best and a new trainer checkpoint are written beside the ones they replace, which are removed only once the
new ones are complete (a crash in between resumes from the old). Trainer checkpoints go when the run finishes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

from pspo_repro.models import footprint
from pspo_repro.study import profiles
from pspo_repro.training.settings import TrainSettings

GSM8K_TRAIN, GSM8K_VALIDATION = 7000, 472  # the authors' split (see pspo_repro.data.loaders)
# test set sizes of the benchmarks (the releases in the data folder); others are not estimated
BENCHMARK_SIZES = {"gsm8k": 1319, "math": 5000, "math500": 500, "svamp": 1000, "asdiv": 2305}
# parameters (billions) of the paper's models; other hub ids are read from their name (e.g. "-7B")
PARAMETERS_B = {name: shape.parameters / 1e9 for name, shape in footprint.KNOWN.items()}

# Throughput assumptions for one H100, stated as such (none is measured here).
ASSUMPTIONS: dict[str, Any] = {
    "prompt_tokens": 200,  # system prompt + a GSM8K question under a chat template
    # HF generate is latency-bound at these batch sizes: seconds per decoding step of a whole batch
    "hf_decode_step_s": {"<= 1B": 0.025, "> 1B": 0.030},
    # every completion runs to max_completion_length (a batch decodes until its longest completion ends)
    "training_tflops": 100.0,  # achieved: bf16 autocast over fp32 weights, micro-batches of 4 sequences
    "vllm_tokens_per_s": {"<= 1B": 20000.0, "> 1B": 10000.0},  # greedy, whole benchmark in one batch
    "vllm_startup_s": 90.0,  # engine start and CUDA graph capture, per evaluation
    # validation batches sized by memory (eval_batch_size unset): an 80 GB card less what training holds
    # (float32 weights, gradients, Adam's two moments: 16 bytes per parameter) and a colocated vLLM's share
    "gpu_memory_gb": 80.0,
    "training_bytes_per_parameter": 16,
    # the audit's identity measurement, per token of every micro-batch beside training's 6: the policy's
    # forward pass with gradients (2), a backward pass for each of two objectives (2 x 4), and the
    # distributions of the policy and of the kept old policy (2 x 2)
    "identity_flops_per_parameter": 14.0,
}


def parameters_b(model: str) -> float | None:
    """A model's parameter count in billions: known for the paper's models, else read from a hub id that
    names it (``...-7B``); None when unknown (tiny models, local folders)."""
    if model in PARAMETERS_B:
        return PARAMETERS_B[model]
    found = re.search(r"[-_](\d+(?:\.\d+)?)[bB](?:$|[-_])", model)
    return float(found.group(1)) if found else None


@dataclass(frozen=True)
class Schedule:
    """How much one run computes, counted as TRL does."""

    optimizer_steps: int
    micro_batches: int
    generations: int
    completions: int  # generated for training
    validations: int  # validation passes, step 0 included
    validation_completions: int


def schedule(settings: TrainSettings, train_prompts: int | None, validation_prompts: int) -> Schedule:
    """The optimizer steps, generations and completions of one run on one process (see the module).
    ``train_prompts`` None: unknown, and no epoch ends within ``max_steps`` (which must then be set)."""
    s = settings
    spg = s.steps_per_generation or s.grad_accum
    generation_batch = s.batch_size * spg
    if generation_batch % s.num_generations:
        raise ValueError(
            f"batch_size x steps_per_generation ({generation_batch}) must be divisible by "
            f"num_generations ({s.num_generations})"
        )
    if train_prompts is None:
        if s.max_steps <= 0:
            raise ValueError("the number of training prompts is needed when max_steps is not set")
        per_epoch = s.max_steps * s.grad_accum  # one epoch covers the run
    else:
        groups = train_prompts // (generation_batch // s.num_generations)
        per_epoch = groups * s.num_iterations * spg  # micro-batches (dataloader batches) per epoch
    if per_epoch == 0:
        raise ValueError(f"{train_prompts} training prompts make no full generation of {generation_batch}")
    steps_per_epoch = math.ceil(per_epoch / s.grad_accum)
    steps = s.max_steps if s.max_steps > 0 else math.ceil(s.epochs * steps_per_epoch)
    # a whole epoch is per_epoch micro-batches (its last step takes what is left); a partial one is full steps
    full_epochs, rest = divmod(steps, steps_per_epoch)
    micro = full_epochs * per_epoch + rest * s.grad_accum
    generations = math.ceil(micro / (spg * s.num_iterations))
    validations = 1 + steps // s.eval_every + (1 if steps % s.eval_every else 0)
    per_prompt = (s.sampled_validation() or {"n": 1})["n"]  # sampled validation: n completions per prompt
    return Schedule(
        optimizer_steps=steps,
        micro_batches=micro,
        generations=generations,
        completions=generations * generation_batch,
        validations=validations,
        validation_completions=validations * validation_prompts * per_prompt,
    )


@cache
def model_shape(model: str) -> tuple[footprint.Shape | None, str]:
    """:func:`footprint.shape_of`, once per model of a plan."""
    return footprint.shape_of(model)


def validation_batch(settings: TrainSettings) -> int | None:
    """Sequences per validation generate call on the assumed GPU: ``eval_batch_size``, or sized by memory
    as the run will size it (:meth:`pspo_repro.training.callbacks.Validation.generate_batch`); None when the
    model's shape is unknown."""
    if settings.eval_batch_size is not None:
        return settings.eval_batch_size
    shape, _ = model_shape(settings.model)
    if shape is None:
        return None
    a = ASSUMPTIONS
    memory = a["gpu_memory_gb"] * footprint.GB
    free = memory - a["training_bytes_per_parameter"] * shape.parameters
    if settings.use_vllm and settings.vllm_mode == "colocate":
        free -= settings.vllm_gpu_memory_utilization * memory
    return footprint.generation_batch(shape, a["prompt_tokens"], settings.max_completion_length, free)


@dataclass(frozen=True)
class Disk:
    """Bytes on disk of one run: its best checkpoint (kept) and one trainer checkpoint (while it trains),
    ``trainer_kept`` of them (``save_total_limit``; none without ``save_steps``)."""

    best: int
    trainer: int
    trainer_kept: int

    @property
    def peak(self) -> int:
        """A new best beside the kept one, and a new trainer checkpoint beside the kept ones, at once."""
        return 2 * self.best + (self.trainer_kept + 1) * self.trainer if self.trainer_kept else 2 * self.best


def disk(settings: TrainSettings, parameters: int) -> Disk:
    """The disk one run needs, from its model's parameter count (see the module)."""
    kept = settings.save_total_limit if settings.save_steps else 0
    trainer = footprint.trainer_checkpoint_bytes(parameters, settings.optimizer)
    return Disk(footprint.weights_bytes(parameters), trainer, kept)


def _tier(table: dict[str, float], params: float) -> float:
    return table["<= 1B"] if params <= 1.0 else table["> 1B"]


def gpu_hours(
    settings: TrainSettings,
    plan: Schedule,
    validation_prompts: int,
    benchmarks: list[str],
    eval_options: dict[str, Any],
) -> float | None:
    """Estimated H100 GPU-hours of one run (training, validation, final evaluation) from
    :data:`ASSUMPTIONS`; None when the model's size or a benchmark's size is unknown."""
    params = parameters_b(settings.model)
    if params is None or any(b not in BENCHMARK_SIZES for b in benchmarks):
        return None
    a = ASSUMPTIONS
    decode = _tier(a["hf_decode_step_s"], params)
    tokens = a["prompt_tokens"] + settings.max_completion_length
    rollouts = plan.generations * settings.max_completion_length * decode
    flops = 6 * params * 1e9 * tokens * plan.micro_batches * settings.batch_size
    spg = settings.steps_per_generation or settings.grad_accum
    if settings.num_iterations > 1 or spg > settings.grad_accum:  # TRL's old-policy forward pass
        flops += 2 * params * 1e9 * tokens * plan.completions
    updates = flops / (a["training_tflops"] * 1e12)
    per_prompt = (settings.sampled_validation() or {"n": 1})["n"]
    prompts_per_call = max(1, (validation_batch(settings) or 1) // per_prompt)
    batches = math.ceil(validation_prompts / prompts_per_call)
    validation = plan.validations * batches * settings.max_completion_length * decode
    return (rollouts + updates + validation + evaluation_seconds(params, benchmarks, eval_options)) / 3600


def identity_gpu_hours(settings: TrainSettings, steps: int) -> float | None:
    """Estimated H100 GPU-hours of the audit's identity measurement on one run: ``steps`` optimizer steps of
    its training (rollouts and updates as in :func:`gpu_hours`, no validation or evaluation) and the
    measurement's own passes on every micro-batch (:data:`ASSUMPTIONS`); None when the model's size is
    unknown."""
    params = parameters_b(settings.model)
    if params is None:
        return None
    a = ASSUMPTIONS
    plan = schedule(dataclasses.replace(settings, max_steps=steps, eval_every=steps), None, 0)
    tokens = a["prompt_tokens"] + settings.max_completion_length
    rollouts = plan.generations * settings.max_completion_length * _tier(a["hf_decode_step_s"], params)
    per_token = 6 + a["identity_flops_per_parameter"]
    flops = per_token * params * 1e9 * tokens * plan.micro_batches * settings.batch_size
    spg = settings.steps_per_generation or settings.grad_accum
    if settings.num_iterations > 1 or spg > settings.grad_accum:  # TRL's old-policy forward pass
        flops += 2 * params * 1e9 * tokens * plan.completions
    return (rollouts + flops / (a["training_tflops"] * 1e12)) / 3600


def identity_line(runs: list[profiles.Run]) -> str:
    """The dry run's line for the audit's identity measurement on these runs: how many runs, their optimizer
    steps and the estimated GPU-hours."""
    from pspo_repro.analysis.audit.measurement import IDENTITY_LABELS, identity_runs, identity_steps

    measured = identity_runs(runs)
    which = f"lowest build and seed of each model's {', '.join(IDENTITY_LABELS)}"
    if not measured:
        return f"audit identities: none of these runs is measured ({which})"
    steps = [identity_steps(r.settings) for r in measured]
    each = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)} to {max(steps)}"
    hours = [identity_gpu_hours(r.settings, n) for r, n in zip(measured, steps, strict=True)]
    cost = (
        "GPU-hours not estimated (a model of unknown size)"
        if any(h is None for h in hours)
        else f"about {sum(h for h in hours if h is not None):.2f} GPU-hours (not in the total above)"
    )
    return (
        f"audit identities: {len(measured)} runs ({which}), {each} optimizer steps each "
        f"({sum(steps):,} in all), {cost}"
    )


def evaluation_seconds(params: float, benchmarks: list[str], eval_options: dict[str, Any]) -> float:
    """Seconds of one final evaluation (every completion to its benchmark's token budget)."""
    from pspo_repro.evaluation.evaluate import DEFAULT_MAX_NEW_TOKENS

    a = ASSUMPTIONS
    n_samples = eval_options.get("n_samples", 1)
    limit = eval_options.get("limit")
    seconds = 0.0
    for name in benchmarks:
        n = BENCHMARK_SIZES[name] if limit is None else min(limit, BENCHMARK_SIZES[name])
        budget = eval_options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS[name]
        if eval_options.get("backend", "hf") == "vllm":
            seconds += n * n_samples * budget / _tier(a["vllm_tokens_per_s"], params)
        else:
            batch = eval_options.get("batch_size", 32)
            seconds += math.ceil(n * n_samples / batch) * budget * _tier(a["hf_decode_step_s"], params)
    if eval_options.get("backend", "hf") == "vllm":
        seconds += a["vllm_startup_s"]
    return seconds


def _prompt_counts(settings: TrainSettings) -> tuple[int | None, int]:
    train: int | None
    if settings.dataset == "gsm8k":
        train, validation = GSM8K_TRAIN, GSM8K_VALIDATION
    else:  # the synthetic domain is generated in memory: counted only when a run needs the number
        from pspo_repro.data import loaders

        # CPU runs set max_steps, far below an epoch of the synthetic domain's RL prompts
        train = None if settings.max_steps > 0 else len(loaders.load("synthetic", "train"))
        validation = settings.validation_limit or len(loaders.load("synthetic", "validation"))
    if settings.validation_limit is not None:
        validation = min(validation, settings.validation_limit)
    if settings.train_limit is not None and train is not None:
        train = min(train, settings.train_limit)
    return train, validation


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


SHOWN_APART = ("model", "label", "seed", "objective")  # columns of their own


def describe(
    profile_name: str,
    models: list[str] | None = None,
    objectives: list[str] | None = None,
    seeds: list[int] | None = None,
) -> str:
    """The dry-run report of a profile (or the runs selected): a table of runs and totals, and the
    assumptions of the estimate."""
    from pspo_repro.evaluation import evaluate

    profile = profiles.load_profile(profile_name)
    runs = profiles.select(profiles.expand(profile), models, objectives, seeds)
    eval_opts = dict(profile.get("eval", {}))
    benchmarks = evaluate.parse_benchmarks(",".join(eval_opts.pop("benchmarks", ["synthetic"])))
    settings = [r.settings.to_dict() for r in runs]
    common = {
        key: Counter(repr(s[key]) for s in settings).most_common(1)[0][0]
        for key in settings[0]
        if key not in SHOWN_APART
    }
    header = (
        "model",
        "label",
        "seed",
        "differs from common",
        "steps",
        "completions",
        "val. compl.",
        "GPU-h",
        "peak GB",
    )
    rows = []
    total_hours: float | None = 0.0
    total_steps = total_completions = 0
    kept: int | None = 0  # bytes that stay after every run has finished
    peaks: dict[str, Disk] = {}  # per model: the disk of its runs at their peak
    for run, values in zip(runs, settings, strict=True):
        train_prompts, validation_prompts = _prompt_counts(run.settings)
        plan = schedule(run.settings, train_prompts, validation_prompts)
        hours = gpu_hours(run.settings, plan, validation_prompts, benchmarks, eval_opts)
        shape, _ = model_shape(run.model)
        run_disk = None if shape is None else disk(run.settings, shape.parameters)
        if run_disk is not None and (run.model not in peaks or run_disk.peak > peaks[run.model].peak):
            peaks[run.model] = run_disk
        kept = None if run_disk is None or kept is None else kept + run_disk.best
        differs = " ".join(
            f"{k}={_short(v)}" for k, v in values.items() if k in common and repr(v) != common[k]
        )
        rows.append(
            (
                run.model,
                run.label,
                str(run.seed),
                differs or "-",
                f"{plan.optimizer_steps:,}",
                f"{plan.completions:,}",
                f"{plan.validation_completions:,}",
                "-" if hours is None else f"{hours:.2f}",
                "-" if run_disk is None else f"{run_disk.peak / footprint.GB:.2f}",
            )
        )
        total_steps += plan.optimizer_steps
        total_completions += plan.completions
        total_hours = None if hours is None or total_hours is None else total_hours + hours
    starts = sorted({r.model for r in runs})
    start_hours = [parameters_b(m) for m in starts]
    known = all(p is not None for p in start_hours) and all(b in BENCHMARK_SIZES for b in benchmarks)
    if total_hours is not None and known:
        total_hours += sum(evaluation_seconds(p, benchmarks, eval_opts) for p in start_hours) / 3600
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    shown = {k: v for k, v in common.items() if k in profile.get("train", {}) or k in _varying(settings)}
    out = [
        f"profile {profile.get('name', profile_name)}: {len(runs)} runs, {len(starts)} starting model "
        f"evaluation(s); benchmarks {', '.join(benchmarks)}",
        "common settings: " + " ".join(f"{k}={v}" for k, v in shown.items()),
        "",
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows),
        "",
        f"total: {len(runs)} runs, {total_steps:,} optimizer steps, {total_completions:,} training completions, "
        + (
            "GPU-hours not estimated (a model or benchmark of unknown size)"
            if total_hours is None
            else f"about {total_hours:,.0f} GPU-hours (runs and starting-model evaluations)"
        ),
        _disk_line(kept, peaks),
        identity_line(runs),
        "",
        "counted as TRL 1.16's GRPOTrainer on one process per run: steps = ceil(epochs x ceil(micro-batches "
        "per epoch / grad_accum)), micro-batches per epoch = full prompt groups x num_iterations x "
        "steps_per_generation; completions = generations x batch_size x steps_per_generation; val. compl. = "
        "validation passes (step 0 included) x validation prompts x completions per prompt (1 greedy; n sampled)",
        "GPU-hours: an estimate for one H100, from these assumptions (not measurements):",
        f"  - prompt tokens per completion: {ASSUMPTIONS['prompt_tokens']}; every completion runs to "
        "max_completion_length (rollouts and validation) or the benchmark's token budget (evaluation)",
        f"  - HF generate: {_tiers(ASSUMPTIONS['hf_decode_step_s'], 's per decoding step of a batch')}",
        f"  - policy updates: 6 x parameters FLOPs per token (plus 2 x for the old-policy pass when rollouts "
        f"are reused) at {ASSUMPTIONS['training_tflops']:g} TFLOP/s achieved; the audit's identity "
        f"measurement adds {ASSUMPTIONS['identity_flops_per_parameter']:g} x parameters FLOPs per token (a "
        "forward pass, two backward passes, the current and the old policy's distributions)",
        f"  - evaluation with vLLM: {_tiers(ASSUMPTIONS['vllm_tokens_per_s'], 'tokens/s')}, "
        f"{ASSUMPTIONS['vllm_startup_s']:g} s to start the engine; with hf: the decoding-step time above",
        "  - validation: sequences per generate call as set (eval_batch_size), else as many as fit in half of "
        f"a {ASSUMPTIONS['gpu_memory_gb']:g} GB card's memory less training's "
        f"{ASSUMPTIONS['training_bytes_per_parameter']} bytes per parameter (and a colocated vLLM's share), "
        "a power of two, at the decoding-step time above: "
        + ", ".join(f"{m} {validation_batch(r.settings)}" for m, r in _first_run_per_model(runs).items()),
        "disk: a run keeps its best checkpoint (float32 weights, 4 bytes per parameter); while it trains it also "
        "holds save_total_limit trainer checkpoints (weights and Adam's two moments, 12 bytes per parameter); its "
        "peak comes when a new best is staged beside the kept one and the next trainer checkpoint is written "
        "beside the kept ones (the older goes once the newer is complete); trainer checkpoints go at the end",
        "parameters (GPU-hours and disk): " + ", ".join(_parameters(m) for m in starts),
    ]
    return "\n".join(out)


def _first_run_per_model(runs: list[Any]) -> dict[str, Any]:
    first: dict[str, Any] = {}
    for run in runs:
        first.setdefault(run.model, run)
    return first


def _parameters(model: str) -> str:
    shape, source = model_shape(model)
    if shape is None:
        return f"{model} unknown"
    where = "its config" if source == "config" else "table of known counts: not on disk"
    return f"{model} {shape.parameters:,} ({where})"


def _disk_line(kept: int | None, peaks: dict[str, Disk]) -> str:
    if kept is None:
        return "disk: not estimated (a model of unknown size)"
    model, run = max(peaks.items(), key=lambda item: item[1].peak)
    held = run.best + run.trainer_kept * run.trainer
    return (
        f"disk: {kept / footprint.GB:,.1f} GB stays after the runs finish (each run's best checkpoint); a run in "
        f"progress holds up to {held / footprint.GB:.2f} GB, {run.peak / footprint.GB:.2f} GB at its peak "
        f"({model}: best checkpoint {run.best / footprint.GB:.2f} GB, trainer checkpoint "
        f"{run.trainer / footprint.GB:.2f} GB)"
    )


def _varying(settings: list[dict[str, Any]]) -> set[str]:
    return {k for k in settings[0] if len({repr(s[k]) for s in settings}) > 1}


def _tiers(table: dict[str, float], unit: str) -> str:
    return ", ".join(f"{v:g} {unit} for models {k}" for k, v in table.items())
