"""The importance ratio at staleness 0, in each precision: is pi_theta / pi_old exactly 1 on the first update
after a generation, and does a clip at eps 0 then zero any token's gradient by rounding alone?

Where TRL has old log-probabilities to keep (rollout reuse: ``num_iterations`` > 1 or ``steps_per_generation``
> ``gradient_accumulation_steps``; or vLLM's importance-sampling correction) it scores them in a pass of its
own when it generates: under ``torch.no_grad()``, over the generation batch in generation order, in chunks of
``per_device_train_batch_size`` rows (``GRPOTrainer._generate_and_score_completions``). The loss scores the
same tokens again, with gradients, on micro-batches of the shuffled generation (``_compute_loss``). At
staleness 0 the weights are the same, so any r != 1 there is rounding: the passes differ in grad mode, in
which rows share a forward pass and, with another chunk size, in the shapes of the matrix products (other
kernels, other summation orders). Under bf16 autocast the matrix products' operands round to bf16 (TRL's
fused LM head computes the logits in tiles of that dtype, the log-softmax in float32), so a last-bit
difference in an activation can move a bf16 rounding. Without old log-probabilities (on-policy, no vLLM
correction) TRL reuses the training pass's own, detached: r is then exactly 1 in every precision.

:func:`measure` scores one generation batch of real rollouts both ways with the trainer's own
``_get_per_token_logps_and_entropies`` (TRL's code path, fused LM head included): the old-policy pass with
no gradient at one chunk size, the training pass with gradients (and entropies, as the loss asks for them)
on micro-batches, for each precision (float32; bf16 autocast over the float32 weights, as TRL's ``bf16=True``)
and each :class:`Pairing` of the two batchings. The rollouts are sampled by the trainer (transformers'
generate, float32) from the run's own prompts. :func:`measure_settings` does it for a run's settings,
:func:`measure_model` for a model alone on the synthetic prompts. On CPUs (MKL and oneDNN) every pairing
measured gave r exactly 1 in both precisions (README, the claims audit); GPU kernels, chosen by shape, are
measured wherever the audit runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pspo_repro.models.precision import Precision
from pspo_repro.training import objectives

PRECISIONS = {"float32": Precision("float32", None), "bf16": Precision("float32", "bfloat16")}
# Training micro-batches (rows) that also meet the whole generation scored at once: GPU-sized micro-batches.
EXTRA_MICRO_BATCHES = (8, 16)


@dataclass(frozen=True)
class Pairing:
    """How the two passes batch the same generation: the training pass's micro-batch (rows), the old-policy
    pass's chunk (None: the whole generation in one pass), and whether the training micro-batches are drawn
    from the shuffled generation (TRL's order) rather than in generation order."""

    train_batch: int
    old_batch: int | None
    shuffled: bool = False

    @property
    def name(self) -> str:
        old = "all" if self.old_batch is None else str(self.old_batch)
        return f"old {old} / train {self.train_batch}" + (" shuffled" if self.shuffled else "")


def default_pairings(micro_batch: int, generation: int) -> list[Pairing]:
    """The pairings measured for a run whose micro-batch is ``micro_batch`` rows of a ``generation``-row
    generation: the same rows in both passes (only the grad mode differs), TRL's own pairing (same chunk
    size, shuffled micro-batches), and the whole generation at once against the run's micro-batch and
    against GPU-sized ones (:data:`EXTRA_MICRO_BATCHES`)."""
    out = [Pairing(micro_batch, micro_batch), Pairing(micro_batch, micro_batch, shuffled=True)]
    for b in (micro_batch, *EXTRA_MICRO_BATCHES):
        if b < generation and generation % b == 0 and Pairing(b, None) not in out:
            out.append(Pairing(b, None))
    return out


@contextlib.contextmanager
def _precision(name: str, device: torch.device) -> Iterator[None]:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    with PRECISIONS[name].context(device.type):
        yield


def old_logps(trainer: Any, batch: dict[str, torch.Tensor], chunk: int | None) -> torch.Tensor:
    """pi_old's per-token log-probabilities as TRL scores them when it generates: no gradient, the whole
    batch in generation order, in chunks of ``chunk`` rows (None: one pass)."""
    ids, mask, n = _inputs(batch)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, n, batch_size=chunk
        )
    return logps.float()


def train_logps(
    trainer: Any, batch: dict[str, torch.Tensor], micro: int, order: torch.Tensor
) -> torch.Tensor:
    """The per-token log-probabilities as the loss scores them: with gradients and entropies, one forward
    pass per micro-batch of ``micro`` rows taken in ``order``; returned detached, in generation order."""
    ids, mask, n = _inputs(batch)
    out = torch.empty(ids.size(0), n, dtype=torch.float32, device=ids.device)
    with torch.enable_grad():
        for start in range(0, ids.size(0), micro):
            rows = order[start : start + micro]
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids[rows], mask[rows], n, compute_entropy=True
            )
            out[rows] = logps.detach().float()
    return out


def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The forward's inputs as TRL builds them: prompt and completion ids, their masks, completion length."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return ids, mask, batch["completion_ids"].size(1)


def ratio_statistics(
    logps: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> dict[str, Any]:
    """The ratio r = exp(logp - old_logp) over the completion tokens: max |r - 1|, its standard deviation
    around 1 (``sd_r_minus_1``: the population sd of r - 1), the share of tokens with r != 1, and the share
    of tokens with A != 0 whose gradient the clip at eps 0 zeroes (A > 0 and r > 1, or A < 0 and r < 1: the
    probes' ``zero_weight_frac``, from the objective's own weight)."""
    keep = mask.bool()
    log_r = logps - old
    adv = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages).expand_as(log_r)
    weight = objectives.get("clip", epsilon=0.0).token_weight(log_r, adv)
    d = (torch.exp(log_r[keep].double()) - 1.0).cpu()
    a, zero = adv[keep].cpu(), (weight[keep] == 0).cpu()
    signed = a != 0
    n_signed = int(signed.sum())
    return {
        "tokens": int(d.numel()),
        "tokens_signed": n_signed,
        "max_abs_r_minus_1": float(d.abs().max()) if d.numel() else 0.0,
        "sd_r_minus_1": float(d.std(correction=0)) if d.numel() else 0.0,
        "frac_r_not_1": float((d != 0).double().mean()) if d.numel() else 0.0,
        "zero_frac_eps0": float((zero & signed).sum()) / n_signed if n_signed else None,
    }


def measure(
    trainer: Any,
    batch: dict[str, torch.Tensor],
    pairings: Sequence[Pairing],
    precisions: Sequence[str] = tuple(PRECISIONS),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One record per (precision, pairing): the pairing and :func:`ratio_statistics` of the training pass's
    log-probabilities against the old-policy pass's, on the same weights (staleness 0), and
    ``max_abs_logp_vs_float32``, how far the precision moved the old-policy log-probabilities from float32's
    (0 in float32; under bf16 it shows that the autocast took effect). ``trainer``: a PSPOGRPOTrainer (any
    GRPOTrainer) whose accelerator runs without autocast, so that each precision is the one set here;
    ``batch``: a generation batch as ``_generate_and_score_completions`` returns it; ``seed``: the shuffle."""
    if getattr(trainer.args, "bf16", False) or getattr(trainer.args, "fp16", False):
        raise ValueError("the trainer must run without mixed precision: measure() sets each precision")
    rows = batch["completion_ids"].size(0)
    for p in pairings:
        if rows % p.train_batch:
            raise ValueError(f"{p.name}: the micro-batch must divide the generation ({rows} rows)")
    device = batch["completion_ids"].device
    orders = {
        False: torch.arange(rows, device=device),
        True: torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).to(device),
    }
    keep = batch["completion_mask"].bool()
    model = trainer.model
    was_training = model.training
    model.train()  # as in training: TRL's two passes both run in train mode
    records = []
    try:
        reference = old_logps(trainer, batch, None)  # float32, no autocast
        for precision in precisions:
            with _precision(precision, device):
                olds: dict[int | None, torch.Tensor] = {}
                for p in pairings:
                    if p.old_batch not in olds:
                        olds[p.old_batch] = old_logps(trainer, batch, p.old_batch)
                    old = olds[p.old_batch]
                    new = train_logps(trainer, batch, p.train_batch, orders[p.shuffled])
                    stats = ratio_statistics(new, old, batch["advantages"], batch["completion_mask"])
                    shift = float((old - reference)[keep].abs().max()) if keep.any() else 0.0
                    records.append(
                        {
                            "precision": precision,
                            "pairing": p.name,
                            **dataclasses.asdict(p),
                            **stats,
                            "max_abs_logp_vs_float32": shift,
                        }
                    )
    finally:
        model.train(was_training)
    return records


def generation_batch(trainer: Any) -> dict[str, torch.Tensor]:
    """The trainer's first generation batch of real rollouts: its first prompts (its own sampler), completions
    sampled by the model, rewards and advantages, as ``_generate_and_score_completions`` returns them."""
    trainer.model.train()
    inputs = next(iter(trainer.get_train_dataloader()))
    return trainer._generate_and_score_completions(inputs)


def measurement_trainer(settings: Any, out_dir: str | Path) -> Any:
    """A PSPOGRPOTrainer for a run's settings (:class:`~pspo_repro.training.settings.TrainSettings`) without
    mixed precision, probes, vLLM (the rollouts come from transformers' generate), trackers or checkpoints."""
    from pspo_repro.models import loading
    from pspo_repro.training import rewards, train
    from pspo_repro.training.trainer import PSPOGRPOTrainer

    s = dataclasses.replace(
        settings, bf16=False, use_vllm=False, probes=False, save_steps=0, report_to="none", max_steps=1
    )
    source = loading.resolve(s.model)
    model = loading.load_model(source, dtype=train.MASTER_WEIGHTS_DTYPE)
    return PSPOGRPOTrainer(
        model=model,
        reward_funcs=[rewards.get(s.reward)],
        args=train.grpo_config(s, Path(out_dir)),
        train_dataset=train.to_dataset(train.load_problems(s)[0], s.system_prompt),
        processing_class=loading.load_tokenizer(source),
    )


def measure_settings(
    settings: Any,
    out_dir: str | Path,
    pairings: Sequence[Pairing] | None = None,
    precisions: Sequence[str] = tuple(PRECISIONS),
) -> dict[str, Any]:
    """The staleness-0 ratio of a run's starting model on its first generation batch (its prompts, sampler
    and micro-batch; ``out_dir`` stays empty): the batch's sizes and one record per (precision, pairing),
    by default :func:`default_pairings` of the run's micro-batch and generation."""
    trainer = measurement_trainer(settings, out_dir)
    batch = generation_batch(trainer)
    rows = batch["completion_ids"].size(0)
    micro = trainer.args.per_device_train_batch_size
    pairings = default_pairings(micro, rows) if pairings is None else pairings
    return {
        "completions": rows,
        "micro_batch": micro,
        "completion_length": batch["completion_ids"].size(1),
        "device": str(batch["completion_ids"].device),
        "records": measure(trainer, batch, pairings, precisions, seed=settings.seed),
    }


def measure_model(
    model: str | Path,
    out_dir: str | Path,
    completions: int = 64,
    micro_batch: int = 8,
    num_generations: int = 8,
    max_completion_length: int = 32,
    seed: int = 0,
    pairings: Sequence[Pairing] | None = None,
) -> dict[str, Any]:
    """:func:`measure_settings` for a model (a folder or tiny model name) on synthetic prompts: one generation
    of ``completions`` (``num_generations`` per prompt, temperature 1) served in micro-batches of
    ``micro_batch`` rows."""
    from pspo_repro.training.settings import TrainSettings

    if completions % micro_batch:
        raise ValueError(f"completions ({completions}) must be a multiple of micro_batch ({micro_batch})")
    settings = TrainSettings.from_dict(
        dict(
            model=str(model),
            dataset="synthetic",
            objective="clip",
            epsilon=0.0,
            seed=seed,
            batch_size=micro_batch,
            grad_accum=1,
            steps_per_generation=completions // micro_batch,
            num_iterations=1,
            num_generations=num_generations,
            temperature=1.0,
            top_p=1.0,
            max_completion_length=max_completion_length,
            max_steps=1,
            warmup_steps=0,
        )
    )
    return measure_settings(settings, out_dir, pairings)
