"""Rewards: the paper's shaped reward of one completion, and reward functions in the form TRL's
GRPOTrainer calls them: ``f(prompts, completions, **columns)``.

The dataset carries the gold ``answer`` and the grading ``kind`` as columns; TRL passes them through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pspo_repro.evaluation import grading

logger = logging.getLogger(__name__)


def paper_reward_value(completion: str, gold: str, kind: str = "numeric") -> float:
    """The authors' reward (``gsm8k_numeric_reward`` in their ``maths_rewards.py``) for one completion.

    1 if the value of :func:`grading.paper_value` equals the gold's (tolerance 1e-6), +0.05 when
    :func:`grading.paper_format_bonus` holds (a digit right after ``####`` and more text on that line),
    -0.2 when no number is found; clipped to [0, 1]. The only values are 1.0, 0.05 and 0.0, and the
    reward exceeds 0.5 exactly when the ``paper`` metric grades the completion correct.

    Two extensions for answers the authors never trained on, so that the reward still measures
    correctness: a non-numeric gold in a numeric benchmark (ASDiv's "3:4", "Yes") is correct when the
    flexible metric says so, with no "no number" penalty; a LaTeX answer (``kind="latex"``) is read by
    :func:`grading.latex_answer` and compared by equivalence, with the penalty when nothing is read.
    """
    grading.check_kind(kind)
    text = completion if isinstance(completion, str) else ""
    gold = gold if isinstance(gold, str) else str(gold)
    correct, has_answer = False, False
    try:
        if kind == "latex":
            answer = grading.latex_answer(text)
            has_answer = answer is not None
            correct = has_answer and grading.latex_equal(answer or "", gold)
        elif grading.parse_number(gold) is None:
            has_answer = True
            correct = grading.score(text, gold, kind).flexible
        else:
            answer = grading.paper_value(text)
            has_answer = answer is not None
            correct = grading.paper_equal(answer, grading.paper_value(gold))
    except Exception:  # as in grading.score(): never raise on a completion
        logger.warning("reward failed for a completion of %d characters; counted incorrect", len(text))
    bonus = 0.05 if grading.paper_format_bonus(text) else 0.0
    reward = float(correct) + bonus - (0.0 if has_answer else 0.2)
    return min(1.0, max(0.0, reward))


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
        paper_reward_value(completion_text(c), g, k)
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
