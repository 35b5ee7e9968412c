"""Generation with a loaded transformers model: one ``generate`` call for a batch of rendered prompts, cut at
the trainer's stop tokens. The one generation path of evaluation (:mod:`pspo_repro.evaluation.backends`),
sampled validation during training and the tiny models' build check; it loads nothing itself."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    """The ``n`` completions of one prompt, their lengths in tokens, and whether each hit the limit."""

    texts: list[str]
    num_tokens: list[int]
    truncated: list[bool]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos id and every eos id of the model's generation
    config, the rule of TRL's ``GRPOTrainer`` for its rollouts (``self.eos_token_ids``), so that a model is
    evaluated on completions cut where its training completions were cut.

    For the Qwen base models that is ``<|endoftext|>`` only, which is also where the authors' evaluation
    stopped: a ``<|im_end|>`` such a model writes does not end its completion, in training or here.
    """
    eos = getattr(generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids if i is not None})


# Below this many parameters a forward pass is a handful of tiny matrix products: splitting them over
# threads costs more in synchronisation than it gains.
SINGLE_THREAD_PARAMS = 20_000_000


def cpu_threads(n_params: int) -> int:
    """Intra-op threads for CPU generation.

    OpenMP threads wait for each other at every matrix product, so a thread that has no free core to
    run on stalls all of them: on a 2-core machine already running ~3 busy processes, SmolLM2 decoding
    took 4.7 s per step with 2 threads and 0.18 s with 1. So: 1 thread for tiny models; otherwise
    torch's default (physical cores) capped at the CPUs this process may use and at the cores left idle
    by the current load average. An explicit OMP_NUM_THREADS is obeyed as is.
    """
    import torch

    if n_params < SINGLE_THREAD_PARAMS:
        return 1
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        allowed = os.cpu_count() or 1
    try:
        idle = round(allowed - os.getloadavg()[0])
    except OSError:  # pragma: no cover - load average unavailable
        idle = allowed
    return max(1, min(torch.get_num_threads(), allowed, idle))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block only (the setting is process-wide)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    threads: int | None = None,
    sampler: dict[str, Any] | None = None,
) -> list[Generation]:
    """One transformers ``generate`` call: ``n`` completions of each rendered prompt (left-padded, KV cache,
    ``torch.inference_mode``), each cut at its first stop id. Greedy at temperature 0; sampling seeds are
    the caller's, and ``sampler`` overrides further sampling settings (a trainer's ``top_k``, ``min_p``,
    ``repetition_penalty``). The one generation path of evaluation (:class:`HFBackend`), validation and the tiny
    models' build check (:func:`greedy_completions`)."""
    import torch
    from transformers import GenerationConfig

    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(stop_ids),
        # top_k=0 disables HF's default top-k of 50, so sampling is plain temperature + top-p
        # (as in vLLM and TRL's rollouts).
        **({"temperature": temperature, "top_p": top_p, "top_k": 0, **(sampler or {})} if sampling else {}),
    )
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.inference_mode(), _torch_threads(threads):
        out = model.generate(**enc, generation_config=config)
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    stops = set(stop_ids)
    results = []
    for row in range(len(prompts)):
        texts, lengths, cut = [], [], []
        for ids in new[row * n : (row + 1) * n]:
            end = next((i for i, t in enumerate(ids) if t in stops), None)
            body = ids if end is None else ids[:end]
            texts.append(tokenizer.decode(body, skip_special_tokens=True))
            lengths.append(len(body))
            cut.append(end is None)  # no stop token within max_new_tokens
        results.append(Generation(texts, lengths, cut))
    return results


def greedy_completions(
    model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy completions of rendered prompts, batched by length, stopped where training rollouts stop
    (:func:`stop_token_ids`); the model is put in eval mode meanwhile."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    out: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = generate_batch(
                model, tokenizer, [texts[i] for i in idx], max_new_tokens=max_new_tokens, stop_ids=stop_ids
            )
            for i, generation in zip(idx, batch, strict=True):
                out[i] = generation.texts[0]
    finally:
        model.train(was_training)
    return out
