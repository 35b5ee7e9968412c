"""The settings of one training run (:class:`TrainSettings`): every field validated with a clear error, read
back from a run folder's ``config.json`` (earlier parameter names and retired settings too)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspo_repro.data import prompts
from pspo_repro.study import rundir
from pspo_repro.training import objectives, rewards, rollouts

DATASETS = ("gsm8k", "synthetic")
VALIDATIONS = ("greedy", "sampled")
# Settings that no longer exist, with why; a run config that has one still reads (read_run_settings).
RETIRED = {
    "max_prompt_length": "TRL 1.16's GRPOConfig has no prompt truncation (prompts are passed whole), so it never "
    "had an effect; remove it",
}


CHECKPOINTS = ("best", "final")  # the checkpoint a run keeps and is evaluated with


@dataclass
class TrainSettings:
    """Everything that defines a run. Defaults are the authors' script for Qwen2.5-0.5B with PSPO."""

    model: str = field(default="Qwen/Qwen2.5-0.5B", metadata={"help": "hub id, local folder or tiny name"})
    objective: str = field(
        default="pspo",
        metadata={
            "help": "clip, pspo, sigmoid, topr, noclip, dualclip, gspo, cispo or vespo (objectives.py)"
        },
    )
    label: str | None = field(
        default=None, metadata={"help": "the run's name in a study (e.g. clip-shuffled); default: objective"}
    )
    # objective parameters (objectives.PARAMS), under GRPOConfig's names where TRL has the setting
    alpha: float = field(default=0.1, metadata={"help": "PSPO smoothing in [0, 1]"})
    epsilon: float = field(default=0.1, metadata={"help": "clip range (the authors intended 0.1 at 0.5B)"})
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "upper clip range, default epsilon; cispo: the cap on r, default 5 (ScaleRL's)"},
    )
    sapo_temperature_pos: float = field(default=1.0, metadata={"help": "sigmoid temperature for A > 0"})
    sapo_temperature_neg: float = field(default=1.05, metadata={"help": "sigmoid temperature for A <= 0"})
    clip_ratio_c: float = field(default=3.0, metadata={"help": "dualclip: loss cap -c A for A < 0 (> 1)"})
    # VESPO's gamma weight phi(W) = e^lambda W^k e^(-lambda W) of the sequence ratio W; TRL's defaults
    vespo_k_pos: float = field(default=2.0, metadata={"help": "vespo: k for A >= 0"})
    vespo_lambda_pos: float = field(default=3.0, metadata={"help": "vespo: lambda for A >= 0"})
    vespo_k_neg: float = field(default=3.0, metadata={"help": "vespo: k for A < 0"})
    vespo_lambda_neg: float = field(default=2.0, metadata={"help": "vespo: lambda for A < 0"})
    ratio_level: str | None = field(
        default=None,
        metadata={
            "help": "importance ratio per 'token' or 'sequence'; default the objective's (gspo: sequence)"
        },
    )
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
    num_iterations: int = field(
        default=2, metadata={"help": "updates per rollout batch (1, with no rollout reuse: ratio 1)"}
    )
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
    checkpoint: str = field(
        default="best",
        metadata={
            "help": "the checkpoint kept and evaluated: best (highest validation reward after step 0, the "
            "authors' load_best_model_at_end) or final (no selection)"
        },
    )
    validation_limit: int | None = field(default=None, metadata={"help": "first N validation problems"})
    train_limit: int | None = field(
        default=None, metadata={"help": "first N training problems (a smoke test's epoch); default: all"}
    )
    eval_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per validation generate call; default: as many as fit in the GPU's free "
            "memory (pspo_repro.models.footprint), 64 on a CPU"
        },
    )
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
        for name in ("train_limit", "validation_limit"):
            limit = getattr(self, name)
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or unset (every problem), got {limit}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.reward not in rewards.REWARDS:
            raise ValueError(f"reward must be one of {', '.join(rewards.REWARDS)}, got {self.reward!r}")
        prompts.check_system_prompt(self.system_prompt)
        if self.eval_every <= 0:
            raise ValueError(f"eval_every must be > 0, got {self.eval_every}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")
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
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be >= 1 (or unset: sized by memory), got {self.eval_batch_size}"
            )
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
        correction = self.use_vllm and self.vllm_importance_sampling_correction
        objectives.check_settings(
            self.objective, self.loss_type, self.vllm_importance_sampling_mode if correction else None
        )
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
