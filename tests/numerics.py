"""Tolerances set by float32 rounding, for comparing losses and gradients computed along different paths.

An element of a parameter gradient is a sum of many per-token terms of either sign, so its rounding error
scales with the size of those terms (of the order of the gradient's largest entries), not with the element
itself: an elementwise relative tolerance fails on rounding wherever terms cancel. Measured on the micro
model (PSPO at alpha 0.4 against 0.6 x noclip, 4 batches, 1 and 2 threads): the largest entry of the
difference is 4 to 8 float32 epsilons of the gradient's largest entry, and the difference's norm 2 to 7
epsilons of the gradient's norm. A real defect (a wrong factor, a token weighted differently) moves them by
orders of magnitude more than the 100 epsilons allowed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
ULPS = 100.0


def assert_gradients_close(
    actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], ulps: float = ULPS
) -> None:
    """Two gradients (one tensor per parameter) agree to float32 rounding: every entry of the difference is
    within ``ulps`` epsilons of the largest entry of the expected gradient, and so is its norm of the
    expected gradient's norm. Compared in float64, so the check itself adds no rounding."""
    assert len(actual) == len(expected)
    a = torch.cat([t.detach().reshape(-1).double() for t in actual])
    b = torch.cat([t.detach().reshape(-1).double() for t in expected])
    assert a.shape == b.shape
    tol = ulps * EPS32
    worst, largest = float((a - b).abs().max()), float(b.abs().max())
    assert worst <= tol * largest, f"largest difference {worst:.3g} > {tol:.2g} x largest entry {largest:.3g}"
    diff, norm = float((a - b).norm()), float(b.norm())
    assert diff <= tol * norm, f"difference norm {diff:.3g} > {tol:.2g} x gradient norm {norm:.3g}"


def assert_losses_close(actual: torch.Tensor, expected: torch.Tensor, ulps: float = ULPS) -> None:
    """Two scalar losses (means of per-token terms of order 1) agree to float32 rounding."""
    a, b = float(actual), float(expected)
    assert abs(a - b) <= ulps * EPS32 * max(1.0, abs(b)), f"losses {a!r} and {b!r} differ beyond rounding"
