"""Generation backends behind one interface (:class:`Backend`): ``hf`` (transformers ``generate``, CPU or
GPU) and ``vllm`` (vLLM ``LLM.generate``, GPU; an optional dependency, imported only when used)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pspo_repro.models import loading

BACKENDS: tuple[str, ...] = ("hf", "vllm")


@dataclass
class Generation:
    """The ``n`` completions of one prompt, their lengths in tokens, and whether each hit the limit."""

    texts: list[str]
    num_tokens: list[int]
    truncated: list[bool]


class Backend(Protocol):
    """What the evaluator needs from a generation engine."""

    name: str
    tokenizer: Any
    chunk_size: int  # prompts per generate() call between two writes of the records

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]: ...


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


class HFBackend:
    """transformers ``generate``: batched, left-padded, KV cache, under ``torch.inference_mode``."""

    name = "hf"

    def __init__(self, source: loading.ModelSource, batch_size: int = 32, device: str | None = None) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = loading.load_tokenizer(source)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = _load_model(source, dtype=dtype, device=self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.threads = cpu_threads(n_params) if self.device == "cpu" else None
        self.batch_size = batch_size
        self.chunk_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]:
        import torch

        per_call = max(1, self.batch_size // n)  # batch_size counts sequences, not prompts
        results: list[Generation] = []
        for start in range(0, len(prompts), per_call):
            if temperature > 0:
                torch.manual_seed(seed + start)
            results += generate_batch(
                self.model,
                self.tokenizer,
                list(prompts[start : start + per_call]),
                n=n,
                max_new_tokens=max_new_tokens,
                stop_ids=self.stop_ids,
                temperature=temperature,
                top_p=top_p,
                threads=self.threads,
            )
        return results


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


class VLLMBackend:
    """vLLM ``LLM.generate`` (GPU). Prompts go in as token ids from our tokenizer, so both backends
    see exactly the same tokens (no second BOS from vLLM's own tokenisation)."""

    name = "vllm"

    def __init__(self, source: loading.ModelSource, seed: int = 0, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' "
                "(or use --backend hf)"
            ) from exc
        self._vllm = vllm
        self.tokenizer = loading.load_tokenizer(source)
        model = str(Path(source.path) / source.gguf_file) if source.gguf_file else source.path
        # For a GGUF file vLLM reads the tokenizer from the same file.
        self.llm = vllm.LLM(model=model, tokenizer=model, seed=seed, **llm_kwargs)
        self.chunk_size = 512  # vLLM schedules its own batches; this only sets how often records are saved
        self.stop_ids = stop_token_ids(
            self.tokenizer, getattr(self.llm.llm_engine, "generation_config", None)
        )

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]:
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        params = [
            self._vllm.SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_new_tokens,
                seed=seed + i,  # one stream per prompt: samples do not depend on batching
                stop_token_ids=self.stop_ids,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        results = []
        for request in outputs:
            texts, lengths, cut = [], [], []
            for completion in sorted(request.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                if tokens and completion.finish_reason == "stop" and tokens[-1] in self.stop_ids:
                    tokens = tokens[:-1]  # count the completion's own tokens, as the hf backend does
                texts.append(completion.text)
                lengths.append(len(tokens))
                cut.append(completion.finish_reason == "length")
            results.append(Generation(texts, lengths, cut))
        return results


def _load_model(source: loading.ModelSource, dtype: Any, device: str) -> Any:
    """``loading.load_model`` with a clear error when a hub-like id is neither a folder nor available."""
    try:
        return loading.load_model(source, dtype=dtype, device=device)
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load model {source.path!r}: it is not an existing folder and not an available hub "
            f"model ({type(exc).__name__}: {exc})"
        ) from exc


def make_backend(
    backend: str, model: str | Path, *, batch_size: int = 32, seed: int = 0, device: str | None = None
) -> Backend:
    """The generation backend ``backend`` for model specification ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    source = loading.resolve(model)
    if backend == "vllm":
        return VLLMBackend(source, seed=seed)
    return HFBackend(source, batch_size=batch_size, device=device)


def require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' (or use --backend hf)"
        )
