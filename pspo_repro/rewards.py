"""Reward functions in the form TRL's GRPOTrainer calls them: ``f(prompts, completions, **columns)``.

The dataset carries the gold ``answer`` and the grading ``kind`` as columns; TRL passes them through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pspo_repro import grading


def completion_text(completion: Any) -> str:
    """The text of a completion, plain or conversational (a list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _kinds(kind: list[str] | None, n: int) -> list[str]:
    return list(kind) if kind is not None else ["numeric"] * n


def paper_reward(
    prompts: list, completions: list, answer: list[str], kind: list[str] | None = None, **_
) -> list[float]:
    """The authors' reward: 1 if correct, +0.05 for using ####, -0.2 when no number; clipped to [0, 1]."""
    kinds = _kinds(kind, len(completions))
    return [
        grading.paper_reward(completion_text(c), g, k)
        for c, g, k in zip(completions, answer, kinds, strict=True)
    ]


def strict_reward(
    prompts: list, completions: list, answer: list[str], kind: list[str] | None = None, **_
) -> list[float]:
    """1 when the answer in the required format (#### N, or \\boxed{}) is correct, else 0."""
    kinds = _kinds(kind, len(completions))
    return [
        grading.binary_reward(completion_text(c), g, k, metric="strict")
        for c, g, k in zip(completions, answer, kinds, strict=True)
    ]


REWARDS: dict[str, Callable[..., list[float]]] = {"paper": paper_reward, "strict": strict_reward}


def get(name: str) -> Callable[..., list[float]]:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(REWARDS)}")
    return REWARDS[name]
