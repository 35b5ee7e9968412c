"""One run across several processes (``accelerate launch``): who writes, and how the batch is split.

A run's files (settings, provenance, logs, probes, validation, checkpoint, ``DONE``) are written by the
main process only, and only the main process validates; every process trains. The per-step batch is a
property of the experiment, not of the hardware: the profile's ``batch_size`` x ``grad_accum``
completions per optimizer step (64 in the paper profile) and ``batch_size`` x ``steps_per_generation``
per generation stay the same whatever the number of processes, and :func:`batch_layout` derives the
per-process numbers that keep them.

The world size and rank are read from the variables every launcher sets (``accelerate launch``,
``torchrun``), so nothing here starts a process group; a plain ``python`` process is rank 0 of 1.

Work done by the main process alone while the others wait (validation, finishing the run) goes through
:func:`on_main`: the others wait in a broadcast of its outcome rather than in a barrier, so an error on the
main process stops every process at once instead of leaving them in the barrier until the collective's
timeout (30 minutes under NCCL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """How many processes train this run (1 without a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a distributed launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes the run's files and validates (global rank 0)."""
    return rank() == 0


class MainProcessFailed(RuntimeError):
    """Raised on the other processes when work done by the main process alone raised there."""


def on_main(work: Callable[[], T], what: str) -> T | None:
    """Run ``work`` on the main process while the others wait; its result on the main process, None on the
    others. When ``work`` raises on the main process, its error is sent to the others, which raise
    :class:`MainProcessFailed` with it (after leaving the process group), and the main process re-raises: every
    process stops together."""
    if world_size() == 1:
        return work() if is_main_process() else None
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # the process group the trainer set up (or, before it, one set up from the environment)
    if is_main_process():
        try:
            result = work()
        except BaseException as err:
            # the others wait in this broadcast, not in a barrier: they learn of the error and stop too
            dist.broadcast_object_list([{"error": f"{type(err).__name__}: {err}"}], src=0)
            raise
        dist.broadcast_object_list([{"error": None}], src=0)
        return result
    message: list[Any] = [None]
    dist.broadcast_object_list(message, src=0)
    if message[0]["error"] is not None:
        # this process stops here: a process group left alive until the interpreter exits can abort it
        dist.destroy_process_group()
        raise MainProcessFailed(
            f"{what} failed on the main process (rank 0), so rank {rank()} stops too: {message[0]['error']}"
        )
    return None


def leave() -> None:
    """End this process's part in a finished distributed run: wait for the others, then destroy the process
    group. A group left alive until the interpreter exits can abort a gloo process ("terminate called
    without an active exception") after its run is written. Nothing to do in a plain process."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # every process is past the run's last collective before the group goes
        dist.destroy_process_group()


@dataclass(frozen=True)
class BatchLayout:
    """Per-process batch settings for one world size (TRL's ``per_device_train_batch_size``,
    ``gradient_accumulation_steps`` and ``steps_per_generation``)."""

    batch_size: int
    grad_accum: int
    steps_per_generation: int
    world_size: int

    @property
    def completions_per_step(self) -> int:
        """Completions behind one optimizer step, over all processes."""
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def completions_per_generation(self) -> int:
        """Completions generated at once, over all processes."""
        return self.batch_size * self.steps_per_generation * self.world_size


def batch_layout(
    batch_size: int, grad_accum: int, steps_per_generation: int | None, world: int
) -> BatchLayout:
    """The per-process layout that keeps a single-process layout's per-step and per-generation batches.

    The micro-batch (memory per device) is kept when it can be, and the accumulation steps are shared
    out: ``grad_accum`` and ``steps_per_generation`` divided by ``world``. Otherwise the micro-batch is
    split (``batch_size`` divided by ``world``). A world size that divides neither is an error, since any
    other layout would change the experiment."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    spg = grad_accum if steps_per_generation is None else steps_per_generation
    if spg < 1:
        raise ValueError(f"steps_per_generation must be >= 1, got {spg}")
    if grad_accum % world == 0 and spg % world == 0:
        return BatchLayout(batch_size, grad_accum // world, spg // world, world)
    if batch_size % world == 0:
        return BatchLayout(batch_size // world, grad_accum, spg, world)
    raise ValueError(
        f"{world} processes cannot share the per-step batch of batch_size {batch_size} x grad_accum "
        f"{grad_accum} = {batch_size * grad_accum} completions (generation: batch_size x "
        f"steps_per_generation {spg} = {batch_size * spg}): the number of processes must divide "
        f"grad_accum and steps_per_generation, or batch_size; use e.g. "
        f"{', '.join(str(n) for n in _fitting_worlds(batch_size, grad_accum, spg))} processes"
    )


def _fitting_worlds(batch_size: int, grad_accum: int, spg: int, most: int = 16) -> list[int]:
    """World sizes up to ``most`` that :func:`batch_layout` accepts (for the error message)."""
    return [n for n in range(1, most + 1) if (grad_accum % n == 0 and spg % n == 0) or batch_size % n == 0]


def settings_layout(settings: Any) -> BatchLayout:
    """The layout of a run's settings (``TrainSettings``) under the current world size."""
    return batch_layout(settings.batch_size, settings.grad_accum, settings.steps_per_generation, world_size())
