"""Gradient probes: what the objective did to the gradient, recorded at every optimizer step.

One JSON line per optimizer step in ``probes.jsonl``:

- ``grad_norm`` (global, before clipping) and ``grad_norm_groups`` (embeddings, attention, mlp, norms, head);
- ``ratio``: statistics of the per-token importance ratio r = pi_theta / pi_old over completion tokens (at
  sequence level, each token's sequence ratio s), and ``ratio_outside``, the fraction outside the objective's
  range (the clip's [1 - eps_low, 1 + eps_high], CISPO's r <= epsilon_max; TRL's clip range for objectives
  without one);
- ``weight``: statistics of the objective's per-token gradient weight w (d loss / d log r = -w A), and
  ``zero_weight_frac`` (all tokens with A != 0) / ``zero_weight_frac_pos`` / ``zero_weight_frac_neg``:
  the fraction of tokens whose gradient the objective zeroes, by advantage sign;
- for objectives that read a sequence ratio (any objective at sequence level, such as GSPO's s, the
  geometric mean of the token ratios; VESPO's product W of them): ``n_sequences``, ``seq_ratio``
  (statistics over sequences, one value each), ``seq_mean_abs_s_minus_1`` (mean |s - 1| over sequences)
  and ``seq_zero_weight_frac`` / ``_pos`` / ``_neg``: the fraction of sequences with A != 0 whose every
  token's gradient is zeroed (a sequence dropped whole), and ``seq_partial_zero_frac``: the fraction of
  them where some tokens' gradients are zeroed but not all (0 for an objective that acts on whole sequences);
- ``staleness``: optimizer updates made since this step's rollouts were generated (0 on the first step
  of each reuse cycle, whose weights generated them: r is 1 up to the rounding by which TRL's old-policy
  pass and the training pass differ, none measured on CPUs in float32 or under bf16 autocast, see
  :mod:`pspo_repro.analysis.staleness_numerics`; on-policy, where TRL keeps no old log-probabilities,
  exactly 1);
- ``kl_old_theta`` (the k3 estimate of KL(pi_old || pi_theta) on the sampled tokens), ``mean_abs_r_minus_1``,
  ``entropy``;
- with vLLM rollouts (:mod:`pspo_repro.training.rollouts`): ``vllm_logp_diff``, statistics of the per-token
  gap between the trainer's log-probability of each sampled token and vLLM's (trainer minus vLLM, both for
  the weights that generated the rollout), and ``vllm_seq_logp_diff``, of its sum per completion (the log of
  the sequence-level weight TRL's correction would apply). Under top-p < 1 vLLM's log-probabilities are
  renormalised over the kept tokens, so a token's gap is the log of the mass top-p kept (<= 0) plus the
  engines' numerical difference. With TRL's importance-sampling correction on (top_p = 1 only):
  ``vllm_is_weight``, statistics of the correction's per-token weight (trainer over vLLM probability,
  truncated or masked), and ``vllm_is_zero_frac``, the fraction of tokens it masks out;
- every ``probe_every`` steps: ``cos_to_noclip``, the cosine between this objective's parameter gradient and the
  unclipped surrogate's on the step's first micro-batch (each process's first, averaged over processes), and
  ``samples``, (ratio, advantage, weight) triples drawn from all the step's tokens, the ratio being the one the
  weight is a function of (VESPO's: the sequence's W).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pspo_repro.study import rundir

QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
# what a step's probe accumulates over its micro-batches (and pools over processes)
ACCUMULATED = (
    "ratio",
    "adv",
    "weight",
    "entropy",
    "is_weight",
    "logp_diff",
    "seq_logp_diff",
    "read",
    "seq_ratio",
    "seq_adv",
    "seq_zero",
    "seq_partial",
    "cosines",
)


def param_group(name: str) -> str:
    """The probe group of a parameter, from its name in a transformers decoder (Qwen2, Llama, ...)."""
    if "embed" in name or "wte" in name or "wpe" in name:
        return "embeddings"
    if "lm_head" in name:
        return "head"
    if "norm" in name or "ln_" in name:
        return "norms"
    if "attn" in name or "attention" in name:
        return "attention"
    if "mlp" in name or "feed_forward" in name:
        return "mlp"
    return "other"


def group_grad_norms(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradient per parameter group (tied weights count once, under their first name)."""
    squares: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in named_parameters:
        if p.grad is None or id(p) in seen:
            continue
        seen.add(id(p))
        g = param_group(name)
        sq = p.grad.detach().float().pow(2).sum()
        squares[g] = squares[g] + sq if g in squares else sq
    return {g: float(v.sqrt()) for g, v in squares.items()}


def gradient_cosine(params: list[torch.nn.Parameter], loss_a: torch.Tensor, loss_b: torch.Tensor) -> float:
    """Cosine between the parameter gradients of two losses built on the same forward pass."""
    grads_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    dot = na = nb = 0.0
    for ga, gb in zip(grads_a, grads_b, strict=True):
        if ga is None or gb is None:
            continue
        ga, gb = ga.float(), gb.float()
        dot += float((ga * gb).sum())
        na += float(ga.pow(2).sum())
        nb += float(gb.pow(2).sum())
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return dot / (na**0.5 * nb**0.5)


def _summary(x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {}
    qs = torch.quantile(x, torch.tensor(QUANTILES, dtype=x.dtype)) if x.numel() < 16_000_000 else None
    out = {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
    if qs is not None:
        out.update({f"q{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)})
    return out


class StepProbe:
    """Accumulates token-level tensors over the micro-batches of one optimizer step."""

    def __init__(self) -> None:
        self.ratio: list[torch.Tensor] = []
        self.adv: list[torch.Tensor] = []
        self.weight: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []
        self.is_weight: list[torch.Tensor] = []
        self.logp_diff: list[torch.Tensor] = []
        self.seq_logp_diff: list[torch.Tensor] = []
        self.read: list[
            torch.Tensor
        ] = []  # per token: the sequence ratio its weight reads (sequence objectives)
        self.seq_ratio: list[torch.Tensor] = []  # per sequence
        self.seq_adv: list[torch.Tensor] = []
        self.seq_zero: list[torch.Tensor] = []
        self.seq_partial: list[torch.Tensor] = []
        self.cosines: list[float] = []
        self.grad_norm: float | None = None
        self.grad_norm_groups: dict[str, float] = {}

    @classmethod
    def merged(cls, parts: list[StepProbe]) -> StepProbe:
        """One step's probe from the probes of the processes that shared it (tokens and cosines pooled;
        gradient norms are the first's, since the processes' gradients are averaged before the norms)."""
        out = cls()
        for part in parts:
            for name in ACCUMULATED:
                getattr(out, name).extend(getattr(part, name))
        out.grad_norm, out.grad_norm_groups = parts[0].grad_norm, parts[0].grad_norm_groups
        return out

    @torch.no_grad()
    def add_tokens(
        self,
        ratio: torch.Tensor,
        advantages: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
        entropy: torch.Tensor | None,
        seq_ratio: torch.Tensor | None = None,
    ) -> None:
        """Keep the completion tokens (mask > 0) of one micro-batch; all inputs broadcast to (B, T).
        ``seq_ratio`` (B, 1): the sequence ratio the objective's weight reads, for objectives that read one."""
        keep = mask.bool()
        shape = mask.shape
        self.ratio.append(ratio.expand(shape)[keep].float().cpu())
        self.adv.append(advantages.expand(shape)[keep].float().cpu())
        self.weight.append(weight.expand(shape)[keep].float().cpu())
        if entropy is not None:
            self.entropy.append(entropy[keep].float().cpu())
        if seq_ratio is not None:
            self.read.append(seq_ratio.expand(shape)[keep].float().cpu())
            seqs = keep.any(-1)  # sequences with at least one completion token
            adv = (advantages.expand(shape) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            zeroed = (weight.expand(shape) == 0) & keep
            dropped = (zeroed | ~keep).all(-1)  # every token's gradient zeroed
            self.seq_ratio.append(seq_ratio.reshape(-1)[seqs].float().cpu())
            self.seq_adv.append(adv[seqs].float().cpu())
            self.seq_zero.append(dropped[seqs].cpu())
            self.seq_partial.append((zeroed.any(-1) & ~dropped)[seqs].cpu())

    @torch.no_grad()
    def add_is_weights(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep vLLM's importance-sampling weights of the completion tokens ((B, T), or (B, 1) per sequence)."""
        self.is_weight.append(weight.expand(mask.shape)[mask.bool()].float().cpu())

    @torch.no_grad()
    def add_logp_diff(
        self, trainer_logps: torch.Tensor, vllm_logps: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Keep the trainer-minus-vLLM log-probability gap of the completion tokens ((B, T)), per token and
        summed per completion. Tokens vLLM could not score (NaN) are left out, as TRL leaves them out."""
        diff = (trainer_logps - vllm_logps).float()
        keep = mask.bool() & ~diff.isnan()
        self.logp_diff.append(diff[keep].cpu())
        self.seq_logp_diff.append(diff.masked_fill(~keep, 0.0).sum(-1).cpu())

    def summary(self, lo: float, hi: float, n_samples: int, generator: torch.Generator) -> dict:
        """The probe record of the step (see the module docstring); ``[lo, hi]``: the objective's ratio range."""
        rec: dict[str, Any] = {"grad_norm": self.grad_norm, "grad_norm_groups": self.grad_norm_groups}
        if not self.ratio:
            return rec
        r, a, w = torch.cat(self.ratio), torch.cat(self.adv), torch.cat(self.weight)
        nonzero = a != 0
        pos, neg = a > 0, a < 0
        zero_w = w == 0

        def frac(sel: torch.Tensor) -> float | None:
            n = int(sel.sum())
            return float((zero_w & sel).sum()) / n if n else None

        rec.update(
            n_tokens=int(r.numel()),
            adv_zero_frac=float((~nonzero).float().mean()),
            ratio=_summary(r),
            ratio_outside=float(((r < lo) | (r > hi)).float().mean()),
            weight=_summary(w.abs()),
            zero_weight_frac=frac(nonzero),
            zero_weight_frac_pos=frac(pos),
            zero_weight_frac_neg=frac(neg),
            kl_old_theta=float((r - 1 - torch.log(r.clamp(min=1e-30))).mean()),
            mean_abs_r_minus_1=float((r - 1).abs().mean()),
        )
        if self.entropy:
            rec["entropy"] = float(torch.cat(self.entropy).mean())
        if self.seq_ratio:
            rec.update(self._sequence_summary())
        if self.is_weight:
            is_w = torch.cat(self.is_weight)
            rec["vllm_is_weight"] = _summary(is_w)
            rec["vllm_is_zero_frac"] = float((is_w == 0).float().mean()) if is_w.numel() else None
        if self.logp_diff:
            rec["vllm_logp_diff"] = _summary(torch.cat(self.logp_diff))
            rec["vllm_seq_logp_diff"] = _summary(torch.cat(self.seq_logp_diff))
        finite = [c for c in self.cosines if math.isfinite(c)]  # nan: a zero gradient has no direction
        if self.cosines:
            rec["cos_to_noclip"] = sum(finite) / len(finite) if finite else None
        if n_samples > 0:
            read = torch.cat(self.read) if self.read else r
            idx = torch.randperm(r.numel(), generator=generator)[:n_samples]
            rec["samples"] = torch.stack([read[idx], a[idx], w[idx]], dim=1).tolist()
        return rec

    def _sequence_summary(self) -> dict[str, Any]:
        """Per-sequence fields: the sequence ratio's statistics, the sequences dropped whole and those zeroed
        in part."""
        s, a, dropped = torch.cat(self.seq_ratio), torch.cat(self.seq_adv), torch.cat(self.seq_zero)
        partial = torch.cat(self.seq_partial)

        def frac(sel: torch.Tensor, flag: torch.Tensor = dropped) -> float | None:
            n = int(sel.sum())
            return float((flag & sel).sum()) / n if n else None

        return {
            "n_sequences": int(s.numel()),
            "seq_ratio": _summary(s),
            "seq_mean_abs_s_minus_1": float((s - 1).abs().mean()),
            "seq_zero_weight_frac": frac(a != 0),
            "seq_zero_weight_frac_pos": frac(a > 0),
            "seq_zero_weight_frac_neg": frac(a < 0),
            "seq_partial_zero_frac": frac(a != 0, partial),
        }


class ProbeLog:
    """Appends one probe record per optimizer step to a JSON-lines file (:func:`rundir.append_jsonl`)."""

    def __init__(self, path: str | os.PathLike | None, seed: int = 0) -> None:
        self.path = Path(path) if path else None
        self.generator = torch.Generator().manual_seed(seed)
        self.current = StepProbe()

    def write(self, step: int, record: dict) -> None:
        if self.path is None:
            return
        rundir.append_jsonl(self.path, {"step": step, **record})
