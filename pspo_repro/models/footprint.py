"""What a model costs in memory and on disk, from its shape alone (no weights loaded): its parameter count
from its config, the bytes of its checkpoints, and how many sequences one ``generate`` call can hold.

A shape comes from the model's config (a tiny model's recipe, a local folder, a run folder, or a hub id in
the local hub cache; the parameters counted on the meta device) or, for the paper's hub models when they are
not on disk, from :data:`KNOWN` (their published configs, whose counts these are)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """The sizes that set a decoder's memory: parameters, layers, hidden width, key/value width per layer
    (key/value heads x head dimension), MLP width and vocabulary."""

    parameters: int
    layers: int
    hidden: int
    kv_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any, parameters: int | None = None) -> Shape:
        """The shape of a transformers config; the parameters counted on the meta device unless given
        (tied embeddings once)."""
        text = config.get_text_config()
        if parameters is None:
            import torch
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            parameters=int(parameters),
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            kv_dim=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
            intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
            vocab=text.vocab_size,
        )

    @classmethod
    def of_model(cls, model: Any) -> Shape:
        """The shape of a loaded model (its parameters counted as they are)."""
        return cls.from_config(model.config, sum(p.numel() for p in model.parameters()))


# The paper's models from their hub configs (Qwen2.5-0.5B: 24 layers of 896, 2 key/value heads of 64;
# Qwen2.5-1.5B and Qwen2-Math-1.5B: 28 layers of 1536, 2 key/value heads of 128; vocabulary 151,936; tied
# embeddings). tests/test_plan.py rebuilds each config and counts its parameters.
KNOWN: dict[str, Shape] = {
    "Qwen/Qwen2.5-0.5B": Shape(494_032_768, 24, 896, 128, 4864, 151_936),
    "Qwen/Qwen2.5-1.5B": Shape(1_543_714_304, 28, 1536, 256, 8960, 151_936),
    "Qwen/Qwen2-Math-1.5B": Shape(1_543_714_304, 28, 1536, 256, 8960, 151_936),
}


def shape_of(spec: str) -> tuple[Shape | None, str]:
    """A model specification's shape without loading weights, and where it came from: ``config`` (read from
    disk), ``table`` (:data:`KNOWN`: a hub id that is not on disk) or ``unknown`` (None)."""
    from transformers import AutoConfig

    from pspo_repro.models import loading, tiny

    if tiny.is_tiny(spec):
        recipe = tiny.recipe_of(spec)
        return Shape.from_config(tiny._qwen2_config(recipe, tiny.build_tokenizer(recipe.tokenizer))), "config"
    folder = Path(spec).expanduser()
    try:
        if folder.is_dir():
            source = loading.resolve(spec)
            if not source.gguf_file:
                return Shape.from_config(AutoConfig.from_pretrained(source.path)), "config"
        elif loading.looks_like_hub_id(spec):
            # the local hub cache only: a dry run reaches no network
            return Shape.from_config(AutoConfig.from_pretrained(spec, local_files_only=True)), "config"
    except (OSError, ValueError):
        pass
    if spec in KNOWN:
        return KNOWN[spec], "table"
    return None, "unknown"


# --- disk ---------------------------------------------------------------------------------------

FLOAT32 = 4
ADAM_STATE = 2 * FLOAT32  # Adam's two moments per parameter, float32


def weights_bytes(parameters: int, dtype_bytes: int = FLOAT32) -> int:
    """A saved model's weights (safetensors holds the tensors and a small header)."""
    return parameters * dtype_bytes


def trainer_checkpoint_bytes(parameters: int, optimizer: str = "adamw") -> int:
    """A transformers trainer checkpoint: float32 weights and the optimizer's state (Adam: two moments; plain
    SGD: none); the scheduler, RNG and trainer states are kilobytes."""
    return weights_bytes(parameters) + (parameters * ADAM_STATE if optimizer == "adamw" else 0)


# --- memory of generation -------------------------------------------------------------------------

# One decoding step's logits in float32 and the sampler's copies of them (scaled and filtered scores, sorted
# values, int64 sort indices, softmax, cumulative sum): about 8 float32 values per vocabulary entry.
SAMPLER_BYTES_PER_VOCAB = 8 * FLOAT32
# Transient activations of one layer during the prompt's forward pass, per prompt token: the MLP's gate, up
# and product (up to 4 x intermediate) and the residual, norm and attention tensors (about 8 x hidden).
PREFILL_INTERMEDIATES, PREFILL_HIDDENS = 4, 8


def sequence_bytes(shape: Shape, prompt_tokens: int, new_tokens: int, activation_bytes: int = 2) -> int:
    """Memory one sequence of a ``generate`` call needs at most: its key/value cache over the whole length,
    the sampler's buffers of one step, and one layer's activations on the prompt (the last two are transient
    but counted as held at once, to err on the side of fitting). ``activation_bytes``: 2 under bf16
    autocast, 4 in float32."""
    cache = 2 * shape.layers * shape.kv_dim * (prompt_tokens + new_tokens) * activation_bytes
    sampler = shape.vocab * SAMPLER_BYTES_PER_VOCAB
    prefill = prompt_tokens * (PREFILL_INTERMEDIATES * shape.intermediate + PREFILL_HIDDENS * shape.hidden)
    return cache + sampler + prefill * activation_bytes


def generation_batch(
    shape: Shape,
    prompt_tokens: int,
    new_tokens: int,
    free_bytes: float,
    activation_bytes: int = 2,
    share: float = 0.5,
) -> int:
    """Sequences per ``generate`` call: as many as fit in ``share`` of ``free_bytes`` (the rest is margin for
    the allocator's fragmentation and the estimate's error), rounded down to a power of two so that small
    differences in free memory give the same batch; at least 1."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    fits = int(
        share * max(free_bytes, 0.0) // sequence_bytes(shape, prompt_tokens, new_tokens, activation_bytes)
    )
    return 1 << (fits.bit_length() - 1) if fits >= 1 else 1


def free_cuda_bytes(device: Any, pending_bytes: int = 0) -> float:
    """Memory a ``generate`` call on a CUDA ``device`` can use: what the driver has free plus what torch's
    allocator holds unused, less ``pending_bytes`` the run will allocate later (an optimizer state not yet
    created)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return float(free + cached - pending_bytes)
