"""PSPO's exact identities, computed on distributions and on real training batches.

With pi~ = (1 - alpha) pi_theta + alpha pi_old (the smoothed policy whose ratio PSPO optimises):

- **gradient scaling**: PSPO's parameter gradient is (1 - alpha) times the unclipped importance-weighted
  surrogate's, on any batch (its loss is ((1 - alpha) r + alpha) A, and alpha A is constant in theta);
- **TV equality**: TV(pi~, pi_old) = (1 - alpha) TV(pi_theta, pi_old), state by state;
- **KL bound**: KL(pi~ || pi_old) <= (1 - alpha) KL(pi_theta || pi_old) (convexity of KL in its first
  argument, with KL(pi_old || pi_old) = 0).

The bounds are about pi~, not about the policy the update produces: :func:`trust_region` also reports
TV(pi_theta, pi_old) and KL(pi_theta || pi_old), how far pi_theta itself has moved.

:class:`RecordingTrainer` measures all of these during real training (TRL's GRPOTrainer with the
package's objectives): at each micro-batch it takes the batch TRL hands to the loss, computes the PSPO and
unclipped gradients with autograd through :mod:`pspo_repro.training.objectives`, and compares the full next-token
distributions of the current policy with those of the policy that generated the batch (a copy kept at
each generation). :func:`measure` runs it for a few steps of a run's settings.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback

from pspo_repro.training import objectives
from pspo_repro.training.trainer import PSPOGRPOTrainer

# Relative tolerance of the gradient identity: a multiple of the machine epsilon of the dtype the matrix
# products ran in, since the measured difference is rounding of the backward pass alone (both gradients share
# one forward pass; the upstream gradients differ by the factor 1 - alpha, which rounds differently).
# Measured (PSPO, alpha 0.1 and 0.4, Qwen2 models of 2 to 28 layers and width 32 to 512):
# - float32: every operation rounds in float32; 4 to 8 eps on the random models and 12 eps (1.4e-6) on
#   tiny-general-l's real batches. 100 eps (1.2e-5) leaves a margin of 8.
# - bf16 autocast (TrainingArguments' bf16=True, as on a GPU): only the operands of the matrix products round
#   to bf16, the rest runs in float32; 0.55 eps at 2 layers growing to 0.94 eps at 28 (the paper's models have
#   24 and 28). 4 eps (0.031) leaves a margin of 4 and still fails a real defect (a wrong factor, a token
#   weighted differently, a gradient through pi_old), which moves the difference by tenths.
GRAD_RTOL_EPS = {"float32": 100.0, "bf16": 4.0}
PRECISION_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
GRAD_RTOL = GRAD_RTOL_EPS["float32"] * torch.finfo(torch.float32).eps  # float32's, the CPU default
# Absolute tolerance of the TV equality and the KL bound, in float64 on float32 probabilities.
DIST_ATOL = 1e-9


def grad_rtol(precision: str) -> float:
    """The relative tolerance of the gradient identity measured in ``precision`` (float32 or bf16)."""
    if precision not in GRAD_RTOL_EPS:
        raise ValueError(f"precision must be one of {', '.join(GRAD_RTOL_EPS)}, got {precision!r}")
    return GRAD_RTOL_EPS[precision] * torch.finfo(PRECISION_DTYPES[precision]).eps


def smoothed(p_theta: torch.Tensor, p_old: torch.Tensor, alpha: float) -> torch.Tensor:
    """pi~ = (1 - alpha) pi_theta + alpha pi_old, elementwise."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return (1.0 - alpha) * p_theta + alpha * p_old


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 1/2 sum |p - q| over the last dimension."""
    return 0.5 * (p - q).abs().sum(-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p log(p / q) over the last dimension (0 log 0 = 0)."""
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def trust_region(p_theta: torch.Tensor, p_old: torch.Tensor, alpha: float) -> dict[str, float]:
    """The TV equality and the KL bound on distributions over the last dimension (one per state).

    Returns the largest violation of each (``tv_error``: max |TV(pi~, pi_old) - (1 - alpha) TV(pi_theta,
    pi_old)|; ``kl_excess``: max of KL(pi~ || pi_old) - (1 - alpha) KL(pi_theta || pi_old), <= 0 when the
    bound holds), and the mean distances of pi_theta and pi~ from pi_old."""
    p_theta, p_old = p_theta.double(), p_old.double()
    p_smooth = smoothed(p_theta, p_old, alpha)
    tv, tv_s = total_variation(p_theta, p_old), total_variation(p_smooth, p_old)
    kl, kl_s = kl_divergence(p_theta, p_old), kl_divergence(p_smooth, p_old)
    return {
        "states": int(tv.numel()),
        "tv_error": float((tv_s - (1 - alpha) * tv).abs().max()),
        "kl_excess": float((kl_s - (1 - alpha) * kl).max()),
        "tv_theta": float(tv.mean()),
        "tv_theta_max": float(tv.max()),
        "tv_smooth": float(tv_s.mean()),
        "kl_theta": float(kl.mean()),
        "kl_theta_max": float(kl.max()),
        "kl_smooth": float(kl_s.mean()),
    }


def _flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def gradient_scaling(
    params: list[torch.nn.Parameter],
    loss_of: Any,
    alpha: float,
) -> dict[str, float]:
    """Compare PSPO's parameter gradient with (1 - alpha) times the unclipped surrogate's.

    ``loss_of(objective)`` builds the scalar loss of an :class:`~pspo_repro.training.objectives.Objective` on the
    batch (one forward pass shared by both, so the graph is retained). Returns ``rel_diff``, ||g_pspo -
    (1 - alpha) g_noclip|| / ||(1 - alpha) g_noclip|| (the absolute norm when alpha is 1), and both norms."""
    pspo = objectives.get("pspo", alpha=alpha)
    noclip = objectives.get("noclip")
    g_p = _flat(torch.autograd.grad(loss_of(pspo), params, retain_graph=True, allow_unused=True), params)
    g_n = _flat(torch.autograd.grad(loss_of(noclip), params, retain_graph=True, allow_unused=True), params)
    target = (1.0 - alpha) * g_n
    diff = float((g_p - target).norm())
    scale = float(target.norm())
    return {
        "rel_diff": diff / scale if scale > 0 else diff,
        "grad_norm_pspo": float(g_p.norm()),
        "grad_norm_noclip": float(g_n.norm()),
    }


class RecordingTrainer(PSPOGRPOTrainer):
    """PSPOGRPOTrainer that measures the identities on every training micro-batch it is handed.

    At each generation it keeps a frozen copy of the policy (pi_old: the model that generated the batch
    and whose log-probs TRL stores as ``old_per_token_logps``). On each micro-batch, before the usual loss,
    it records: the gradient scaling of PSPO at ``identity_alpha`` against the unclipped surrogate, and the
    trust-region quantities on the full next-token distributions at the batch's completion positions
    (``states`` of them, sampled), with the staleness of the batch and the precision the model ran in."""

    def __init__(self, *args: Any, identity_alpha: float = 0.1, states_per_batch: int = 64, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.fp16:
            raise ValueError("the identities are measured in float32 or under bf16 autocast, not fp16")
        self.precision = "bf16" if self.args.bf16 else "float32"
        self.identity_alpha = identity_alpha
        self.states_per_batch = states_per_batch
        self.records: list[dict[str, Any]] = []
        self._old_model: torch.nn.Module | None = None
        self._state_generator = torch.Generator().manual_seed(self.args.seed)

    def _generate_and_score_completions(self, inputs):
        old = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval()
        # accelerate's wrapper of ``forward`` (autocast, outputs to float32) is an instance attribute; the
        # copy drops it and runs under the accelerator's autocast explicitly instead (see _old_logits)
        old.__dict__.pop("forward", None)
        self._old_model = old
        return super()._generate_and_score_completions(inputs)

    def _completion_logits(self, model, input_ids, attention_mask, n_completion: int) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        # logits at position t predict token t + 1: the completion's tokens are predicted from n - 1 on
        logits = logits[:, -n_completion - 1 : -1, :].float()
        return logits / self.temperature  # TRL scores log-probs at the sampling temperature

    def _old_logits(self, input_ids, attention_mask, n_completion: int) -> torch.Tensor:
        """pi_old's logits, under the same autocast as the live model's forward (bf16 under bf16=True), so
        that at staleness 0 both give the same distributions, not two roundings of them (the copy scores
        the live model's own batch; TRL's stored log-probabilities come from other batches, see
        :mod:`pspo_repro.analysis.staleness_numerics`)."""
        assert self._old_model is not None
        with self.accelerator.autocast():
            return self._completion_logits(self._old_model, input_ids, attention_mask, n_completion)

    def _compute_loss(self, model, inputs):
        if model.training and self._old_model is not None:
            self.records.append(self._measure(model, inputs))
        return super()._compute_loss(model, inputs)

    def _measure(self, model, inputs) -> dict[str, Any]:
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], mask], dim=1)
        n = completion_ids.size(1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, n)
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages

        def loss_of(objective: objectives.Objective) -> torch.Tensor:
            per_token = objective.per_token_loss(logps, old_logps, advantages, mask)
            return self._aggregate(per_token, mask, inputs)

        params = [p for p in model.parameters() if p.requires_grad]
        record: dict[str, Any] = {
            "step": self.state.global_step + 1,
            "staleness": self.state.global_step % self.args.optimizer_steps_per_generation(),
            "precision": self.precision,
            **gradient_scaling(params, loss_of, self.identity_alpha),
        }
        with torch.no_grad():
            logits = self._completion_logits(model, input_ids, attention_mask, n)
            old_logits = self._old_logits(input_ids, attention_mask, n)
            # the kept copy is pi_old: its log-probs of the sampled tokens are TRL's stored ones
            old_sampled = (
                torch.log_softmax(old_logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
            )
            keep = mask.bool()
            record["old_logp_max_abs_diff"] = float((old_sampled - old_logps)[keep].abs().max())
            positions = keep.nonzero()
            pick = torch.randperm(len(positions), generator=self._state_generator)[: self.states_per_batch]
            rows, cols = positions[pick, 0], positions[pick, 1]
            p_theta = torch.softmax(logits[rows, cols], -1)
            p_old = torch.softmax(old_logits[rows, cols], -1)
            record.update(trust_region(p_theta, p_old, self.identity_alpha))
        return record


def recording_trainer(
    settings: Any,
    out_dir: str | Path,
    steps: int = 8,
    identity_alpha: float | None = None,
    states_per_batch: int = 64,
) -> RecordingTrainer:
    """A :class:`RecordingTrainer` for ``steps`` optimizer steps of a run's settings
    (:class:`~pspo_repro.training.settings.TrainSettings`): its model, data and system prompt, with no probes,
    trackers or trainer checkpoints (the measurement needs none; ``out_dir`` stays empty)."""
    from pspo_repro.models import loading
    from pspo_repro.training import rewards, train

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s = dataclasses.replace(
        settings, max_steps=steps, probes=False, eval_every=steps, save_steps=0, report_to="none"
    )
    source = loading.resolve(s.model)
    tokenizer = loading.load_tokenizer(source)
    problems, _ = train.load_problems(s)
    model = loading.load_model(source, dtype=train.MASTER_WEIGHTS_DTYPE)
    model.train()
    trainer = RecordingTrainer(
        model=model,
        reward_funcs=[rewards.get(s.reward)],
        args=train.grpo_config(s, Path(out_dir)),
        train_dataset=train.to_dataset(problems, s.system_prompt),
        processing_class=tokenizer,
        identity_alpha=s.alpha if identity_alpha is None else identity_alpha,
        states_per_batch=states_per_batch,
    )
    trainer.remove_callback(PrinterCallback)  # no metric dicts on the terminal
    return trainer


def measure(
    settings: Any,
    out_dir: str | Path,
    steps: int = 8,
    identity_alpha: float | None = None,
    states_per_batch: int = 64,
) -> list[dict[str, Any]]:
    """Train ``steps`` optimizer steps of a run's settings with :func:`recording_trainer`, and return one
    record per micro-batch. ``identity_alpha`` defaults to the settings' alpha; the run's own objective drives
    the training (so pi_theta moves as it would)."""
    trainer = recording_trainer(settings, out_dir, steps, identity_alpha, states_per_batch)
    trainer.train()
    return trainer.records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst case of each identity over the records, and pi_theta's distance from pi_old by staleness;
    with the precision the records were measured in and the gradient identity's tolerance there."""
    if not records:
        raise ValueError("no identity records to summarise")
    precisions = {r.get("precision", "float32") for r in records}
    if len(precisions) > 1:
        raise ValueError(f"identity records of several precisions ({', '.join(sorted(precisions))})")
    precision = precisions.pop()
    by_staleness: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_staleness.setdefault(r["staleness"], []).append(r)

    def mean(rs: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rs) / len(rs)

    return {
        "precision": precision,
        "grad_rtol": grad_rtol(precision),
        "batches": len(records),
        "states": sum(r["states"] for r in records),
        "grad_rel_diff_max": max(r["rel_diff"] for r in records),
        "tv_error_max": max(r["tv_error"] for r in records),
        "kl_excess_max": max(r["kl_excess"] for r in records),
        "old_logp_max_abs_diff": max(r["old_logp_max_abs_diff"] for r in records),
        "by_staleness": {
            str(k): {
                "batches": len(rs),
                "tv_theta": mean(rs, "tv_theta"),
                "tv_theta_max": max(r["tv_theta_max"] for r in rs),
                "tv_smooth": mean(rs, "tv_smooth"),
                "kl_theta": mean(rs, "kl_theta"),
                "kl_smooth": mean(rs, "kl_smooth"),
            }
            for k, rs in sorted(by_staleness.items())
        },
    }


def holds(summary: dict[str, Any]) -> dict[str, bool]:
    """Whether each identity holds to numerical precision in a :func:`summarise` result (the gradient
    identity to that of the precision it was measured in; float32 when none is recorded)."""
    return {
        "gradient_scaling": summary["grad_rel_diff_max"] <= grad_rtol(summary.get("precision", "float32")),
        "tv_equality": summary["tv_error_max"] <= DIST_ATOL,
        "kl_bound": summary["kl_excess_max"] <= DIST_ATOL,
    }
