"""One training run: settings in, a complete run directory out (see :mod:`pspo_repro.study.rundir`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from pspo_repro.data import loaders, prompts
from pspo_repro.models import loading
from pspo_repro.models.generation import generate_batch, greedy_completions
from pspo_repro.study import rundir
from pspo_repro.training import distributed, objectives, rewards, rollouts

DATASETS = ("gsm8k", "synthetic")
VALIDATIONS = ("greedy", "sampled")
# Settings that no longer exist, with why; a run config that has one still reads (read_run_settings).
RETIRED = {
    "max_prompt_length": "TRL 1.16's GRPOConfig has no prompt truncation (prompts are passed whole), so it never "
    "had an effect; remove it",
}
STAGED_BEST = "checkpoint.next"  # a new best checkpoint awaiting its trainer checkpoint (see Validation)
LOGS = (rundir.TRAIN_LOG, rundir.PROBES, rundir.VALIDATION)  # one record per step (or logging step)


@dataclass
class TrainSettings:
    """Everything that defines a run. Defaults are the authors' script for Qwen2.5-0.5B with PSPO."""

    model: str = field(default="Qwen/Qwen2.5-0.5B", metadata={"help": "hub id, local folder or tiny name"})
    objective: str = field(default="pspo", metadata={"help": "clip, pspo, sigmoid, topr or noclip"})
    label: str | None = field(
        default=None, metadata={"help": "the run's name in a study (e.g. clip-shuffled); default: objective"}
    )
    # objective parameters (objectives.PARAMS), under GRPOConfig's names where TRL has the setting
    alpha: float = field(default=0.1, metadata={"help": "PSPO smoothing in [0, 1]"})
    epsilon: float = field(default=0.1, metadata={"help": "clip range (the authors intended 0.1 at 0.5B)"})
    epsilon_high: float | None = field(default=None, metadata={"help": "upper clip range; default epsilon"})
    sapo_temperature_pos: float = field(default=1.0, metadata={"help": "sigmoid temperature for A > 0"})
    sapo_temperature_neg: float = field(default=1.05, metadata={"help": "sigmoid temperature for A <= 0"})
    ratio_level: str = field(default="token", metadata={"help": "importance ratio per 'token' or 'sequence'"})
    dataset: str = field(default="gsm8k", metadata={"help": "training data: gsm8k or synthetic"})
    data_dir: str | None = field(default=None, metadata={"help": "local benchmark folder (else the hub)"})
    reward: str = field(default="paper", metadata={"help": "paper (authors' shaped reward) or strict"})
    system_prompt: str = field(
        default="default", metadata={"help": "default (ours) or authors (their exact wording); see prompts"}
    )
    seed: int = 0
    learning_rate: float = 5e-7
    optimizer: str = field(default="adamw", metadata={"help": "adamw or sgd (the scale-sensitive control)"})
    lr_scheduler: str = "linear"
    warmup_steps: int = 140
    epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; overrides epochs when > 0"})
    batch_size: int = field(default=4, metadata={"help": "completions per micro-batch"})
    grad_accum: int = field(default=16, metadata={"help": "micro-batches per optimizer step"})
    steps_per_generation: int | None = field(default=None, metadata={"help": "default: grad_accum"})
    num_iterations: int = field(default=2, metadata={"help": "updates per rollout batch (1: ratio is 1)"})
    num_generations: int = field(default=4, metadata={"help": "group size G"})
    temperature: float = 0.8
    top_p: float = 0.9
    max_completion_length: int = 128
    loss_type: str = field(default="dapo", metadata={"help": "aggregation: dapo, grpo, bnpo, dr_grpo"})
    beta: float = 0.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    shuffle_advantages: bool = field(
        default=False, metadata={"help": "noise-floor control: no reward signal"}
    )
    eval_every: int = field(default=100, metadata={"help": "validation every N optimizer steps"})
    validation_limit: int | None = field(default=None, metadata={"help": "first N validation problems"})
    eval_batch_size: int = field(default=64, metadata={"help": "completions per validation generate call"})
    # validation: greedy, or sampled as TRL's evaluation in the authors' runs (mean reward of sampled completions)
    validation: str = field(default="greedy", metadata={"help": "greedy or sampled"})
    validation_temperature: float | None = field(
        default=None, metadata={"help": "sampled; default temperature"}
    )
    validation_top_p: float | None = field(default=None, metadata={"help": "sampled; default top_p"})
    validation_generations: int | None = field(
        default=None, metadata={"help": "sampled: completions per prompt; default num_generations"}
    )
    probes: bool = True
    probe_every: int = 11  # not a multiple of the steps per generation (see PSPOGRPOConfig)
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "trade compute for memory (TRL's default is on; it disables the KV cache)"},
    )
    # --- GPU options: vLLM rollouts (pspo_repro.training.rollouts); defaults are TRL's, vLLM off ---------------
    use_vllm: bool = field(default=False, metadata={"help": "generate rollouts with vLLM (the vllm extra)"})
    vllm_mode: str = field(default="colocate", metadata={"help": "colocate (in each process) or server"})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "vLLM's share of each GPU's memory in colocate mode"}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "server mode: the vLLM server's host"})
    vllm_server_port: int = field(default=8000, metadata={"help": "server mode: the vLLM server's port"})
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "server mode: the server's URL (overrides host and port)"}
    )
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "reweight the loss by trainer / vLLM token probabilities"}
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={"help": "token_truncate, token_mask, sequence_truncate or sequence_mask"},
    )
    vllm_importance_sampling_clip_max: float | None = 3.0
    vllm_importance_sampling_clip_min: float | None = None
    # --- end of GPU options ---------------------------------------------------------------------------
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast over fp32 weights; default: on when a GPU is present"},
    )
    logging_steps: int = 1
    # resuming a preempted run (TRL/transformers checkpoints of weights, optimizer, scheduler and RNG states)
    save_steps: int = field(
        default=0,
        metadata={"help": "trainer checkpoint every N optimizer steps, resumed after a crash; 0: none"},
    )
    save_total_limit: int = field(default=1, metadata={"help": "trainer checkpoints kept (the newest)"})
    # experiment trackers, off by default
    report_to: str = field(
        default="none",
        metadata={
            "help": "experiment trackers, comma-separated (tensorboard, wandb, trackio, ...); none: off"
        },
    )

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.reward not in rewards.REWARDS:
            raise ValueError(f"reward must be one of {', '.join(rewards.REWARDS)}, got {self.reward!r}")
        prompts.check_system_prompt(self.system_prompt)
        if self.eval_every <= 0:
            raise ValueError(f"eval_every must be > 0, got {self.eval_every}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        self.objective_params()  # validates the objective name and parameters
        rollouts.check_settings(self)  # GPU options: vLLM rollouts
        self._check_checkpointing()
        self._check_validation()
        self.trackers()  # validates report_to

    def trackers(self) -> list[str]:
        """The experiment trackers of ``report_to`` (transformers' integrations), [] for none."""
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        names = [n.strip() for n in self.report_to.split(",") if n.strip()]
        if names == ["none"]:
            return []
        bad = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
        if bad or not names:
            raise ValueError(
                f"report_to must be 'none' or a comma-separated list of trackers, got {self.report_to!r}; "
                f"trackers: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
        return names

    def _check_validation(self) -> None:
        if self.validation not in VALIDATIONS:
            raise ValueError(f"validation must be one of {', '.join(VALIDATIONS)}, got {self.validation!r}")
        sampled = {k: getattr(self, k) for k in ("validation_temperature", "validation_top_p")}
        sampled["validation_generations"] = self.validation_generations
        given = [k for k, v in sampled.items() if v is not None]
        if self.validation == "greedy" and given:
            raise ValueError(f"{', '.join(given)} apply to validation: sampled only (validation is greedy)")
        if self.validation_generations is not None and self.validation_generations < 1:
            raise ValueError(f"validation_generations must be >= 1, got {self.validation_generations}")

    def sampled_validation(self) -> dict[str, Any] | None:
        """Temperature, top_p and completions per prompt of sampled validation (None when greedy)."""
        if self.validation == "greedy":
            return None
        return {
            "temperature": self.temperature
            if self.validation_temperature is None
            else self.validation_temperature,
            "top_p": self.top_p if self.validation_top_p is None else self.validation_top_p,
            "n": self.validation_generations or self.num_generations,
        }

    def _check_checkpointing(self) -> None:
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0: no trainer checkpoints), got {self.save_steps}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {self.save_total_limit}")
        # TRL keeps the rollouts it reuses in memory only, so a checkpoint must fall where a generation starts:
        # one generation serves steps_per_generation x num_iterations micro-batches.
        per_generation = (self.steps_per_generation or self.grad_accum) * self.num_iterations
        every = per_generation // math.gcd(per_generation, self.grad_accum)
        if self.save_steps % every:
            raise ValueError(
                f"save_steps={self.save_steps} must be a multiple of {every}: checkpoints must fall where a new "
                f"generation starts (each generation serves {per_generation} micro-batches, {self.grad_accum} "
                f"per optimizer step), because TRL does not save the rollouts it reuses"
            )

    def objective_params(self) -> dict[str, float]:
        """The objective's parameters (validated), by their names in :data:`objectives.PARAMS`."""
        params = objectives.params_of(self.objective, self)
        objectives.get(self.objective, level=self.ratio_level, **params)
        return params

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Settings from a mapping (a profile's layers, a YAML file, a run's config.json). Objective parameters
        may come under their earlier names (``eps``, ``tau_pos``, ...; see :data:`objectives.RENAMED`)."""
        values = dict(values)
        for old, new in objectives.RENAMED.items():
            if old not in values:
                continue
            if new in values and values[new] != values[old]:
                raise ValueError(
                    f"setting {old!r} is the earlier name of {new!r}, and both are given with different values "
                    f"({values[old]!r} and {values[new]!r}); give {new!r} only"
                )
            values[new] = values.pop(old)
        retired = sorted(set(values) & set(RETIRED))
        if retired:
            raise ValueError(f"setting {retired[0]} was removed: {RETIRED[retired[0]]}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known settings: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_run_settings(run_dir: str | os.PathLike) -> TrainSettings:
    """The settings of a run folder (its config.json), including runs written by earlier versions: retired
    settings, which had no effect, are dropped, and earlier parameter names are read (see from_dict)."""
    values = rundir.read_json(Path(run_dir) / rundir.CONFIG)
    return TrainSettings.from_dict({k: v for k, v in values.items() if k not in RETIRED})


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the setting's type. YAML reads ``1e-4`` (no dot) as a string, and ``--set k=v`` values
    come through YAML, so numbers and booleans given as text are converted here, with a clear error."""
    allowed = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if value is None and type(None) in typing.get_args(hint):
        return None
    kind = allowed[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str | float) and float(_number(name, value)).is_integer():
            return int(float(_number(name, value)))
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return _number(name, value)
    elif kind is str and isinstance(value, str):
        return value
    raise ValueError(f"setting {name} must be {' or '.join(t.__name__ for t in allowed)}, got {value!r}")


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"setting {name} must be a number, got {value!r}") from None


# --- data -----------------------------------------------------------------------------------------


def load_problems(settings: TrainSettings) -> tuple[list[loaders.Problem], list[loaders.Problem]]:
    """Training and validation problems: GSM8K split 7,000 / 472 by the run seed, or the synthetic splits."""
    if settings.dataset == "gsm8k":
        train, validation = loaders.gsm8k_train_validation(settings.seed, data_dir=settings.data_dir)
    else:
        train = loaders.load("synthetic", "train")
        validation = loaders.load("synthetic", "validation")
    if settings.validation_limit is not None:
        validation = validation[: settings.validation_limit]
    return train, validation


def to_dataset(problems: list[loaders.Problem], system_prompt: str = prompts.DEFAULT) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": prompts.chat_messages(p.question, p.kind, system_prompt),
                "answer": p.answer,
                "kind": p.kind,
            }
            for p in problems
        ]
    )


# --- validation and the best checkpoint ---------------------------------------------------------


def sampled_completions(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    n: int,
    seed: int,
    options: dict[str, Any],
) -> list[list[str]]:
    """``n`` sampled completions of each rendered prompt, with generation ``options`` (temperature, top_p,
    eos_token_id and any further sampler settings), through the one generation path
    (:func:`pspo_repro.models.generation.generate_batch`).

    Sampling draws from the global generator seeded with ``seed`` inside a fork of the random state, so the
    completions depend on the seed alone and the training's random stream is left as it was."""
    sampler = dict(options)
    stop = sampler.pop("eos_token_id")
    stop_ids = [stop] if isinstance(stop, int) else list(stop)
    temperature, top_p = sampler.pop("temperature"), sampler.pop("top_p")
    per_call = max(1, batch_size // n)
    out: list[list[str]] = []
    was_training = model.training
    model.eval()
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(texts), per_call):
                batch = generate_batch(
                    model,
                    tokenizer,
                    texts[start : start + per_call],
                    n=n,
                    max_new_tokens=max_new_tokens,
                    stop_ids=stop_ids,
                    temperature=temperature,
                    top_p=top_p,
                    sampler=sampler,
                )
                out += [generation.texts for generation in batch]
    finally:
        model.train(was_training)
    return out


class Validation(TrainerCallback):
    """Validation reward every N steps (as the authors did); keeps the best checkpoint in <run>/checkpoint.

    Step 0 (the starting model) is validated and logged but is never a candidate for the best checkpoint,
    as with ``load_best_model_at_end`` in the authors' setup: a run that only degrades then shows it.
    ``initial`` is a known step-0 record (the same starting model, validated the same way) to reuse."""

    def __init__(
        self,
        run_dir: Path,
        settings: TrainSettings,
        problems: list[loaders.Problem],
        tokenizer: Any,
        initial: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
    ):
        self.run_dir, self.settings, self.problems, self.tokenizer = run_dir, settings, problems, tokenizer
        self.texts = [
            prompts.render_prompt(tokenizer, p.question, p.kind, settings.system_prompt) for p in problems
        ]
        self.initial = initial
        # a resumed run continues from the validation records kept up to its trainer checkpoint
        history = history or []
        self.best: float = max((r["reward"] for r in history if r["step"] > 0), default=-math.inf)
        # sampled validation: the training sampler's settings other than temperature and top_p, as TRL's
        # generation config has them (train() sets them from the trainer)
        self.sampler_options: dict[str, Any] = {
            "top_k": 0,
            "min_p": None,
            "repetition_penalty": 1.0,
            "eos_token_id": tokenizer.eos_token_id,
        }
        self.last: dict[str, Any] = history[-1] if history else {}

    def measure(self, model: Any, step: int) -> dict[str, Any]:
        """Validation reward and accuracy of ``model`` (logged by :meth:`validate`): of one greedy completion
        per problem, or, sampled, the means over ``n`` completions per problem, as TRL's evaluation reports
        them (seeded by the run seed and the step, so a resumed run validates as an uninterrupted one)."""
        from pspo_repro.evaluation import grading

        s = self.settings
        sampled = s.sampled_validation()
        if sampled is None:
            completions = greedy_completions(
                model, self.tokenizer, self.texts, s.max_completion_length, s.eval_batch_size
            )
            n = 1
        else:
            n = sampled["n"]
            options = {
                "temperature": sampled["temperature"],
                "top_p": sampled["top_p"],
                **self.sampler_options,
            }
            seed = s.seed * 1_000_003 + step
            groups = sampled_completions(
                model,
                self.tokenizer,
                self.texts,
                s.max_completion_length,
                s.eval_batch_size,
                n,
                seed,
                options,
            )
            completions = [c for group in groups for c in group]
        reward_fn = rewards.get(s.reward)
        answers = [p.answer for p in self.problems for _ in range(n)]
        kinds = [p.kind for p in self.problems for _ in range(n)]
        rs = reward_fn(None, completions, answer=answers, kind=kinds)
        grades = [grading.score(c, a, k) for c, a, k in zip(completions, answers, kinds, strict=True)]
        record = {
            "step": step,
            "reward": sum(rs) / len(rs),
            "strict": sum(g.strict for g in grades) / len(grades),
            "flexible": sum(g.flexible for g in grades) / len(grades),
            "n": len(self.problems),
        }
        if sampled is not None:
            record["completions"] = len(completions)
        return record

    def validate(self, model: Any, step: int) -> dict[str, Any]:
        if not distributed.is_main_process():  # GPU options: one process validates, the others wait
            distributed.wait_for_everyone()
            return {}
        if step == 0 and self.initial is not None:
            record = {**self.initial, "step": 0}
        else:
            record = self.measure(model, step)
        record["best"] = step > 0 and record["reward"] > self.best
        if record["best"]:
            self.best = record["reward"]
            self._save_checkpoint(model, step)
        rundir.append_jsonl(self.run_dir / rundir.VALIDATION, record)
        self.last = record
        distributed.wait_for_everyone()
        return record

    def _save_checkpoint(self, model: Any, step: int) -> None:
        tmp = self.run_dir / f"{rundir.CHECKPOINT}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        rundir.atomic_write_json(tmp / rundir.CHECKPOINT_STEP, {"step": step})
        if self.settings.save_steps:
            # With trainer checkpoints, a new best waits in checkpoint.next until the trainer checkpoint of its
            # step (or a later one) is complete: a run resumed from an earlier one never finds a best model
            # from the steps it is about to redo.
            rundir.replace_dir(tmp, self.run_dir / STAGED_BEST)
        else:
            rundir.replace_dir(tmp, self.run_dir / rundir.CHECKPOINT)

    def promote(self) -> None:
        """Make a staged best checkpoint the run's best (see :meth:`_save_checkpoint`)."""
        if (self.run_dir / STAGED_BEST).is_dir():
            rundir.replace_dir(self.run_dir / STAGED_BEST, self.run_dir / rundir.CHECKPOINT)

    def on_save(self, args, state, control, **kwargs):
        self.promote()

    def on_train_end(self, args, state, control, **kwargs):
        self.promote()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.validate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.settings.eval_every == 0 or step == state.max_steps:
            self.validate(model, step)


class RunLog(TrainerCallback):
    """TRL's logged metrics to train_log.jsonl, and a progress bar with reward and time left."""

    def __init__(self, run_dir: Path, validation: Validation, progress: bool = True, elapsed: float = 0.0):
        self.path = run_dir / rundir.TRAIN_LOG
        self.validation = validation
        self.progress = progress
        self.main = distributed.is_main_process()  # GPU options: one process logs
        self.bar: tqdm | None = None
        self.elapsed = elapsed  # training seconds before this process (a resumed run)
        self.start = time.time() - elapsed

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and self.main),
        )
        self.start = time.time() - self.elapsed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not self.main:
            return
        rundir.append_jsonl(self.path, {"step": state.global_step, "time": time.time() - self.start, **logs})
        if self.bar is not None:
            post = {k: f"{logs[k]:.3f}" for k in ("reward",) if isinstance(logs.get(k), float)}
            if self.validation.last:
                post["val"] = f"{self.validation.last['reward']:.3f}"
            self.bar.set_postfix(post, refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


# --- the run ------------------------------------------------------------------------------------


# The optimizer updates float32 master weights whatever the device; bf16 is autocast only (TrainingArguments'
# ``bf16=True``), as in the authors' runs, where TRL loaded the model from a path in float32. Adam steps of
# about lr = 5e-7 are far below half a bf16 rounding step of nearly every weight: bf16 weights would not move.
MASTER_WEIGHTS_DTYPE = torch.float32


def grpo_config(settings: TrainSettings, run_dir: Path) -> Any:
    from pspo_repro.training.trainer import PSPOGRPOConfig

    s = settings
    gpu = torch.cuda.is_available()
    # GPU options: the profile's per-step batch kept whatever the number of processes (pspo_repro.training.distributed)
    layout = distributed.settings_layout(s)
    return PSPOGRPOConfig(
        output_dir=str(run_dir / rundir.TRAINER_OUTPUT),
        objective=s.objective,
        **{name: getattr(s, name) for name in objectives.parameter_names()},
        importance_sampling_level=s.ratio_level,
        shuffle_advantages=s.shuffle_advantages,
        probes=s.probes,
        probe_every=s.probe_every,
        probes_file=str(run_dir / rundir.PROBES),
        seed=s.seed,
        data_seed=s.seed,
        learning_rate=s.learning_rate,
        optim="sgd" if s.optimizer == "sgd" else "adamw_torch",
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=layout.batch_size,
        gradient_accumulation_steps=layout.grad_accum,
        steps_per_generation=layout.steps_per_generation,
        num_iterations=s.num_iterations,
        num_generations=s.num_generations,
        temperature=s.temperature,
        top_p=s.top_p,
        max_completion_length=s.max_completion_length,
        loss_type=s.loss_type,
        beta=s.beta,
        max_grad_norm=s.max_grad_norm,
        weight_decay=s.weight_decay,
        gradient_checkpointing=s.gradient_checkpointing,
        **rollouts.grpo_kwargs(s),  # GPU options: vLLM rollouts
        bf16=gpu if s.bf16 is None else s.bf16,
        logging_steps=s.logging_steps,
        save_strategy="steps" if s.save_steps else "no",
        save_steps=s.save_steps or 500,  # unused without a save strategy; transformers wants a positive value
        save_total_limit=s.save_total_limit,
        report_to=s.trackers() or "none",
        run_name=f"{Path(s.model).name}/{s.label or s.objective}/seed{s.seed}",
        disable_tqdm=True,
        use_cpu=not gpu,
    )


def _initial_validation_path(source: loading.ModelSource, settings: TrainSettings) -> Path | None:
    """Where the step-0 validation of a cached tiny model is kept, or None for other models.

    Greedy validation of the starting model is the same for every run that starts from it (every
    objective and seed of a study), so it is computed once. Only tiny models qualify: their folder name
    carries the fingerprint of their weights."""
    from pspo_repro.models import tiny

    folder = Path(source.path)
    if source.gguf_file or folder.parent != tiny.cache_root() / "tiny":
        return None
    key = {
        "model": folder.name,
        "dataset": settings.dataset,
        "validation_limit": settings.validation_limit,
        "max_completion_length": settings.max_completion_length,
        "reward": settings.reward,
        # only when not the default, so that the step-0 records cached before this setting stay valid
        **({"system_prompt": settings.system_prompt} if settings.system_prompt != prompts.DEFAULT else {}),
    }
    sampled = settings.sampled_validation()
    if sampled is not None:  # sampled validation depends on the seed too (greedy keys stay as they were)
        key.update(validation=sampled, seed=settings.seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return tiny.cache_root() / "validation" / f"{folder.name}-{digest}.json"


def last_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest complete trainer checkpoint of a run, as (step, folder), or None.

    transformers writes trainer_state.json last, so a checkpoint cut short by a crash has none, or a torn one."""
    found = []
    for folder in (run_dir / rundir.TRAINER_OUTPUT).glob("checkpoint-*"):
        try:
            state = rundir.read_json(folder / "trainer_state.json")
            step = int(folder.name.removeprefix("checkpoint-"))
        except (OSError, ValueError):
            continue
        if state.get("global_step") == step:
            found.append((step, folder))
    return max(found, default=None)


def _resume_point(run_dir: Path, settings: TrainSettings) -> tuple[int, Path] | None:
    """The checkpoint to resume from: the newest complete one, when the run was started with these very
    settings (anything else is another run and starts afresh)."""
    if not settings.save_steps or not (run_dir / rundir.CONFIG).is_file():
        return None
    same = rundir.read_json(run_dir / rundir.CONFIG) == json.loads(json.dumps(settings.to_dict()))
    return last_checkpoint(run_dir) if same else None


def _rewind(run_dir: Path, step: int) -> float:
    """Drop what a crashed run wrote after its checkpoint at ``step``, so that the resumed run's logs are one
    history; returns the training seconds spent up to that step."""
    for name in LOGS:
        kept = [r for r in rundir.read_jsonl(run_dir / name) if r["step"] <= step]
        rundir.atomic_write_text(run_dir / name, "".join(json.dumps(r, default=str) + "\n" for r in kept))
    best, staged, old = run_dir / rundir.CHECKPOINT, run_dir / STAGED_BEST, run_dir / "checkpoint.old"
    if not best.exists() and old.is_dir():  # a crash inside replace_dir, between its two renames
        os.replace(old, best)
    shutil.rmtree(old, ignore_errors=True)
    if staged.is_dir():
        staged_step = rundir.read_json(staged / rundir.CHECKPOINT_STEP)["step"]
        if staged_step <= step:  # confirmed by the checkpoint; the crash came before it was promoted
            rundir.replace_dir(staged, best)
        else:
            shutil.rmtree(staged)
    times = [r["time"] for r in rundir.read_jsonl(run_dir / rundir.TRAIN_LOG) if "time" in r]
    return max(times, default=0.0)


def _check_trackers_installed(settings: TrainSettings) -> None:
    from transformers.integrations import get_available_reporting_integrations

    installed = get_available_reporting_integrations()
    missing = [name for name in settings.trackers() if name not in installed]
    if missing:
        raise ValueError(
            f"report_to names tracker(s) {missing} whose package is not installed; installed trackers: "
            f"{', '.join(installed) or 'none'}"
        )


def _prepare_run_dir(run_dir: Path, settings: TrainSettings, resume: tuple[int, Path] | None) -> float:
    """Make the run folder ready to train into; returns the training seconds already spent (a resumed run)."""
    if resume is None:
        # A run that died part-way without a usable checkpoint restarts: its logs would mix two histories.
        for name in (*rundir.TRAINING_OUTPUTS, STAGED_BEST):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_json(run_dir / rundir.CONFIG, settings.to_dict())
        prov = rundir.provenance(settings.seed)
        elapsed = 0.0
    else:
        elapsed = _rewind(run_dir, resume[0])
        started_as = run_dir / rundir.PROVENANCE
        prov = rundir.read_json(started_as) if started_as.is_file() else rundir.provenance(settings.seed)
        now = rundir.provenance(settings.seed)
        prov.setdefault("resumed", []).append(
            {
                "step": resume[0],
                "at": now["started"],
                "git_commit": now["git_commit"],
                "git_dirty": now["git_dirty"],
            }
        )
    prov["processes"] = distributed.world_size()
    rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)
    return elapsed


def train(
    settings: TrainSettings,
    run_dir: str | os.PathLike,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train one configuration into ``run_dir``; a finished run (DONE present) is left as it is.

    A run cut short resumes from its newest trainer checkpoint (``save_steps``) when it has one and was
    started with the same settings; its logs keep the records up to that checkpoint and drop the rest, so
    each step appears once. Otherwise it starts from scratch. The model and the data are resolved before
    anything is written, so a bad name leaves no run folder. ``callbacks`` are extra ``TrainerCallback``s
    (a study's progress display)."""
    from pspo_repro.training.trainer import PSPOGRPOTrainer

    run_dir = Path(run_dir)
    if rundir.is_done(run_dir):
        return run_dir
    rollouts.require_vllm(settings)  # GPU options: both fail before anything is written
    distributed.settings_layout(settings)
    source = loading.resolve(settings.model)
    _check_trackers_installed(settings)
    train_problems, validation_problems = load_problems(settings)
    tokenizer = loading.load_tokenizer(source)

    resume = _resume_point(run_dir, settings)
    elapsed = 0.0
    if distributed.is_main_process():  # GPU options: one process writes the run's files
        elapsed = _prepare_run_dir(run_dir, settings, resume)

    model = loading.load_model(source, dtype=MASTER_WEIGHTS_DTYPE)
    model.train()

    cache = _initial_validation_path(source, settings)
    initial = rundir.read_json(cache) if cache is not None and cache.is_file() else None
    history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
    validation = Validation(
        run_dir, settings, validation_problems, tokenizer, initial=initial, history=history
    )
    trainer = PSPOGRPOTrainer(
        model=model,
        reward_funcs=[rewards.get(settings.reward)],
        args=grpo_config(settings, run_dir),
        train_dataset=to_dataset(train_problems, settings.system_prompt),
        processing_class=tokenizer,
        callbacks=[validation, RunLog(run_dir, validation, progress, elapsed), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # RunLog writes the metrics; no dicts on the terminal
    validation.sampler_options = {
        "top_k": trainer.args.top_k,
        "min_p": trainer.args.min_p,
        "repetition_penalty": trainer.args.repetition_penalty,
        "eos_token_id": trainer.eos_token_ids,
    }
    for callback in trainer.callback_handler.callbacks:
        # TensorBoard would write under the trainer folder, which goes when the run is done
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / "tensorboard")
    started = time.time() - elapsed
    state = rundir.read_json(resume[1] / "trainer_state.json") if resume else None
    if state is not None and state["global_step"] >= state["max_steps"]:
        steps = state["global_step"]  # the crash came after the last step: nothing is left to train
        validation.promote()
    else:
        trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
        steps = trainer.state.global_step
    seconds = time.time() - started
    if not distributed.is_main_process():  # GPU options: the main process finishes the run
        distributed.wait_for_everyone()
        return run_dir
    shutil.rmtree(run_dir / rundir.TRAINER_OUTPUT, ignore_errors=True)

    prov = rundir.read_json(run_dir / rundir.PROVENANCE)
    prov.update(finished=rundir.now(), train_seconds=seconds, steps=steps)
    rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)
    history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
    if cache is not None and initial is None:
        rundir.atomic_write_json(cache, {k: v for k, v in history[0].items() if k != "best"})
    # The best checkpoint is chosen among the steps after 0 (see Validation).
    best = max([r for r in history if r["step"] > 0] or history, key=lambda r: r["reward"])
    rundir.mark_done(
        run_dir,
        {
            "steps": steps,
            "seconds": seconds,
            "seconds_per_step": seconds / max(steps, 1),
            "validation_first": history[0],
            "validation_last": history[-1],
            "validation_best": best,
        },
    )
    distributed.wait_for_everyone()  # GPU options: the other processes return once DONE is written
    return run_dir
