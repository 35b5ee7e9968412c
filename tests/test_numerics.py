"""The float32 tolerances of tests/numerics.py pass rounding and fail a real difference."""

from __future__ import annotations

import pytest
import torch

from numerics import EPS32, assert_gradients_close, assert_losses_close


def gradient(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 8, generator=g), 1e-4 * torch.randn(8, generator=g)]


def test_rounding_passes_where_an_elementwise_tolerance_fails():
    exact = [t.double() for t in gradient(0)]
    # float32 rounding of a sum whose terms are as large as the gradient's largest entry
    rounded = [(t + 4 * EPS32 * exact[0].abs().max() * torch.sign(t)).float() for t in exact]
    assert_gradients_close(rounded, exact)
    with pytest.raises(AssertionError):  # the small bias entries fail an elementwise rtol 1e-5, atol 1e-7
        torch.testing.assert_close(rounded[1].double(), exact[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("defect", ["scale", "one token"])
def test_a_real_difference_fails(defect):
    expected = gradient(1)
    actual = [t.clone() for t in expected]
    if defect == "scale":  # (1 - alpha) with another alpha
        actual = [0.99 * t for t in actual]
    else:
        actual[0][3, 2] += 1e-3 * float(expected[0].abs().max())
    with pytest.raises(AssertionError, match="largest difference"):
        assert_gradients_close(actual, expected)


def test_losses():
    assert_losses_close(torch.tensor(0.75 + 8 * EPS32), torch.tensor(0.75))
    with pytest.raises(AssertionError, match="differ beyond rounding"):
        assert_losses_close(torch.tensor(0.7501), torch.tensor(0.75))
