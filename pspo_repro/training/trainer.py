"""TRL's GRPOTrainer with a pluggable per-token objective (:mod:`pspo_repro.training.objectives`) and probes.

Only the policy loss changes: generation, rewards, advantages, rollout reuse (``num_iterations``,
``steps_per_generation``), the KL term (``beta``), the vLLM importance-sampling correction and the loss
aggregation (``loss_type``) are TRL's. ``loss_type`` selects only the aggregation here (grpo, bnpo,
dr_grpo, dapo); the per-token loss comes from the objective. TRL's objectives map as: its clip losses
(grpo, bnpo, dr_grpo, dapo) are ``clip`` with that aggregation, ``sapo`` is ``sigmoid`` with grpo,
``cispo`` and ``vespo`` are those objectives with dapo, and importance_sampling_level "sequence" with grpo
is ``gspo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from pspo_repro.study import rundir
from pspo_repro.training import objectives
from pspo_repro.training.probes import ProbeLog, StepProbe, gradient_cosine, group_grad_norms

AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass
class PSPOGRPOConfig(GRPOConfig):
    """GRPOConfig plus the objective and the probes. The objectives' parameters carry TRL's names where TRL
    has them (``epsilon``/``epsilon_high``: the clip's range and CISPO's cap; SAPO's temperatures for
    ``sigmoid``; ``vespo_*``), see :data:`objectives.PARAMS`."""

    objective: str = field(
        default="pspo",
        metadata={
            "help": "Per-token policy objective: one of clip, pspo, sigmoid, topr, noclip, dualclip, gspo, "
            "cispo, vespo."
        },
    )
    importance_sampling_level: str | None = field(
        default=None,
        metadata={
            "help": "Importance ratio per 'token' or per 'sequence'; default: the objective's own (sequence for "
            "gspo, token for the others)."
        },
    )
    clip_ratio_c: float = field(
        default=3.0,
        metadata={"help": "dualclip: for A < 0 the loss is capped at -clip_ratio_c * A (verl's name); > 1."},
    )
    alpha: float = field(
        default=0.1,
        metadata={"help": "PSPO smoothing: pi~ = (1 - alpha) pi_theta + alpha pi_old; in [0, 1]."},
    )
    shuffle_advantages: bool = field(
        default=False,
        metadata={
            "help": "Noise-floor control: permute the advantages across the generation batch, which keeps "
            "their distribution and removes the reward signal."
        },
    )
    probes: bool = field(
        default=True,
        metadata={"help": "Record gradient probes (probes.jsonl) at every optimizer step."},
    )
    probes_file: str | None = field(
        default=None,
        metadata={"help": "Where probes are written; default <output_dir>/probes.jsonl."},
    )
    probe_every: int = field(
        default=11,
        metadata={
            "help": "Every K optimizer steps also record the gradient cosine to the unclipped surrogate (on the "
            "step's first micro-batch) and a sample of (ratio, advantage, weight) triples; 0 turns these off. "
            "K must not be a multiple of the optimizer steps per generation, or every probe lands on the same "
            "(freshest) step of the reuse cycle; the odd default never is for the usual even cycles."
        },
    )
    probe_samples: int = field(
        default=256,
        metadata={"help": "Number of (ratio, advantage, weight) triples sampled on probe steps."},
    )

    def __post_init__(self) -> None:
        # resolved first, so that TRL's own checks and metrics see the level the objective runs at
        self.importance_sampling_level = objectives.level_of(self.objective, self.importance_sampling_level)
        super().__post_init__()
        if self.loss_type not in AGGREGATIONS:
            raise ValueError(
                f"loss_type {self.loss_type!r} is not an aggregation this trainer supports; "
                f"allowed: {', '.join(AGGREGATIONS)} (the per-token loss comes from `objective`)"
            )
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {self.probe_every}")
        cycle = self.optimizer_steps_per_generation()
        if self.probes and self.probe_every > 0 and cycle > 1 and self.probe_every % cycle == 0:
            raise ValueError(
                f"probe_every={self.probe_every} is a multiple of the {cycle} optimizer steps per generation "
                f"(steps_per_generation x num_iterations / gradient_accumulation_steps), so every probe would "
                f"land on the first step of the cycle, before any update, where every ratio is 1 up to "
                f"rounding; choose a K that is not a multiple of {cycle}, e.g. {self.probe_every + 1}"
            )
        objective = self.build_objective()  # validates the objective name and its parameters early
        correction = self.use_vllm and self.vllm_importance_sampling_correction
        objectives.check_settings(
            self.objective, self.loss_type, self.vllm_importance_sampling_mode if correction else None
        )
        # Values the objective resolved (CISPO's cap when epsilon_high is unset) written back under TRL's names,
        # so TRL's trainer reads what the loss uses: TRL's own fallback for epsilon_high is epsilon (0.2).
        for name, value in objective.params.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def optimizer_steps_per_generation(self) -> int:
        """How many optimizer steps one generation batch serves (1: on-policy; every ratio is then exactly 1
        where TRL keeps no old log-probabilities, and 1 up to rounding where it scores them in a pass of its
        own, as for vLLM's importance-sampling correction: :mod:`pspo_repro.analysis.staleness_numerics`)."""
        micro_steps = self.steps_per_generation * self.num_iterations
        return max(1, micro_steps // self.gradient_accumulation_steps)

    def build_objective(self) -> objectives.Objective:
        """The objective with its parameters, read from this config under the same names (objectives.PARAMS)."""
        params = objectives.params_of(self.objective, self)
        return objectives.get(self.objective, level=self.importance_sampling_level, **params)


class _ProbeFlush(TrainerCallback):
    """Writes the probe record of each optimizer step once the step is complete."""

    def __init__(self, trainer: PSPOGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._flush_probes(state.global_step)


class EpochSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose order in epoch e is the (e + 1)-th permutation of its seeded generator,
    whether the run reached epoch e by iterating or by resuming from a checkpoint. TRL's sampler has no
    ``set_epoch`` and starts its generator afresh, so a run resumed in a later epoch would replay the first
    epoch's order; uninterrupted runs see exactly TRL's order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0
        self._drawn = 0  # permutations taken from the generator so far

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            for _ in range(self.epoch - self._drawn):  # resumed in a later epoch: skip the earlier orders
                torch.randperm(self.num_samples, generator=self.generator)
            self._drawn = max(self._drawn, self.epoch) + 1
        yield from super().__iter__()


# Our generators' states, saved beside transformers' rng_state.pth in each trainer checkpoint (one per process).
RNG_STATE_FILE = "pspo_rng_state{}.pth"


class PSPOGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose per-token loss is an objective from the registry."""

    _unsupported = {
        "top_entropy_quantile": lambda a: a.top_entropy_quantile < 1.0,
        "off_policy_mask_threshold": lambda a: a.off_policy_mask_threshold is not None,
        "delta": lambda a: a.delta is not None,
        "entropy_coef": lambda a: a.entropy_coef != 0.0 or a.use_adaptive_entropy,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PSPOGRPOConfig):
            raise TypeError("PSPOGRPOTrainer needs a PSPOGRPOConfig")
        bad = [k for k, is_set in self._unsupported.items() if is_set(self.args)]
        if bad:
            raise ValueError(f"PSPOGRPOTrainer does not support these GRPOConfig options: {', '.join(bad)}")
        self.objective = self.args.build_objective()
        self._noclip = objectives.get("noclip", level=self.objective.level)
        path = self.args.probes_file or os.path.join(self.args.output_dir, rundir.PROBES)
        # the main process writes the probes of the whole step (see _flush_probes)
        main = self.accelerator.is_main_process
        self.probe_log = ProbeLog(path if self.args.probes and main else None, seed=self.args.seed)
        if self.args.probes:
            self.add_callback(_ProbeFlush(self))
        self._shuffle_generator = torch.Generator().manual_seed(self.args.seed)

    def _get_train_sampler(self, dataset=None):
        s = super()._get_train_sampler(dataset)
        return EpochSampler(
            s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle, s.seed
        )

    # --- resuming: the probe sampler and the advantage shuffle continue where the checkpoint left them ----

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        states = {
            "probes": self.probe_log.generator.get_state(),
            "shuffle": self._shuffle_generator.get_state(),
        }
        torch.save(states, os.path.join(output_dir, self._rng_state_file()))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, self._rng_state_file()) if checkpoint is not None else None
        if path is not None and os.path.isfile(path):
            states = torch.load(path, weights_only=True)
            self.probe_log.generator.set_state(states["probes"])
            self._shuffle_generator.set_state(states["shuffle"])

    def _rng_state_file(self) -> str:
        return RNG_STATE_FILE.format(f"_{self.args.process_index}" if self.args.world_size > 1 else "")

    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if self.args.shuffle_advantages:
            adv = batch["advantages"]
            perm = torch.randperm(adv.size(0), generator=self._shuffle_generator).to(adv.device)
            batch["advantages"] = adv[perm]
        return batch

    # --- probes -----------------------------------------------------------------------------------

    def _probe_step(self) -> bool:
        """Whether the optimizer step in progress is one of the every-K probe steps (1, K + 1, ...)."""
        k = self.args.probe_every
        return self.args.probes and k > 0 and self.state.global_step % k == 0

    def _clip_grad_norm(self, model):
        if self.args.probes:
            self.probe_log.current.grad_norm_groups = group_grad_norms(model.named_parameters())
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if self.args.probes and grad_norm is None:  # no clipping: norms were not taken above
            self.probe_log.current.grad_norm_groups = group_grad_norms(model.named_parameters())
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # None: DeepSpeed had no global norm to report for this step
        self.probe_log.current.grad_norm = None if norm is None else float(norm)
        return norm

    def _flush_probes(self, step: int) -> None:
        current, self.probe_log.current = self.probe_log.current, StepProbe()
        if self.accelerator.num_processes > 1:  # every process saw part of the step's batch
            current = StepProbe.merged(gather_object([current]))
        n = self.args.probe_samples if current.cosines else 0
        # the objective's ratio range (the clip's, CISPO's cap); TRL's clip range for objectives without one
        lo, hi = self.objective.bounds or (1.0 - self.epsilon_low, 1.0 + self.epsilon_high)
        record = current.summary(lo, hi, n, self.probe_log.generator)
        # Optimizer updates made since the rollouts of this step were generated (0: on-policy).
        record["staleness"] = (step - 1) % self.args.optimizer_steps_per_generation()
        self.probe_log.write(step, record)

    # --- the loss ---------------------------------------------------------------------------------

    def _aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """TRL's aggregation for ``loss_type`` (token mean per sequence, batch token mean, ...)."""
        train = self.model.training
        accum = self.current_gradient_accumulation_steps if train else 1.0
        masked = per_token_loss * mask
        if self.loss_type == "grpo":
            return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accum
        if self.loss_type == "bnpo":
            return masked.sum() / mask.sum().clamp(min=1.0) / accum
        if self.loss_type == "dr_grpo":
            return masked.sum() / (per_token_loss.size(0) * self.max_completion_length) / accum
        # dapo: normalise by the token count of the whole generation batch, rescaled to one window
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if train:
            normalizer = (
                normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            )
        return masked.sum() / normalizer

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, inputs["completion_mask"]], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_logps = inputs.get("old_per_token_logps")
        # None: TRL kept no old log-probabilities (on-policy), so r = 1 exactly; kept ones come from a pass of
        # their own, and at staleness 0 r is 1 up to that pass's rounding (analysis/staleness_numerics.py)
        old_logps = logps.detach() if old_logps is None else old_logps

        log_r = objectives.log_ratio(logps, old_logps, self.objective.level, mask)
        if (
            self.use_vllm
            and self.args.probes
            and self.model.training
            and "sampling_per_token_logps" in inputs
        ):
            # old_logps are the trainer's log-probabilities under the weights vLLM sampled with
            self.probe_log.current.add_logp_diff(old_logps, inputs["sampling_per_token_logps"], mask)
        # vLLM's importance-sampling ratio: the objective multiplies its loss by it (VESPO folds it in)
        is_ratio = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            is_ratio = inputs["importance_sampling_ratio"]
            if self.args.probes and self.model.training:
                self.probe_log.current.add_is_weights(is_ratio, mask)
        per_token_loss = self.objective.loss_from_log_ratio(
            log_r, advantages, like=logps, mask=mask, logp=logps, is_ratio=is_ratio
        )
        # The cosine needs two extra backward passes: taken on the first micro-batch of a probe step only (the
        # statistic it reports), not on every one of the step's grad_accum micro-batches.
        probe_cos = (
            self.args.probes
            and self.model.training
            and self._probe_step()
            and not self.probe_log.current.cosines
        )
        if probe_cos:
            unclipped = self._noclip.loss_from_log_ratio(log_r, advantages, like=logps, is_ratio=is_ratio)
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(log_r)
        policy_loss = per_token_loss
        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl

        loss = self._aggregate(per_token_loss, mask, inputs)

        mode = "train" if self.model.training else "eval"
        masked_mean = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
        self._metrics[mode]["entropy"].append(self.accelerator.gather(masked_mean).mean().item())
        if self.beta != 0.0:
            kl_mean = (per_token_kl * mask).sum() / mask.sum().clamp(min=1.0)
            self._metrics[mode]["kl"].append(self.accelerator.gather(kl_mean).mean().item())

        if self.args.probes and self.model.training:
            lr = log_r.detach()
            weight = self.objective.token_weight(lr, advantages, mask, is_ratio)
            seq = self.objective.sequence_log_ratio(lr, mask, is_ratio)
            seq_ratio = None if seq is None else torch.exp(seq)
            self.probe_log.current.add_tokens(torch.exp(lr), advantages, weight, mask, entropies, seq_ratio)
            if probe_cos:
                params = [p for p in model.parameters() if p.requires_grad]
                pair = self._aggregate(policy_loss, mask, inputs), self._aggregate(unclipped, mask, inputs)
                self.probe_log.current.cosines.append(gradient_cosine(params, *pair))
        return loss
