"""The objectives' algebra: autograd against closed-form weights, PSPO's identities, the clip's zeros."""

from __future__ import annotations

import pytest
import torch

from pspo_repro.training import objectives

ALL = {
    "clip": {"epsilon": 0.2},
    "pspo": {"alpha": 0.1},
    "sigmoid": {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05},
    "topr": {},
    "noclip": {},
}


def random_inputs(seed: int, b: int = 8, t: int = 16, spread: float = 0.6):
    """Log-probs whose ratios spread well beyond a 0.2 clip range, and mixed-sign advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = old + spread * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    return logp, old, adv


def autograd_weight(obj, logp, old, adv):
    """-(d loss / d logp) / A, elementwise, from autograd."""
    logp = logp.clone().requires_grad_(True)
    loss = obj.per_token_loss(logp, old, adv)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return -grad / adv.unsqueeze(-1)


def test_names_lists_the_five_objectives():
    assert objectives.names() == ["clip", "pspo", "sigmoid", "topr", "noclip"]


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autograd_matches_closed_form_weight(name, seed):
    obj = objectives.get(name, **ALL[name])
    logp, old, adv = random_inputs(seed)
    ratio = torch.exp(logp - old)
    expected = obj.grad_weight(ratio, adv)
    got = autograd_weight(obj, logp, old, adv)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_inputs_really_leave_the_clip_range():
    logp, old, _ = random_inputs(0)
    ratio = torch.exp(logp - old)
    outside = ((ratio < 0.8) | (ratio > 1.2)).double().mean().item()
    assert 0.3 < outside < 0.9


@pytest.mark.parametrize("name", list(ALL))
def test_advantages_per_token_equal_per_sequence(name):
    obj = objectives.get(name, **ALL[name])
    logp, old, adv = random_inputs(3)
    per_seq = obj.per_token_loss(logp, old, adv)
    per_tok = obj.per_token_loss(logp, old, adv.unsqueeze(-1).expand_as(logp))
    torch.testing.assert_close(per_seq, per_tok)


def test_clip_gradient_is_zero_exactly_where_it_binds():
    eps = 0.2
    obj = objectives.get("clip", epsilon=eps)
    logp, old, adv = random_inputs(4)
    ratio = torch.exp(logp - old)
    a = adv.unsqueeze(-1).expand_as(ratio)
    binds = ((a > 0) & (ratio > 1 + eps)) | ((a < 0) & (ratio < 1 - eps))
    w = autograd_weight(obj, logp, old, adv)
    assert binds.any() and (~binds).any()
    assert torch.all(w[binds] == 0)
    assert torch.all(w[~binds] > 0)
    torch.testing.assert_close(w[~binds], ratio[~binds])


def test_clip_asymmetric_bounds():
    obj = objectives.get("clip", epsilon=0.1, epsilon_high=0.3)
    ratio = torch.tensor([[1.25, 1.35, 0.85, 0.95]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    w = obj.grad_weight(ratio, adv)
    torch.testing.assert_close(w, torch.tensor([[1.25, 0.0, 0.0, 0.95]]))


def test_pspo_smoothed_ratio_identity():
    alpha = 0.3
    obj = objectives.get("pspo", alpha=alpha)
    logp, old, adv = random_inputs(5)
    p_theta, p_old = torch.exp(logp), torch.exp(old)
    smoothed_prob = (1 - alpha) * p_theta + alpha * p_old
    ratio = p_theta / p_old
    torch.testing.assert_close(smoothed_prob / p_old, obj.smoothed_ratio(ratio))
    # the loss is exactly -(smoothed ratio) * A
    torch.testing.assert_close(
        obj.per_token_loss(logp, old, adv), -(smoothed_prob / p_old) * adv.unsqueeze(-1)
    )


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.4, 1.0])
def test_pspo_gradient_is_scaled_noclip_gradient(alpha):
    logp, old, adv = random_inputs(6)
    w_pspo = autograd_weight(objectives.get("pspo", alpha=alpha), logp, old, adv)
    w_noclip = autograd_weight(objectives.get("noclip"), logp, old, adv)
    torch.testing.assert_close(w_pspo, (1 - alpha) * w_noclip)


def test_pspo_alpha_zero_equals_noclip_loss():
    logp, old, adv = random_inputs(7)
    torch.testing.assert_close(
        objectives.get("pspo", alpha=0.0).per_token_loss(logp, old, adv),
        objectives.get("noclip").per_token_loss(logp, old, adv),
    )


def test_tv_of_smoothed_policy_shrinks_by_one_minus_alpha():
    """The policy PSPO optimises, pi~ = pi_old * smoothed_ratio(pi_theta / pi_old), is a distribution
    whose total-variation distance to pi_old is (1 - alpha) times pi_theta's, and whose KL is no larger."""
    alpha = 0.25
    obj = objectives.get("pspo", alpha=alpha)
    g = torch.Generator().manual_seed(8)
    p_theta = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    p_old = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    p_smooth = p_old * obj.smoothed_ratio(p_theta / p_old)
    torch.testing.assert_close(p_smooth.sum(), torch.tensor(1.0, dtype=torch.float64))
    tv = 0.5 * (p_theta - p_old).abs().sum()
    tv_smooth = 0.5 * (p_smooth - p_old).abs().sum()
    assert float(tv) > 0.1  # far enough apart for the factor to show
    torch.testing.assert_close(tv_smooth, (1 - alpha) * tv)
    kl = (p_smooth * (p_smooth / p_old).log()).sum()
    assert kl <= (1 - alpha) * (p_theta * (p_theta / p_old).log()).sum()
    # the objectives without smoothing leave the policy as it is
    torch.testing.assert_close(objectives.get("clip").smoothed_ratio(p_theta / p_old), p_theta / p_old)


def test_all_objectives_agree_on_policy():
    """With r = 1 (one update per rollout batch) every objective's weight is 1 up to its scale."""
    logp, _, adv = random_inputs(9)
    ratio = torch.ones_like(logp)
    scales = {"clip": 1.0, "pspo": 0.9, "sigmoid": 1.0, "topr": 1.0, "noclip": 1.0}
    for name, scale in scales.items():
        w = objectives.get(name, **ALL[name]).grad_weight(ratio, adv)
        torch.testing.assert_close(w, torch.full_like(w, scale))


def test_sigmoid_weight_decays_far_from_one():
    obj = objectives.get("sigmoid", sapo_temperature_pos=1.0, sapo_temperature_neg=1.0)
    ratio = torch.tensor([1.0, 2.0, 5.0, 20.0])
    w = obj.grad_weight(ratio, torch.ones(4))
    assert w[0] == 1.0 and w[3] < 1e-5 and w[3] < w[2]


def test_topr_weights():
    obj = objectives.get("topr")
    ratio = torch.tensor([0.5, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    torch.testing.assert_close(obj.grad_weight(ratio, adv), torch.tensor([1.0, 1.0, 0.5, 1.0]))


@pytest.mark.parametrize("name", list(ALL))
def test_sequence_level_autograd_matches_weight_on_sequence_log_ratio(name):
    obj = objectives.get(name, level="sequence", **ALL[name])
    logp, old, adv = random_inputs(10)
    mask = torch.ones_like(logp)
    mask[:, 12:] = 0
    seq_lr = objectives.log_ratio(logp, old, "sequence", mask).detach().requires_grad_(True)
    loss = obj.loss_from_log_ratio(seq_lr, adv, like=logp)
    assert loss.shape == logp.shape
    (grad,) = torch.autograd.grad(loss[:, 0].sum(), seq_lr)
    expected = obj.grad_weight(torch.exp(seq_lr.detach()), adv.unsqueeze(-1))
    torch.testing.assert_close(-grad / adv.unsqueeze(-1), expected)


def test_sequence_ratio_is_masked_geometric_mean():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    lr = objectives.log_ratio(logp, old, "sequence", mask)
    torch.testing.assert_close(torch.exp(lr), torch.tensor([[(2.0 * 0.5) ** 0.5]]))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ppo", {}, "unknown objective 'ppo'; known objectives: clip, pspo, sigmoid, topr, noclip"),
        ("pspo", {"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
        ("pspo", {"alpha": -0.1}, "alpha must be in [0, 1], got -0.1"),
        ("clip", {"epsilon": -0.1}, "epsilon must be >= 0, got -0.1"),
        ("sigmoid", {"sapo_temperature_pos": 0.0}, "sapo_temperature_pos must be > 0, got 0.0"),
        ("sigmoid", {"sapo_temperature_neg": -1.0}, "sapo_temperature_neg must be > 0, got -1.0"),
        ("clip", {"alpha": 0.1}, "allowed: epsilon, epsilon_high"),
        ("clip", {"eps": 0.1}, "allowed: epsilon, epsilon_high"),
    ],
)
def test_bad_parameters_name_value_and_allowed(name, params, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        objectives.get(name, **params)


def test_bad_level_and_bad_advantage_shape():
    with pytest.raises(ValueError, match="'token' or 'sequence', got 'word'"):
        objectives.get("clip", level="word")
    logp, old, _ = random_inputs(11)
    with pytest.raises(ValueError, match=r"shape \(B,\) or \(B, T\)"):
        objectives.get("noclip").per_token_loss(logp, old, torch.ones(3, 2))


def test_each_parameter_reads_the_setting_of_its_name():
    """One mapping (PARAMS) serves the run settings and the trainer config, whose fields carry these names."""
    from dataclasses import fields

    from pspo_repro.training.settings import TrainSettings
    from pspo_repro.training.trainer import PSPOGRPOConfig

    assert objectives.parameter_names() == (
        "epsilon",
        "epsilon_high",
        "alpha",
        "sapo_temperature_pos",
        "sapo_temperature_neg",
    )
    for cls in (TrainSettings, PSPOGRPOConfig):
        assert set(objectives.parameter_names()) <= {f.name for f in fields(cls)}, cls
    settings = TrainSettings(objective="clip", epsilon=0.3, epsilon_high=None, alpha=0.7)
    assert objectives.params_of("clip", settings) == {"epsilon": 0.3}  # None: the objective's default
    assert objectives.params_of("pspo", settings) == {"alpha": 0.7}
    assert objectives.params_of("topr", settings) == {}
    assert objectives.get("clip", **objectives.params_of("clip", settings)).params == {
        "epsilon": 0.3,
        "epsilon_high": 0.3,
    }
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        objectives.params_of("ppo", settings)
