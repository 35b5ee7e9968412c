"""vLLM's sampling log-probabilities, rebuilt in torch for tests (vLLM is not installed here).

vLLM 0.31 with ``logprobs_mode="processed_logprobs"`` (what TRL 1.16 asks for) returns each sampled token's
log-probability *after* temperature and top-p: ``vllm/v1/sample/sampler.py`` (``Sampler.sample``) divides the
logits by the temperature and calls ``TopKTopPSampler``, whose ``forward_native`` runs ``apply_top_k_top_p``
(``vllm/v1/sample/ops/topk_topp_sampler.py``: ascending sort, cumulative softmax, tokens with cumulative
probability <= 1 - p set to -inf, the largest always kept) and then ``log_softmax`` over what is left. So a kept
token's log-probability is renormalised over the kept set. :func:`processed_logprobs` is that rule;
:class:`StandInVLLM` samples with it from a transformers model and answers TRL's ``vllm_generation`` calls."""

from __future__ import annotations

from typing import Any

import torch


def processed_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities over the last dimension as vLLM's processed_logprobs (temperature, then top-p
    truncation and renormalisation; truncated tokens get -inf)."""
    logits = logits.float() / temperature
    sorted_logits, index = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p
    drop[..., -1] = False  # at least one token
    sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
    return logits.scatter(-1, index, sorted_logits).log_softmax(dim=-1)


def kept_mass(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The full-vocabulary probability (at the temperature) of the tokens top-p keeps."""
    kept = processed_logprobs(logits, temperature, top_p).isfinite()
    return (torch.softmax(logits.float() / temperature, dim=-1) * kept).sum(dim=-1)


class StandInVLLM:
    """Answers TRL's ``trainer.vllm_generation`` (colocate mode: one completion per prompt): samples from
    ``model`` with vLLM's sampler rule and returns vLLM's processed log-probability of each sampled token.
    ``kept`` collects, per completion, the top-p kept mass at each sampled position."""

    def __init__(self, model: Any, temperature: float, top_p: float, max_tokens: int, stop_ids: list[int]):
        self.model, self.temperature, self.top_p = model, temperature, top_p
        self.max_tokens, self.stop_ids = max_tokens, set(stop_ids)
        self.generator = torch.Generator().manual_seed(0)
        self.kept: list[list[float]] = []

    def sync_weights(self) -> None:  # the model is the trainer's own
        pass

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], images: Any = None, num_generations: int = 1, profiler=None):
        completions, logprobs = [], []
        for ids in prompts:
            tokens, lps, kept = [], [], []
            out = self.model(torch.tensor([ids]), use_cache=True)
            for _ in range(self.max_tokens):
                logits = out.logits[0, -1]
                processed = processed_logprobs(logits, self.temperature, self.top_p)
                token = int(torch.multinomial(processed.exp(), 1, generator=self.generator))
                tokens.append(token)
                lps.append([float(processed[token])])
                kept.append(float(kept_mass(logits, self.temperature, self.top_p)))
                if token in self.stop_ids:
                    break
                out = self.model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            completions.append(tokens)
            logprobs.append(lps)
            self.kept.append(kept)
        return prompts, completions, logprobs, None
