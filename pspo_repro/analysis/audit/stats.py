"""The few statistics over seeds that the rules compare: mean, sample sd, standard errors of a mean (of paired
differences) and of a difference of two means."""

from __future__ import annotations

import math


def mean(xs: list[float]) -> float:
    """Arithmetic mean (the list is never empty where it is called)."""
    return sum(xs) / len(xs)


def sd(xs: list[float]) -> float:
    """Sample standard deviation over seeds (nan with fewer than two)."""
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def se_diff(a: list[float], b: list[float]) -> float:
    """Standard error of the difference of two means (nan with fewer than two seeds on a side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return math.sqrt(sd(a) ** 2 / len(a) + sd(b) ** 2 / len(b))


def se_mean(xs: list[float]) -> float:
    """Standard error of a mean over seeds, such as of paired per-seed differences, where the noise the two
    runs of a seed share cancels (nan with fewer than two)."""
    if len(xs) < 2:
        return float("nan")
    return sd(xs) / math.sqrt(len(xs))
