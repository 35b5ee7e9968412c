"""The numeric precision of a model's forward passes: one rule for training, validation and evaluation.

Training keeps float32 master weights and, on a GPU, runs its forward passes under bf16 autocast (TRL's
``bf16=True``), as the authors' runs did; the best checkpoint is saved from those float32 weights. Validation
during training generates with the training model itself, so under the same autocast (accelerate wraps the
model's forward in it). Final evaluation therefore loads the checkpoint's float32 weights and generates under
the same bf16 autocast on a GPU (float32 alone on a CPU, or when the run turned ``bf16`` off): the checkpoint
that validation selected is evaluated with the arithmetic it was selected on.

vLLM has no autocast. It is given its dtype explicitly (:attr:`Precision.vllm_dtype`: bf16 weights and
activations under bf16 autocast, the nearest it offers), where its default ``"auto"`` would follow each
checkpoint's config: bf16 for the hub's Qwen models, and for a float32 checkpoint the platform's first
supported dtype (bf16 on Ampere or later, float16 before; ``vllm/config/model.py``, ``_resolve_auto_dtype``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Precision:
    """Weights' dtype and the autocast dtype of the forward passes (None: no autocast)."""

    weights: str
    autocast: str | None

    @property
    def weights_dtype(self) -> Any:
        import torch

        return getattr(torch, self.weights)

    @property
    def vllm_dtype(self) -> str:
        """vLLM's ``dtype``: the autocast dtype where there is one (matrix products run in it), else the
        weights'."""
        return self.autocast or self.weights

    @contextlib.contextmanager
    def context(self, device: str) -> Iterator[None]:
        """The autocast of the forward passes on ``device`` (nothing without one)."""
        if self.autocast is None:
            yield
            return
        import torch

        with torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, self.autocast)):
            yield

    def record(self) -> dict[str, str | None]:
        return {"weights": self.weights, "autocast": self.autocast}


def for_device(device: str, bf16: bool | None = None) -> Precision:
    """The precision of forward passes on ``device`` ('cpu', 'cuda' or 'cuda:N'): float32 weights, with bf16
    autocast on a GPU unless ``bf16`` says otherwise (a run's ``bf16`` setting; None: the device's
    default)."""
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    autocast = (kind == "cuda") if bf16 is None else bf16
    return Precision("float32", "bfloat16" if autocast else None)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
