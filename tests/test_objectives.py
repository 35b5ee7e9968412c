"""The objectives' algebra: autograd against closed-form weights, PSPO's identities, the clip's zeros."""

from __future__ import annotations

import math

import pytest
import torch

from pspo_repro.training import objectives

ALL = {
    "clip": {"epsilon": 0.2},
    "pspo": {"alpha": 0.1},
    "sigmoid": {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05},
    "topr": {},
    "noclip": {},
    "dualclip": {"epsilon": 0.2, "clip_ratio_c": 3.0},
    "gspo": {"epsilon": 0.2, "epsilon_high": 0.28},
    "cispo": {"epsilon_high": 1.5},  # a cap the random ratios cross, so both branches are tested
    "vespo": {},
}
# objectives that run at either ratio level (gspo is sequence-level, vespo token-level, by definition)
EITHER_LEVEL = [n for n in ALL if n not in objectives.FIXED_LEVELS]


def random_inputs(seed: int, b: int = 8, t: int = 16, spread: float = 0.6):
    """Log-probs whose ratios spread well beyond a 0.2 clip range, and mixed-sign advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logp = old + spread * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    return logp, old, adv


def autograd_weight(obj, logp, old, adv, mask=None):
    """-(d loss / d logp) / A, elementwise, from autograd. At sequence level every token carries its
    sequence's loss and d log s / d logp_t = 1 / T, so the sum over a sequence's T tokens gives -w A too."""
    logp = logp.clone().requires_grad_(True)
    loss = obj.per_token_loss(logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return -grad / adv.unsqueeze(-1)


def closed_form_weight(obj, logp, old, adv, mask=None):
    """The closed-form weight of the ratio each token's weight reads (its own, its sequence's s or W)."""
    read = obj.read_log_ratio(objectives.log_ratio(logp, old, obj.level, mask), mask)
    return obj.grad_weight(torch.exp(read), adv).expand_as(logp)


def test_names_lists_the_objectives():
    assert objectives.names() == [
        "clip",
        "pspo",
        "sigmoid",
        "topr",
        "noclip",
        "dualclip",
        "gspo",
        "cispo",
        "vespo",
    ]


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autograd_matches_closed_form_weight(name, seed):
    obj = objectives.get(name, **ALL[name])
    logp, old, adv = random_inputs(seed)
    expected = closed_form_weight(obj, logp, old, adv)
    got = autograd_weight(obj, logp, old, adv)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the weight the trainer's probes record is the same closed form
    lr = objectives.log_ratio(logp, old, obj.level)
    torch.testing.assert_close(obj.token_weight(lr, adv).expand_as(logp), expected, rtol=1e-12, atol=0)


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
    scales = {name: 1.0 for name in ALL} | {"pspo": 0.9}
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


@pytest.mark.parametrize("name", [*EITHER_LEVEL, "gspo"])
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
        (
            "ppo",
            {},
            "unknown objective 'ppo'; known objectives: clip, pspo, sigmoid, topr, noclip, dualclip, gspo, "
            "cispo, vespo",
        ),
        ("pspo", {"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
        ("pspo", {"alpha": -0.1}, "alpha must be in [0, 1], got -0.1"),
        ("clip", {"epsilon": -0.1}, "epsilon must be >= 0, got -0.1"),
        ("sigmoid", {"sapo_temperature_pos": 0.0}, "sapo_temperature_pos must be > 0, got 0.0"),
        ("sigmoid", {"sapo_temperature_neg": -1.0}, "sapo_temperature_neg must be > 0, got -1.0"),
        ("clip", {"alpha": 0.1}, "allowed: epsilon, epsilon_high"),
        ("clip", {"eps": 0.1}, "allowed: epsilon, epsilon_high"),
        (
            "dualclip",
            {"clip_ratio_c": 1.0},
            "dualclip: clip_ratio_c must be > 1 (for A < 0 the loss is capped",
        ),
        ("gspo", {"epsilon": -1.0}, "gspo: epsilon must be >= 0, got -1.0"),
        ("cispo", {"epsilon_high": 0.2}, "not a clip range around 1, and must be >= 1, got 0.2"),
        ("cispo", {"epsilon": 0.2}, "allowed: epsilon_high"),
        ("vespo", {"vespo_k_neg": -1.0}, "vespo: vespo_k_neg must be >= 0, got -1.0"),
        ("vespo", {"vespo_lambda_pos": 0.0}, "vespo: vespo_lambda_pos must be > 0, got 0.0"),
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
        "clip_ratio_c",
        "vespo_k_pos",
        "vespo_lambda_pos",
        "vespo_k_neg",
        "vespo_lambda_neg",
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


# --- the field's objectives beside PSPO: each one's claim, in one test --------------------------------


def test_cispo_keeps_every_tokens_gradient():
    """CISPO: no token's gradient is zeroed for any r > 0; its weight is min(r, epsilon_max)."""
    cap = 2.0
    obj = objectives.get("cispo", epsilon_high=cap)
    ratio = torch.logspace(-6, 6, 25, dtype=torch.float64).repeat(2, 1)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w = autograd_weight(obj, torch.log(ratio), torch.zeros_like(ratio), adv)
    assert torch.all(w > 0)
    torch.testing.assert_close(w, torch.clamp(ratio, max=cap), rtol=1e-12, atol=0)
    assert objectives.get("cispo").params == {"epsilon_high": 5.0}  # ScaleRL's cap unless one is given


def test_gspo_keeps_or_drops_whole_sequences():
    """GSPO: within a sequence every token's weight is the same, and a sequence is kept or dropped whole
    (gradients through the token log-probs, ragged completions, GSPO's mean over sequences)."""
    obj = objectives.get("gspo", epsilon=3e-4, epsilon_high=4e-4)
    assert obj.level == "sequence"
    logp, old, adv = random_inputs(12, spread=0.002)  # sequence ratios within a few 1e-4 of 1, as in GSPO
    mask = torch.ones_like(logp)
    for i in range(mask.size(0)):
        mask[i, 6 + i :] = 0
    logp = logp.clone().requires_grad_(True)
    per_seq = (obj.per_token_loss(logp, old, adv, mask) * mask).sum(-1) / mask.sum(-1)
    (grad,) = torch.autograd.grad(per_seq.mean(), logp)
    kept = []
    for i in range(mask.size(0)):
        g = grad[i, mask[i].bool()]
        assert torch.all(g == g[0]), f"sequence {i}: tokens weighted differently"
        assert torch.all(grad[i, ~mask[i].bool()] == 0)  # padding gets nothing
        kept.append(bool(g[0] != 0))
    assert any(kept) and not all(kept)  # both kinds present, so the test sees both
    # kept exactly where the clip on s does not bind, with weight s: -dL/dlogp_t = s A / (|y| B)
    s = torch.exp(objectives.log_ratio(logp.detach(), old, "sequence", mask)).squeeze(-1)
    binds = ((adv > 0) & (s > 1 + 4e-4)) | ((adv < 0) & (s < 1 - 3e-4))
    assert kept == (~binds).tolist()
    n = mask.sum(-1)
    expected = torch.where(binds, torch.zeros_like(s), s * adv / (n * len(n)))
    torch.testing.assert_close(-grad[:, 0], expected, rtol=1e-9, atol=1e-15)


def test_clip_higher_zeroes_fewer_positive_advantage_tokens():
    """Clip-higher (DAPO's epsilon_high 0.28 over the clip's 0.2): on the same ratios fewer tokens with A > 0
    are zeroed, and tokens with A < 0 are treated exactly as by the symmetric clip."""
    logp, old, adv = random_inputs(13)
    ratio = torch.exp(logp - old)
    a = adv.unsqueeze(-1).expand_as(ratio)
    symmetric = objectives.get("clip", epsilon=0.2).grad_weight(ratio, adv)
    higher = objectives.get("clip", epsilon=0.2, epsilon_high=0.28).grad_weight(ratio, adv)
    pos, neg = a > 0, a < 0
    assert int((higher[pos] == 0).sum()) < int((symmetric[pos] == 0).sum())
    assert torch.equal(higher[neg], symmetric[neg])
    # the tokens it gives back are exactly those with 1.2 < r <= 1.28
    back = pos & (ratio > 1.2) & (ratio <= 1.28)
    assert back.any() and torch.equal((higher != symmetric), back)


def test_dualclip_caps_the_loss_for_negative_advantages():
    """Dual clip: for A < 0 and r > c the loss is capped at -c A and the gradient there is zero; elsewhere it
    is the clip (A > 0 everywhere, A < 0 up to c)."""
    c = 3.0
    dual = objectives.get("dualclip", epsilon=0.2, clip_ratio_c=c)
    clip = objectives.get("clip", epsilon=0.2)
    ratio = torch.tensor([[0.5, 0.9, 1.5, 2.9, 3.5, 10.0, 1e4]], dtype=torch.float64).repeat(2, 1)
    adv = torch.tensor([-0.7, 0.7], dtype=torch.float64)
    logp, old = torch.log(ratio), torch.zeros_like(ratio)
    loss = dual.per_token_loss(logp, old, adv)
    w = autograd_weight(dual, logp, old, adv)
    huge = ratio[0] > c
    torch.testing.assert_close(loss[0, huge], torch.full_like(loss[0, huge], c * 0.7))
    assert torch.all(w[0, huge] == 0)
    torch.testing.assert_close(loss[0, ~huge], clip.per_token_loss(logp, old, adv)[0, ~huge])
    torch.testing.assert_close(loss[1], clip.per_token_loss(logp, old, adv)[1])
    torch.testing.assert_close(w, closed_form_weight(dual, logp, old, adv), rtol=1e-12, atol=0)
    assert w[0, 0] == 0 and w[0, 2] == pytest.approx(1.5)  # the clip's own zero below 1 - eps; kept between


def test_vespo_weights_a_sequence_by_its_product_ratio():
    """VESPO: every token of a sequence carries phi(W), W the product of its (unmasked) token ratios, with
    phi(w) = e^lambda w^k e^(-lambda w): 1 at W = 1, largest at W = k / lambda, never exactly 0 in between."""
    k_pos, lam_pos, k_neg, lam_neg = 2.0, 3.0, 3.0, 2.0
    obj = objectives.get("vespo")
    logp, old, adv = random_inputs(14, spread=0.15)
    mask = torch.ones_like(logp)
    mask[:, 10:] = 0
    w = autograd_weight(obj, logp, old, adv, mask)
    big_w = torch.exp(((logp - old) * mask).sum(-1))
    k = torch.where(adv >= 0, k_pos, k_neg).double()
    lam = torch.where(adv >= 0, lam_pos, lam_neg).double()
    phi = math.e**lam * big_w**k * torch.exp(-lam * big_w)
    torch.testing.assert_close(w, phi.unsqueeze(-1).expand_as(w), rtol=1e-9, atol=1e-15)
    assert torch.all(w > 0)
    one = obj.grad_weight(torch.ones(2, dtype=torch.float64), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(one, torch.ones_like(one))
    grid = torch.linspace(0.05, 3.0, 591, dtype=torch.float64)
    for sign, peak in ((1.0, k_pos / lam_pos), (-1.0, k_neg / lam_neg)):
        phi_grid = obj.grad_weight(grid, torch.full_like(grid, sign))
        assert abs(float(grid[phi_grid.argmax()]) - peak) < 0.01


def test_levels_and_aggregations_objectives_are_defined_with():
    assert objectives.level_of("gspo") == "sequence" and objectives.level_of("vespo") == "token"
    assert objectives.level_of("clip") == "token" and objectives.level_of("clip", "sequence") == "sequence"
    with pytest.raises(ValueError, match="objective 'gspo' runs at ratio level 'sequence'.*got 'token'"):
        objectives.get("gspo", level="token")
    with pytest.raises(ValueError, match="objective 'vespo' runs at ratio level 'token'.*got 'sequence'"):
        objectives.get("vespo", level="sequence")
    objectives.check_settings("gspo", "grpo")
    with pytest.raises(ValueError, match="objective 'gspo' needs loss_type 'grpo'.*got 'dapo'"):
        objectives.check_settings("gspo", "dapo")
    objectives.check_settings("vespo", "dapo", "token_truncate")
    objectives.check_settings("vespo", "dapo", None)  # no vLLM correction: nothing to fold
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode 'token_truncate' or 'token_mask'"):
        objectives.check_settings("vespo", "dapo", "sequence_mask")
