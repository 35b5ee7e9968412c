"""One training run: settings in, a complete run directory out (see :mod:`pspo_repro.rundir`)."""

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

from pspo_repro import data, models, objectives, prompts, rewards, rundir

DATASETS = ("gsm8k", "synthetic")


@dataclass
class TrainSettings:
    """Everything that defines a run. Defaults are the authors' script for Qwen2.5-0.5B with PSPO."""

    model: str = field(default="Qwen/Qwen2.5-0.5B", metadata={"help": "hub id, local folder or tiny name"})
    objective: str = field(default="pspo", metadata={"help": "clip, pspo, sigmoid, topr or noclip"})
    label: str | None = field(
        default=None, metadata={"help": "the run's name in a study (e.g. clip-shuffled); default: objective"}
    )
    alpha: float = field(default=0.1, metadata={"help": "PSPO smoothing in [0, 1]"})
    eps: float = field(default=0.1, metadata={"help": "clip range (the authors intended 0.1 at 0.5B)"})
    eps_high: float | None = field(default=None, metadata={"help": "upper clip range; default eps"})
    tau_pos: float = field(default=1.0, metadata={"help": "sigmoid temperature for A > 0"})
    tau_neg: float = field(default=1.05, metadata={"help": "sigmoid temperature for A <= 0"})
    ratio_level: str = field(default="token", metadata={"help": "importance ratio per 'token' or 'sequence'"})
    dataset: str = field(default="gsm8k", metadata={"help": "training data: gsm8k or synthetic"})
    data_dir: str | None = field(default=None, metadata={"help": "local benchmark folder (else the hub)"})
    reward: str = field(default="paper", metadata={"help": "paper (authors' shaped reward) or strict"})
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
    max_prompt_length: int = 512
    loss_type: str = field(default="dapo", metadata={"help": "aggregation: dapo, grpo, bnpo, dr_grpo"})
    beta: float = 0.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    shuffle_advantages: bool = field(
        default=False, metadata={"help": "noise-floor control: no reward signal"}
    )
    eval_every: int = field(default=100, metadata={"help": "validation every N optimizer steps"})
    validation_limit: int | None = field(default=None, metadata={"help": "first N validation problems"})
    eval_batch_size: int = 64
    probes: bool = True
    probe_every: int = 11  # not a multiple of the steps per generation (see PSPOGRPOConfig)
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "trade compute for memory (TRL's default is on; it disables the KV cache)"},
    )
    use_vllm: bool = False
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast over fp32 weights; default: on when a GPU is present"},
    )
    logging_steps: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.reward not in rewards.REWARDS:
            raise ValueError(f"reward must be one of {', '.join(rewards.REWARDS)}, got {self.reward!r}")
        if self.eval_every <= 0:
            raise ValueError(f"eval_every must be > 0, got {self.eval_every}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        self.objective_params()  # validates the objective name and parameters

    def objective_params(self) -> dict[str, float]:
        params = {
            "clip": {"eps": self.eps, "eps_high": self.eps_high},
            "pspo": {"alpha": self.alpha},
            "sigmoid": {"tau_pos": self.tau_pos, "tau_neg": self.tau_neg},
        }.get(self.objective, {})
        objectives.get(self.objective, level=self.ratio_level, **params)
        return {k: v for k, v in params.items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known settings: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def load_problems(settings: TrainSettings) -> tuple[list[data.Problem], list[data.Problem]]:
    """Training and validation problems: GSM8K split 7,000 / 472 by the run seed, or the synthetic splits."""
    if settings.dataset == "gsm8k":
        train, validation = data.gsm8k_train_validation(settings.seed, data_dir=settings.data_dir)
    else:
        train = data.load("synthetic", "train")
        validation = data.load("synthetic", "validation")
    if settings.validation_limit is not None:
        validation = validation[: settings.validation_limit]
    return train, validation


def to_dataset(problems: list[data.Problem]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": prompts.chat_messages(p.question, p.kind), "answer": p.answer, "kind": p.kind}
            for p in problems
        ]
    )


# --- validation and the best checkpoint ---------------------------------------------------------


@torch.inference_mode()
def greedy_completions(
    model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy completions of rendered prompts, batched by length with left padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = enc.to(model.device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts_out = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(idx, texts_out, strict=True):
                out[i] = text
    finally:
        tokenizer.padding_side = side
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
        problems: list[data.Problem],
        tokenizer: Any,
        initial: dict[str, Any] | None = None,
    ):
        self.run_dir, self.settings, self.problems, self.tokenizer = run_dir, settings, problems, tokenizer
        self.texts = [prompts.render_prompt(tokenizer, p.question, p.kind) for p in problems]
        self.initial = initial
        self.best: float = -math.inf
        self.last: dict[str, Any] = {}

    def measure(self, model: Any, step: int) -> dict[str, Any]:
        """Greedy validation reward and accuracy of ``model`` (logged by :meth:`validate`)."""
        from pspo_repro import grading

        s = self.settings
        completions = greedy_completions(
            model, self.tokenizer, self.texts, s.max_completion_length, s.eval_batch_size
        )
        reward_fn = rewards.get(s.reward)
        answers = [p.answer for p in self.problems]
        kinds = [p.kind for p in self.problems]
        rs = reward_fn(None, completions, answer=answers, kind=kinds)
        grades = [grading.score(c, a, k) for c, a, k in zip(completions, answers, kinds, strict=True)]
        return {
            "step": step,
            "reward": sum(rs) / len(rs),
            "strict": sum(g.strict for g in grades) / len(grades),
            "flexible": sum(g.flexible for g in grades) / len(grades),
            "n": len(grades),
        }

    def validate(self, model: Any, step: int) -> dict[str, Any]:
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
        return record

    def _save_checkpoint(self, model: Any, step: int) -> None:
        tmp = self.run_dir / f"{rundir.CHECKPOINT}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        rundir.atomic_write_json(tmp / rundir.CHECKPOINT_STEP, {"step": step})
        rundir.replace_dir(tmp, self.run_dir / rundir.CHECKPOINT)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.validate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.settings.eval_every == 0 or step == state.max_steps:
            self.validate(model, step)


class RunLog(TrainerCallback):
    """TRL's logged metrics to train_log.jsonl, and a progress bar with reward and time left."""

    def __init__(self, run_dir: Path, validation: Validation, progress: bool = True):
        self.path = run_dir / rundir.TRAIN_LOG
        self.validation = validation
        self.progress = progress
        self.bar: tqdm | None = None
        self.start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps, desc="train", unit="step", dynamic_ncols=True, disable=not self.progress
        )
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
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
    from pspo_repro.trainer import PSPOGRPOConfig

    s = settings
    gpu = torch.cuda.is_available()
    return PSPOGRPOConfig(
        output_dir=str(run_dir / rundir.TRAINER_OUTPUT),
        objective=s.objective,
        alpha=s.alpha,
        epsilon=s.eps,
        epsilon_high=s.eps_high,
        sapo_temperature_pos=s.tau_pos,
        sapo_temperature_neg=s.tau_neg,
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
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        steps_per_generation=s.steps_per_generation,
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
        use_vllm=s.use_vllm,
        vllm_mode="colocate",
        bf16=gpu if s.bf16 is None else s.bf16,
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
    )


def _initial_validation_path(source: models.ModelSource, settings: TrainSettings) -> Path | None:
    """Where the step-0 validation of a cached tiny model is kept, or None for other models.

    Greedy validation of the starting model is the same for every run that starts from it (every
    objective and seed of a study), so it is computed once. Only tiny models qualify: their folder name
    carries the fingerprint of their weights."""
    from pspo_repro import tiny

    folder = Path(source.path)
    if source.gguf_file or folder.parent != tiny.cache_root() / "tiny":
        return None
    key = {
        "model": folder.name,
        "dataset": settings.dataset,
        "validation_limit": settings.validation_limit,
        "max_completion_length": settings.max_completion_length,
        "reward": settings.reward,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return tiny.cache_root() / "validation" / f"{folder.name}-{digest}.json"


def train(
    settings: TrainSettings,
    run_dir: str | os.PathLike,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train one configuration into ``run_dir``; a finished run (DONE present) is left as it is.

    The model and the data are resolved before anything is written, so a bad name leaves no run folder.
    ``callbacks`` are extra ``TrainerCallback``s (a study's progress display)."""
    from pspo_repro.trainer import PSPOGRPOTrainer

    run_dir = Path(run_dir)
    if rundir.is_done(run_dir):
        return run_dir
    source = models.resolve(settings.model)
    train_problems, validation_problems = load_problems(settings)
    tokenizer = models.load_tokenizer(source)

    # A run that died part-way restarts from scratch: its logs would mix two histories.
    for name in rundir.TRAINING_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_json(run_dir / rundir.CONFIG, settings.to_dict())
    prov = rundir.provenance(settings.seed)
    rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)

    model = models.load_model(source, dtype=MASTER_WEIGHTS_DTYPE)
    model.train()

    cache = _initial_validation_path(source, settings)
    initial = rundir.read_json(cache) if cache is not None and cache.is_file() else None
    validation = Validation(run_dir, settings, validation_problems, tokenizer, initial=initial)
    trainer = PSPOGRPOTrainer(
        model=model,
        reward_funcs=[rewards.get(settings.reward)],
        args=grpo_config(settings, run_dir),
        train_dataset=to_dataset(train_problems),
        processing_class=tokenizer,
        callbacks=[validation, RunLog(run_dir, validation, progress), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # RunLog writes the metrics; no dicts on the terminal
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    shutil.rmtree(run_dir / rundir.TRAINER_OUTPUT, ignore_errors=True)

    prov.update(finished=rundir.now(), train_seconds=seconds, steps=trainer.state.global_step)
    rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)
    history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
    if cache is not None and initial is None:
        rundir.atomic_write_json(cache, {k: v for k, v in history[0].items() if k != "best"})
    # The best checkpoint is chosen among the steps after 0 (see Validation).
    best = max([r for r in history if r["step"] > 0] or history, key=lambda r: r["reward"])
    rundir.mark_done(
        run_dir,
        {
            "steps": trainer.state.global_step,
            "seconds": seconds,
            "seconds_per_step": seconds / max(trainer.state.global_step, 1),
            "validation_first": history[0],
            "validation_last": history[-1],
            "validation_best": best,
        },
    )
    return run_dir
