"""What a study's tasks need from the Python environment, checked before any work: a task that evaluates
with vLLM or trains with vLLM rollouts would otherwise fail at its evaluation, after hours of training."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from pspo_repro.study.launch import Task
from pspo_repro.training import rollouts

FIX = (
    "install the vllm extra (pip install -e '.[vllm]') on a machine with an NVIDIA GPU, or rerun "
    "scripts/setup_env.sh there (it installs the extra whenever nvidia-smi works)"
)


def vllm_uses(tasks: Iterable[Task]) -> list[str]:
    """Why ``tasks`` need vLLM, in words (empty when they do not)."""
    tasks = list(tasks)
    uses = []
    if any(t.eval_options.get("backend") == "vllm" for t in tasks):
        uses.append("its evaluation backend is vllm")
    if any(t.kind == "train" and (t.settings or {}).get("use_vllm") for t in tasks):
        uses.append("its rollouts use vLLM (use_vllm)")
    return uses


def missing_vllm(who: str, tasks: Iterable[Task]) -> str | None:
    """The error to stop with when ``tasks`` (of ``who``: a profile, a run) need vLLM and it is not
    installed; None when they do not need it or it is there."""
    uses = vllm_uses(tasks)
    if not uses or rollouts.vllm_installed():
        return None
    return f"{who} needs vLLM ({' and '.join(uses)}), which is not installed in {sys.prefix}: {FIX}"


def require_vllm(who: str, tasks: Iterable[Task]) -> None:
    """Raise ImportError (one line) when ``tasks`` need vLLM and it is not installed."""
    error = missing_vllm(who, tasks)
    if error is not None:
        raise ImportError(error)
