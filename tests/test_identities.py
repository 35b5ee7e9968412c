"""PSPO's exact identities: gradient scaling, TV equality and KL bound, on random distributions and on real
training batches of a real tiny model (TRL's GRPOTrainer with the package's objectives)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pspo_repro.analysis import identities
from pspo_repro.data import prompts
from pspo_repro.training import objectives
from pspo_repro.training.settings import TrainSettings

ALPHAS = [0.0, 0.1, 0.4, 0.9, 1.0]


def random_distributions(seed: int, states: int = 200, vocab: int = 64, spread: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    p_theta = torch.softmax(spread * torch.randn(states, vocab, generator=g, dtype=torch.float64), -1)
    p_old = torch.softmax(spread * torch.randn(states, vocab, generator=g, dtype=torch.float64), -1)
    return p_theta, p_old


@pytest.mark.parametrize("alpha", ALPHAS)
def test_tv_equality_and_kl_bound_on_random_distributions(alpha):
    p_theta, p_old = random_distributions(int(alpha * 10))
    result = identities.trust_region(p_theta, p_old, alpha)
    assert result["states"] == 200
    assert result["tv_error"] < 1e-14
    assert result["kl_excess"] <= 1e-14
    assert result["tv_smooth"] == pytest.approx((1 - alpha) * result["tv_theta"], rel=1e-12, abs=1e-15)
    if 0 < alpha < 1:  # strictly convex: the bound is strict on distinct distributions
        assert result["kl_smooth"] < (1 - alpha) * result["kl_theta"] - 1e-3


def test_trust_region_detects_a_wrong_mixture():
    """The checks can fail: a distribution that is not the mixture breaks the TV equality."""
    p_theta, p_old = random_distributions(3)
    tv = identities.total_variation(identities.smoothed(p_theta, p_old, 0.1), p_old)
    assert float((tv - 0.8 * identities.total_variation(p_theta, p_old)).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        identities.smoothed(p_theta, p_old, 1.5)


def test_kl_divergence_of_known_distributions():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert float(identities.kl_divergence(p, q)) == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert float(identities.total_variation(p, q)) == pytest.approx(0.5)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_scaling_on_a_random_policy(alpha):
    """A linear softmax policy over 16 tokens: PSPO's parameter gradient is (1 - alpha) x the unclipped one."""
    g = torch.Generator().manual_seed(1)
    f64 = torch.float64  # the identity is exact: in float64 rounding cannot reach the tolerance below
    features = torch.randn(6, 9, 8, generator=g, dtype=f64)
    tokens = torch.randint(0, 16, (6, 9), generator=g)
    weight = torch.nn.Parameter(torch.randn(8, 16, generator=g, dtype=f64))
    logp = torch.log_softmax(features @ weight, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old = (logp + 0.5 * torch.randn(6, 9, generator=g, dtype=f64)).detach()
    adv = torch.randn(6, generator=g, dtype=f64)

    def loss_of(objective: objectives.Objective) -> torch.Tensor:
        return objective.per_token_loss(logp, old, adv).mean()

    result = identities.gradient_scaling([weight], loss_of, alpha)
    assert result["rel_diff"] < 1e-12
    assert result["grad_norm_pspo"] == pytest.approx((1 - alpha) * result["grad_norm_noclip"], rel=1e-12)
    assert result["grad_norm_noclip"] > 1e-3


def test_gradient_scaling_detects_another_objective():
    """The comparison can fail: clip's gradient is not a constant multiple of the unclipped one."""
    g = torch.Generator().manual_seed(2)
    logit = torch.nn.Parameter(torch.randn(4, 5, generator=g))
    logp = torch.nn.functional.logsigmoid(logit)
    old = (logp + torch.randn(4, 5, generator=g)).detach()
    adv = torch.randn(4, generator=g)
    clip = objectives.get("clip", epsilon=0.1)

    def loss_of(objective: objectives.Objective) -> torch.Tensor:
        chosen = clip if objective.name == "pspo" else objective
        return chosen.per_token_loss(logp, old, adv).mean()

    assert identities.gradient_scaling([logit], loss_of, 0.0)["rel_diff"] > 0.05


def settings(objective: str, alpha: float) -> TrainSettings:
    return TrainSettings.from_dict(
        dict(
            model="tiny-test",
            dataset="synthetic",
            objective=objective,
            alpha=alpha,
            epsilon=0.2,
            learning_rate=1e-3,
            lr_scheduler="constant",
            warmup_steps=0,
            batch_size=16,
            grad_accum=1,
            steps_per_generation=2,
            num_iterations=2,
            num_generations=4,
            max_completion_length=24,
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "alpha"), [("pspo", 0.4), ("clip", 0.1)])
def test_identities_hold_on_real_training_batches(objective, alpha, tiny_model, tmp_path):
    """Four optimizer steps of real GRPO training on tiny-test (one generation reused 4 times): on every
    micro-batch TRL hands to the loss, the identities hold, while pi_theta itself moves away from pi_old."""
    records = identities.measure(settings(objective, alpha), tmp_path, steps=4, states_per_batch=32)
    assert [r["staleness"] for r in records] == [0, 1, 2, 3]
    summary = identities.summarise(records)
    assert identities.holds(summary) == {"gradient_scaling": True, "tv_equality": True, "kl_bound": True}
    assert summary["grad_rel_diff_max"] < 1e-5
    # the kept copy is the policy that generated the batch: TRL's stored log-probs are its own
    assert summary["old_logp_max_abs_diff"] < 1e-4
    fresh, stale = summary["by_staleness"]["0"], summary["by_staleness"]["3"]
    assert fresh["tv_theta"] == 0.0
    assert stale["tv_theta"] > 1e-3
    assert stale["tv_smooth"] == pytest.approx((1 - alpha) * stale["tv_theta"], rel=1e-9)
    assert stale["kl_smooth"] < (1 - alpha) * stale["kl_theta"]


def test_gradient_tolerance_follows_the_precision():
    """A multiple of the machine epsilon of the dtype the matrix products ran in (GRAD_RTOL_EPS)."""
    assert identities.grad_rtol("float32") == pytest.approx(100 * torch.finfo(torch.float32).eps)
    assert identities.grad_rtol("bf16") == pytest.approx(4 * torch.finfo(torch.bfloat16).eps)
    with pytest.raises(ValueError, match="precision must be one of float32, bf16, got 'fp16'"):
        identities.grad_rtol("fp16")
    # a summary written before precisions were recorded was measured in float32
    old = {"grad_rel_diff_max": 2e-5, "tv_error_max": 0.0, "kl_excess_max": 0.0}
    assert identities.holds(old)["gradient_scaling"] is False
    assert identities.holds({**old, "precision": "bf16"})["gradient_scaling"] is True


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_identities_hold_to_the_precision_of_the_run(bf16, tiny_model, tmp_path):
    """On a GPU the retraining runs under bf16 autocast: the gradient identity then holds to bf16's rounding,
    not float32's, and the kept old policy runs under the same autocast as the current one, so at staleness
    0 (no update since the generation) the two give the same distributions exactly."""
    precision = "bf16" if bf16 else "float32"
    s = dataclasses.replace(settings("pspo", 0.4), bf16=bf16)
    summary = identities.summarise(identities.measure(s, tmp_path, steps=4, states_per_batch=32))
    fresh, stale = summary["by_staleness"]["0"], summary["by_staleness"]["3"]
    assert fresh["tv_theta_max"] == 0.0 and fresh["kl_theta"] == 0.0
    assert stale["tv_theta"] > 1e-3
    assert summary["precision"] == precision
    assert summary["grad_rtol"] == identities.grad_rtol(precision)
    assert identities.holds(summary) == {"gradient_scaling": True, "tv_equality": True, "kl_bound": True}
    assert 0 < summary["grad_rel_diff_max"] <= identities.grad_rtol(precision)
    # the kept copy reproduces TRL's stored log-probs of pi_old (computed in other batches: not bitwise; 7e-7
    # under both precisions here, 0.08 under bf16 when the copy ran without autocast)
    assert summary["old_logp_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_identity_retraining_uses_the_runs_system_prompt(tiny_model, tmp_path):
    """The identities are measured on the run's own prompts: its system prompt included."""
    s = dataclasses.replace(settings("pspo", 0.4), system_prompt="authors")
    trainer = identities.recording_trainer(s, tmp_path, steps=2)
    # the conversation TRL renders with the model's chat template (the tiny models' template leaves the
    # system message out; a Qwen template prints it)
    system, user = trainer.train_dataset[0]["prompt"]
    assert system == {"role": "system", "content": prompts.AUTHORS_SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert trainer.args.max_steps == 2


@pytest.mark.slow
def test_identity_measurement_saves_no_checkpoint(tiny_model, tmp_path):
    """A run that keeps trainer checkpoints (save_steps) is measured without any: none is needed."""
    s = dataclasses.replace(settings("clip", 0.1), save_steps=4)
    records = identities.measure(s, tmp_path, steps=4, states_per_batch=8)
    assert len(records) == 4
    assert not list(tmp_path.rglob("checkpoint-*"))
