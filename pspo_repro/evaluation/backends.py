"""Generation backends behind one interface (:class:`Backend`): ``hf`` (transformers ``generate``, CPU or
GPU) and ``vllm`` (vLLM ``LLM.generate``, GPU; an optional dependency, imported only when used).

Both run a model at the precision validation ran it at during training (:mod:`pspo_repro.models.precision`):
``hf`` loads float32 weights and generates under bf16 autocast on a GPU; ``vllm`` is given bf16 explicitly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pspo_repro.models import loading, precision
from pspo_repro.models.generation import Generation, cpu_threads, generate_batch, stop_token_ids

BACKENDS: tuple[str, ...] = ("hf", "vllm")


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


class HFBackend:
    """transformers ``generate``: batched, left-padded, KV cache, under ``torch.inference_mode``."""

    name = "hf"

    def __init__(
        self,
        source: loading.ModelSource,
        batch_size: int = 32,
        device: str | None = None,
        bf16: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device or precision.default_device()
        # the checkpoint's float32 weights, under the autocast validation ran under (bf16 on a GPU)
        self.precision = precision.for_device(self.device, bf16)
        self.tokenizer = loading.load_tokenizer(source)
        self.model = _load_model(source, dtype=self.precision.weights_dtype, device=self.device)
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
            with self.precision.context(self.device):
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


class VLLMBackend:
    """vLLM ``LLM.generate`` (GPU). Prompts go in as token ids from our tokenizer, so both backends
    see exactly the same tokens (no second BOS from vLLM's own tokenisation)."""

    name = "vllm"

    def __init__(
        self, source: loading.ModelSource, seed: int = 0, bf16: bool | None = None, **llm_kwargs: Any
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' "
                "(or use --backend hf)"
            ) from exc
        self._vllm = vllm
        self.tokenizer = loading.load_tokenizer(source)
        self.precision = precision.for_device("cuda", bf16)
        self.llm = vllm.LLM(**vllm_llm_kwargs(source, seed, self.precision), **llm_kwargs)
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


def vllm_llm_kwargs(source: loading.ModelSource, seed: int, precision: precision.Precision) -> dict[str, Any]:
    """The arguments of ``vllm.LLM`` for a model: its dtype named (vLLM's "auto" follows each checkpoint's
    config, see :mod:`pspo_repro.models.precision`)."""
    model = str(Path(source.path) / source.gguf_file) if source.gguf_file else source.path
    # For a GGUF file vLLM reads the tokenizer from the same file.
    return {"model": model, "tokenizer": model, "seed": seed, "dtype": precision.vllm_dtype}


def precision_record(backend: str, bf16: bool | None = None) -> dict[str, str | None]:
    """What an evaluation with ``backend`` runs on (for its summary): device, weights' dtype and autocast."""
    if backend == "vllm":
        return {
            "backend": backend,
            "device": "cuda",
            "weights": precision.for_device("cuda", bf16).vllm_dtype,
            "autocast": None,
        }
    device = precision.default_device()
    return {"backend": backend, "device": device, **precision.for_device(device, bf16).record()}


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
    backend: str,
    model: str | Path,
    *,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    bf16: bool | None = None,
) -> Backend:
    """The generation backend ``backend`` for model specification ``model``; ``bf16`` is the run's setting
    (None: bf16 autocast on a GPU), so a model is evaluated at the precision it was validated at."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    source = loading.resolve(model)
    if backend == "vllm":
        return VLLMBackend(source, seed=seed, bf16=bf16)
    return HFBackend(source, batch_size=batch_size, device=device, bf16=bf16)


def require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' (or use --backend hf)"
        )
