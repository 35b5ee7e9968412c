"""The objectives inside TRL's GRPOTrainer: agreement with stock TRL, and what the probes record."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from pspo_repro.models import loading
from pspo_repro.training import rewards
from pspo_repro.training.train import to_dataset
from pspo_repro.training.trainer import PSPOGRPOConfig, PSPOGRPOTrainer

from numerics import assert_gradients_close, assert_losses_close

AGGREGATIONS = ["dapo", "grpo", "bnpo", "dr_grpo"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    source = loading.resolve(str(tiny_model))
    return loading.load_model(source), loading.load_tokenizer(source)


@pytest.fixture(scope="module")
def train_dataset():
    from pspo_repro.data import synthetic

    return to_dataset(synthetic.generate("train", n=64, seed=0))


def make_trainer(cls, config_cls, model, tokenizer, dataset, tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bf16=False,  # TRL defaults to bf16 autocast, which would make exact comparisons meaningless on CPU
    )
    settings.update(overrides)
    trainer = cls(
        model=model,
        reward_funcs=[rewards.paper_reward],
        args=config_cls(**settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def fake_inputs(model, tokenizer, seed: int = 0, b: int = 8, t: int = 10):
    """A batch as TRL's generation step hands it to the loss, with stale old log-probs (ratios far from 1)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, len(tokenizer), (b, 6), generator=g)
    completion_ids = torch.randint(3, len(tokenizer), (b, t), generator=g)
    completion_mask = torch.ones(b, t, dtype=torch.long)
    for i in range(b):  # ragged completion lengths
        completion_mask[i, 4 + i % (t - 4) :] = 0
    with torch.no_grad():
        ids = torch.cat([prompt_ids, completion_ids], 1)
        logits = model(ids).logits[:, prompt_ids.size(1) - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    old = logps + 0.5 * torch.randn(b, t, generator=g)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(b, generator=g),
        "old_per_token_logps": old,
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_and_grads(trainer, model, inputs):
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", AGGREGATIONS)
def test_clip_equals_stock_grpo_trainer(loss_type, model_and_tokenizer, train_dataset, tmp_path):
    model, tok = model_and_tokenizer
    common = dict(loss_type=loss_type, epsilon=0.2, num_iterations=2)
    ours = make_trainer(
        PSPOGRPOTrainer, PSPOGRPOConfig, model, tok, train_dataset, tmp_path / "a", objective="clip", **common
    )
    stock = make_trainer(GRPOTrainer, GRPOConfig, model, tok, train_dataset, tmp_path / "b", **common)
    inputs = fake_inputs(model, tok)
    loss_ours, grads_ours = loss_and_grads(ours, model, inputs)
    loss_stock, grads_stock = loss_and_grads(stock, model, inputs)
    assert loss_ours.abs() > 1e-4
    assert_losses_close(loss_ours, loss_stock)
    assert_gradients_close(grads_ours, grads_stock)


@pytest.mark.slow
def test_sigmoid_equals_stock_sapo(model_and_tokenizer, train_dataset, tmp_path):
    model, tok = model_and_tokenizer
    temps = dict(sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, num_iterations=2)
    # stock "sapo" aggregates like "grpo" (token mean per sequence, then batch mean)
    ours = make_trainer(
        PSPOGRPOTrainer,
        PSPOGRPOConfig,
        model,
        tok,
        train_dataset,
        tmp_path / "a",
        objective="sigmoid",
        loss_type="grpo",
        **temps,
    )
    stock = make_trainer(
        GRPOTrainer, GRPOConfig, model, tok, train_dataset, tmp_path / "b", loss_type="sapo", **temps
    )
    inputs = fake_inputs(model, tok, seed=1)
    loss_ours, grads_ours = loss_and_grads(ours, model, inputs)
    loss_stock, grads_stock = loss_and_grads(stock, model, inputs)
    assert_losses_close(loss_ours, loss_stock)
    assert_gradients_close(grads_ours, grads_stock)


@pytest.mark.slow
@pytest.mark.parametrize(("alpha", "exact"), [(0.0, True), (0.4, False)])
def test_pspo_gradient_is_one_minus_alpha_times_noclip(
    alpha, exact, model_and_tokenizer, train_dataset, tmp_path
):
    """Exactly the unclipped gradient at alpha = 0; (1 - alpha) times it otherwise (to float32 rounding)."""
    model, tok = model_and_tokenizer
    inputs = fake_inputs(model, tok, seed=2)
    grads = {}
    for name, extra in [("pspo", {"alpha": alpha}), ("noclip", {})]:
        trainer = make_trainer(
            PSPOGRPOTrainer,
            PSPOGRPOConfig,
            model,
            tok,
            train_dataset,
            tmp_path / name,
            objective=name,
            num_iterations=2,
            **extra,
        )
        grads[name] = loss_and_grads(trainer, model, inputs)[1]
    assert sum(float(g.abs().sum()) for g in grads["noclip"]) > 0
    expected = [(1 - alpha) * b for b in grads["noclip"]]
    if exact:  # alpha 0: the same arithmetic, bit for bit
        for a, b in zip(grads["pspo"], expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert_gradients_close(grads["pspo"], expected)


def assert_matches_stock(ours, stock, model, inputs, ulps: float | None = None):
    """Our trainer's loss and gradient against stock TRL's on the same batch: the loss to 1e-6 and to float32
    rounding, the whole gradient to float32 rounding (tests/numerics.py)."""
    loss_ours, grads_ours = loss_and_grads(ours, model, inputs)
    loss_stock, grads_stock = loss_and_grads(stock, model, inputs)
    largest = max(float((a - b).abs().max()) for a, b in zip(grads_ours, grads_stock, strict=True))
    # seen with pytest -s: the parity measured, beside the tolerance asserted
    print(
        f"\nparity: loss {float(loss_ours):.6g}, |loss - TRL| {abs(float(loss_ours) - float(loss_stock)):.2e}, "
        f"largest |grad - TRL| {largest:.2e}"
    )
    assert loss_ours.abs() > 1e-4  # a loss that says something
    assert abs(float(loss_ours) - float(loss_stock)) <= 1e-6
    assert_losses_close(loss_ours, loss_stock)
    assert_gradients_close(grads_ours, grads_stock)


def trl_metric(trainer, model, name: str) -> float:
    """The last value stock TRL logged for ``name`` (its own count of clipped tokens or sequences)."""
    return trainer._metrics["train" if model.training else "eval"][name][-1]


def field_trainers(model, tok, dataset, tmp_path, ours: dict, stock: dict, **common):
    """Our trainer and stock TRL's, built on the same model with the settings given to each."""
    a = make_trainer(PSPOGRPOTrainer, PSPOGRPOConfig, model, tok, dataset, tmp_path / "a", **common, **ours)
    b = make_trainer(GRPOTrainer, GRPOConfig, model, tok, dataset, tmp_path / "b", **common, **stock)
    return a, b


@pytest.mark.slow
@pytest.mark.parametrize("cap", [5.0, 1.5])
def test_cispo_equals_stock_cispo(cap, model_and_tokenizer, train_dataset, tmp_path):
    """TRL's cispo: -sg(min(r, epsilon_high)) A log pi, aggregated as dapo; a cap of 1.5 binds on this batch."""
    model, tok = model_and_tokenizer
    ours, stock = field_trainers(
        model,
        tok,
        train_dataset,
        tmp_path,
        ours=dict(objective="cispo", loss_type="dapo"),
        stock=dict(loss_type="cispo"),
        epsilon_high=cap,
        num_iterations=2,
    )
    assert_matches_stock(ours, stock, model, fake_inputs(model, tok, seed=3))
    capped = trl_metric(stock, model, "cispo_clip_ratio")  # TRL's share of A > 0 tokens with r > cap
    assert capped > 0 if cap < 5 else capped == 0


def test_cispo_cap_reaches_trl_as_epsilon_high(tmp_path):
    """TRL falls back to epsilon (0.2) for an unset epsilon_high, which as CISPO's cap would scale every weight
    to at most 0.2; our config writes CISPO's default cap (5) under epsilon_high, where TRL's trainer reads it."""
    from pspo_repro.training.settings import TrainSettings
    from pspo_repro.training.train import grpo_config

    config = PSPOGRPOConfig(output_dir=str(tmp_path), objective="cispo", use_cpu=True, report_to="none")
    assert config.epsilon_high == 5.0 and config.build_objective().params == {"epsilon_high": 5.0}
    settings = TrainSettings(objective="cispo", epsilon_high=None)
    assert grpo_config(settings, tmp_path).epsilon_high == 5.0
    assert grpo_config(TrainSettings(objective="cispo", epsilon_high=8.0), tmp_path).epsilon_high == 8.0
    with pytest.raises(ValueError, match="cispo: epsilon_high is the absolute cap on the ratio"):
        PSPOGRPOConfig(
            output_dir=str(tmp_path), objective="cispo", epsilon_high=0.28, use_cpu=True, report_to="none"
        )


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon", "epsilon_high"), [(3e-4, 4e-4), (0.2, 0.28)])
def test_gspo_equals_stock_sequence_level_clip(
    epsilon, epsilon_high, model_and_tokenizer, train_dataset, tmp_path
):
    """GSPO in TRL: the clip loss at importance_sampling_level "sequence", aggregated as grpo; the GSPO paper's
    range and a wider one, where some sequences are clipped and others kept."""
    model, tok = model_and_tokenizer
    ours, stock = field_trainers(
        model,
        tok,
        train_dataset,
        tmp_path,
        ours=dict(objective="gspo"),
        stock=dict(importance_sampling_level="sequence"),
        loss_type="grpo",
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        num_iterations=2,
    )
    assert ours.args.importance_sampling_level == "sequence"  # the objective's own level, passed on to TRL
    assert_matches_stock(ours, stock, model, fake_inputs(model, tok, seed=2))
    assert 0 < trl_metric(stock, model, "clip_ratio/region_mean") < 1  # sequences clipped and kept


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [{}, dict(vespo_k_pos=1.0, vespo_lambda_pos=0.5, vespo_k_neg=4.0, vespo_lambda_neg=3.0)],
    ids=["trl-defaults", "other-shape"],
)
def test_vespo_equals_stock_vespo(shape, model_and_tokenizer, train_dataset, tmp_path):
    model, tok = model_and_tokenizer
    ours, stock = field_trainers(
        model,
        tok,
        train_dataset,
        tmp_path,
        ours=dict(objective="vespo", loss_type="dapo"),
        stock=dict(loss_type="vespo"),
        num_iterations=2,
        **shape,
    )
    assert_matches_stock(ours, stock, model, fake_inputs(model, tok, seed=5))


@pytest.mark.slow
def test_vespo_folds_vllm_token_weights_into_its_sequence_weight_as_trl(
    model_and_tokenizer, train_dataset, tmp_path
):
    """With vLLM rollouts TRL's vespo multiplies the token importance-sampling ratios into W instead of into
    the loss; ours does the same (the trainers are told their batch came from vLLM, as above)."""
    model, tok = model_and_tokenizer
    ours, stock = field_trainers(
        model,
        tok,
        train_dataset,
        tmp_path,
        ours=dict(objective="vespo", loss_type="dapo"),
        stock=dict(loss_type="vespo"),
        num_iterations=2,
        vllm_importance_sampling_mode="token_truncate",
    )
    for trainer in (ours, stock):
        trainer.use_vllm = True
    inputs = fake_inputs(model, tok, seed=6)
    g = torch.Generator().manual_seed(6)
    inputs["importance_sampling_ratio"] = torch.exp(0.3 * torch.randn(8, 10, generator=g)).clamp(max=3.0)
    assert_matches_stock(ours, stock, model, inputs)


@pytest.mark.slow
def test_clip_higher_equals_stock_epsilon_high(model_and_tokenizer, train_dataset, tmp_path):
    """Clip-higher is the clip with DAPO's asymmetric range (epsilon 0.2, epsilon_high 0.28)."""
    model, tok = model_and_tokenizer
    ours, stock = field_trainers(
        model,
        tok,
        train_dataset,
        tmp_path,
        ours=dict(objective="clip"),
        stock={},
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        num_iterations=2,
    )
    assert_matches_stock(ours, stock, model, fake_inputs(model, tok, seed=7))


def test_vespo_weight_is_trls_gamma_weight():
    """The closed-form weight against TRL's own function, on sequences from W near 0 to beyond e^20."""
    g = torch.Generator().manual_seed(8)
    log_r = 1.5 * torch.randn(16, 12, generator=g)
    log_r[0] = 5.0  # W = e^60, clamped at e^20
    log_r[1] = -5.0  # W = e^-60, floored at 1e-8
    mask = torch.ones(16, 12, dtype=torch.long)
    for i in range(16):
        mask[i, 3 + i % 9 :] = 0
    adv = torch.randn(16, 1, generator=g)
    is_ratio = torch.exp(0.2 * torch.randn(16, 12, generator=g))
    from pspo_repro.training import objectives

    shape = dict(k_pos=1.5, lambda_pos=2.5, k_neg=3.0, lambda_neg=2.0)
    obj = objectives.get("vespo", **{f"vespo_{k}": v for k, v in shape.items()})
    for extra in (None, is_ratio):
        trl = GRPOTrainer.get_gamma_weights(adv, log_r, mask, extra, **shape)
        ours = obj.token_weight(log_r, adv, mask, extra)
        assert torch.equal(ours, trl.expand_as(ours))


def test_unsupported_aggregation_and_objective_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match="loss_type 'sapo' is not an aggregation.*allowed: grpo, bnpo, dr_grpo, dapo"
    ):
        PSPOGRPOConfig(output_dir=str(tmp_path), loss_type="sapo", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        PSPOGRPOConfig(output_dir=str(tmp_path), objective="ppo", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2.0"):
        PSPOGRPOConfig(output_dir=str(tmp_path), objective="pspo", alpha=2.0, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="objective 'gspo' needs loss_type 'grpo'.*got 'dapo'"):
        PSPOGRPOConfig(output_dir=str(tmp_path), objective="gspo", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="objective 'gspo' runs at ratio level 'sequence'"):
        PSPOGRPOConfig(
            output_dir=str(tmp_path),
            objective="gspo",
            loss_type="grpo",
            importance_sampling_level="token",
            use_cpu=True,
            report_to="none",
        )
    with pytest.raises(ValueError, match="'vespo' folds vLLM's token importance-sampling ratios"):
        PSPOGRPOConfig(
            output_dir=str(tmp_path),
            objective="vespo",
            use_vllm=True,
            vllm_importance_sampling_mode="sequence_mask",
            use_cpu=True,
            report_to="none",
        )


def test_probe_interval_must_not_alias_with_the_reuse_cycle(tmp_path):
    def config(**kw):
        base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=8)
        return PSPOGRPOConfig(**{**base, **kw})

    # 2 micro-batches per generation, each used twice, one micro-batch per optimizer step: a 4-step cycle
    cycle = dict(gradient_accumulation_steps=1, steps_per_generation=2, num_iterations=2)
    assert config(**cycle, probe_every=5).optimizer_steps_per_generation() == 4
    with pytest.raises(ValueError, match=r"probe_every=8 is a multiple of the 4 optimizer steps.*e\.g\. 9"):
        config(**cycle, probe_every=8)
    # the paper's setting: 16 micro-batches per step and per generation, used twice, is a 2-step cycle
    paper = dict(gradient_accumulation_steps=16, num_iterations=2)
    assert config(**paper).optimizer_steps_per_generation() == 2
    with pytest.raises(ValueError, match="probe_every=10 is a multiple of the 2 optimizer steps"):
        config(**paper, probe_every=10)
    assert config(**paper, probe_every=10, probes=False).probe_every == 10  # no probes, nothing to alias
    on_policy = dict(gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1)
    assert config(**on_policy, probe_every=4).probe_every == 4  # every step is on-policy: nothing to alias


def test_vllm_importance_sampling_weights_scale_the_loss_as_in_trl_and_reach_the_probes(
    model_and_tokenizer, train_dataset, tmp_path
):
    """With vLLM rollouts TRL hands the loss a per-sequence importance-sampling weight (``sequence_mask``:
    0 for a masked-out sequence). The trainers are built without vLLM (not installed here) and then told
    their batch came from it, which is all the loss step reads."""
    model, tok = model_and_tokenizer
    common = dict(loss_type="dapo", epsilon=0.2, num_iterations=2)
    probes = tmp_path / "probes.jsonl"
    ours = make_trainer(
        PSPOGRPOTrainer,
        PSPOGRPOConfig,
        model,
        tok,
        train_dataset,
        tmp_path / "a",
        objective="clip",
        probes_file=str(probes),
        probe_every=0,
        **common,
    )
    stock = make_trainer(GRPOTrainer, GRPOConfig, model, tok, train_dataset, tmp_path / "b", **common)
    for trainer in (ours, stock):
        assert trainer.vllm_importance_sampling_correction  # TRL's default
        trainer.use_vllm = True
    inputs = fake_inputs(model, tok)
    weights = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.5, 0.0, 0.25]).unsqueeze(1)  # (B, 1): per sequence
    inputs["importance_sampling_ratio"] = weights
    model.train()
    loss_ours, grads_ours = loss_and_grads(ours, model, inputs)
    loss_stock, grads_stock = loss_and_grads(stock, model, inputs)
    assert_losses_close(loss_ours, loss_stock)
    assert_gradients_close(grads_ours, grads_stock)
    ours._flush_probes(1)
    (record,) = [json.loads(line) for line in probes.read_text().splitlines()]
    # token-level statistics: each sequence's weight counted once per completion token
    per_token = weights.expand(8, 10)[inputs["completion_mask"].bool()]
    assert record["vllm_is_weight"]["mean"] == pytest.approx(float(per_token.mean()))
    assert (record["vllm_is_weight"]["min"], record["vllm_is_weight"]["max"]) == (0.0, 2.0)
    assert record["vllm_is_zero_frac"] == pytest.approx(float((per_token == 0).float().mean()))
    assert record["n_tokens"] == int(inputs["completion_mask"].sum())


def probe_record(objective: str, model, tok, dataset, tmp_path, inputs, **settings) -> dict:
    """The probe record of one optimizer step of ``objective`` on ``inputs`` (training mode)."""
    probes = tmp_path / f"{objective}.jsonl"
    trainer = make_trainer(
        PSPOGRPOTrainer,
        PSPOGRPOConfig,
        model,
        tok,
        dataset,
        tmp_path / objective,
        objective=objective,
        probes_file=str(probes),
        probe_every=0,
        num_iterations=2,
        **settings,
    )
    model.train()
    loss_and_grads(trainer, model, inputs)
    trainer._flush_probes(1)
    (record,) = [json.loads(line) for line in probes.read_text().splitlines()]
    return record


def test_probes_record_the_sequences_a_sequence_level_objective_drops(
    model_and_tokenizer, train_dataset, tmp_path
):
    """GSPO's probe record: the fractions of sequences and of tokens whose gradient is zeroed and the sequence
    ratio's statistics, checked by hand and against TRL's own count of clipped sequences; a token-level
    objective's record keeps exactly its earlier fields."""
    model, tok = model_and_tokenizer
    inputs = fake_inputs(model, tok, seed=2)
    mask = inputs["completion_mask"]
    gspo = dict(loss_type="grpo", epsilon=3e-4, epsilon_high=4e-4)
    record = probe_record("gspo", model, tok, train_dataset, tmp_path, inputs, **gspo)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], mask], 1)
    stock = make_trainer(
        GRPOTrainer,
        GRPOConfig,
        model,
        tok,
        train_dataset,
        tmp_path / "stock",
        importance_sampling_level="sequence",
        **gspo,
    )
    with torch.no_grad():
        logps = stock._get_per_token_logps_and_entropies(model, ids, attention, mask.size(1))[0]
    s = torch.exp(((logps - inputs["old_per_token_logps"]) * mask).sum(-1) / mask.sum(-1))
    adv = inputs["advantages"]
    dropped = ((adv > 0) & (s > 1 + 4e-4)) | ((adv < 0) & (s < 1 - 3e-4))
    assert 0 < int(dropped.sum()) < len(s)
    assert record["n_sequences"] == len(s)
    assert record["seq_zero_weight_frac"] == pytest.approx(float(dropped.float().mean()))
    assert record["seq_zero_weight_frac_pos"] == pytest.approx(float(dropped[adv > 0].float().mean()))
    assert record["seq_zero_weight_frac_neg"] == pytest.approx(float(dropped[adv < 0].float().mean()))
    assert record["seq_partial_zero_frac"] == 0  # GSPO keeps or drops a sequence whole
    tokens = mask.sum(-1)
    assert record["zero_weight_frac"] == pytest.approx(float((dropped * tokens).sum() / tokens.sum()))
    assert record["seq_ratio"]["min"] == pytest.approx(float(s.min()), rel=1e-6)
    assert record["seq_ratio"]["max"] == pytest.approx(float(s.max()), rel=1e-6)
    assert record["seq_ratio"]["mean"] == pytest.approx(float(s.mean()), rel=1e-6)
    assert record["seq_mean_abs_s_minus_1"] == pytest.approx(float((s - 1).abs().mean()), rel=1e-5)
    # TRL's clip_ratio/region_mean counts clipped sequences at sequence level: the same set (no A is 0 here)
    model.train()
    loss_and_grads(stock, model, inputs)
    assert record["seq_zero_weight_frac"] == pytest.approx(trl_metric(stock, model, "clip_ratio/region_mean"))

    clip = probe_record("clip", model, tok, train_dataset, tmp_path, inputs, epsilon=0.2)
    assert not any(k.startswith("seq_") or k == "n_sequences" for k in clip)
    assert set(record) - set(clip) == {
        "n_sequences",
        "seq_ratio",
        "seq_mean_abs_s_minus_1",
        "seq_zero_weight_frac",
        "seq_zero_weight_frac_pos",
        "seq_zero_weight_frac_neg",
        "seq_partial_zero_frac",
    }

    # VESPO reads its sequence's product ratio W: recorded per sequence, and every token carries phi(W) > 0
    vespo = probe_record("vespo", model, tok, train_dataset, tmp_path, inputs)
    big_w = torch.exp(((logps - inputs["old_per_token_logps"]) * mask).sum(-1))
    assert vespo["seq_ratio"]["max"] == pytest.approx(float(big_w.max()), rel=1e-5)
    assert vespo["seq_zero_weight_frac"] == 0 and vespo["zero_weight_frac"] == 0


def test_probes_count_the_sequences_zeroed_in_part():
    """A sequence with some but not all of its completion tokens' weights 0 is zeroed in part; one with all
    of them 0 is dropped whole; padding (mask 0) counts neither way, and sequences with A = 0 are left out."""
    from pspo_repro.training.probes import StepProbe

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    weight = torch.tensor(
        [
            [1.0, 0.0, 1.0, 0.0],  # in part (the padded 0 is not a token)
            [0.0, 0.0, 0.0, 0.0],  # whole
            [0.0, 0.0, 1.0, 1.0],  # whole: its zeroed tokens are all it has
            [1.0, 1.0, 1.0, 1.0],  # kept
            [0.0, 1.0, 1.0, 1.0],  # in part, but A = 0: not counted
        ]
    )
    adv = torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [0.0]])
    probe = StepProbe()
    probe.add_tokens(torch.ones(5, 4), adv, weight, mask, None, seq_ratio=torch.ones(5, 1))
    record = probe.summary(0.8, 1.2, 0, torch.Generator())
    assert record["seq_partial_zero_frac"] == pytest.approx(1 / 4)
    assert record["seq_zero_weight_frac"] == pytest.approx(2 / 4)
    # split over two micro-batches, and merged over processes: the same counts
    parts = [StepProbe(), StepProbe()]
    for part, rows in zip(parts, (slice(0, 2), slice(2, 5)), strict=True):
        part.add_tokens(
            torch.ones(5, 4)[rows], adv[rows], weight[rows], mask[rows], None, torch.ones(5, 1)[rows]
        )
    merged = StepProbe.merged(parts).summary(0.8, 1.2, 0, torch.Generator())
    assert merged["seq_partial_zero_frac"] == record["seq_partial_zero_frac"]


def test_a_resumed_epoch_keeps_the_order_it_would_have_had():
    """TRL's RepeatSampler restarts its generator, so a run resumed in epoch 1 would replay epoch 0's order;
    the trainer's sampler reaches epoch e's order however it got there, and matches TRL's when uninterrupted."""
    from trl.trainer.utils import RepeatSampler

    from pspo_repro.training.trainer import EpochSampler

    args = dict(data_source=range(12), mini_repeat_count=2, batch_size=3, repeat_count=2, seed=5)
    stock, ours = RepeatSampler(**args), EpochSampler(**args)
    epochs = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        epochs.append(list(ours))
        assert epochs[-1] == list(stock)  # uninterrupted: TRL's order
    assert epochs[0] != epochs[1] != epochs[2]
    for epoch in (1, 2):
        resumed = EpochSampler(**args)
        resumed.set_epoch(epoch)
        assert list(resumed) == epochs[epoch]
        assert list(RepeatSampler(**args)) == epochs[0]  # what TRL's own sampler would give instead


def _vllm_generation(model, tok, dataset, tmp_path, correction: bool):
    """One generation batch (2 prompts x 4) through TRL's own ``_generate_and_score_completions`` with vLLM
    rollouts at top-p 0.9; vLLM itself is replaced by a stand-in that samples with its rule and returns its
    processed log-probabilities (see tests/vllm_sampler.py)."""
    from vllm_sampler import StandInVLLM

    trainer = make_trainer(
        PSPOGRPOTrainer,
        PSPOGRPOConfig,
        model,
        tok,
        dataset,
        tmp_path,
        objective="pspo",
        num_iterations=2,
        temperature=0.8,
        top_p=0.9,
        probes_file=str(tmp_path / "probes.jsonl"),
        probe_every=0,
    )
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, correction
    engine = StandInVLLM(model, 0.8, 0.9, trainer.max_completion_length, trainer.eos_token_ids)
    trainer.vllm_generation, trainer._last_loaded_step = engine, trainer.state.global_step
    model.train()
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)])
    return trainer, engine, batch


def test_trl_weights_a_top_p_rollout_by_its_kept_mass_and_the_probes_record_that_gap(
    model_and_tokenizer, train_dataset, tmp_path
):
    """TRL 1.16 compares vLLM's log-probabilities after top-p renormalisation with the trainer's over the whole
    vocabulary, so its importance-sampling weight of a sequence is the product of the mass top-p kept at each
    token: below 1 for every completion, and never above ``sequence_mask``'s 3. With the correction off (the
    paper-vllm profile) the loss has no such weight and the probes record the per-token log-probability gap
    (trainer minus vLLM), which is the log of the kept mass."""
    model, tok = model_and_tokenizer
    _, engine, batch = _vllm_generation(model, tok, train_dataset, tmp_path / "on", correction=True)
    expected = torch.tensor([math.prod(k) for k in engine.kept])
    weights = batch["importance_sampling_ratio"].squeeze(1)  # sequence_mask: one weight per sequence
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=0)
    assert (weights < 1).all() and (weights > 0).all()  # each reweighted, none masked

    trainer, engine, batch = _vllm_generation(model, tok, train_dataset, tmp_path / "off", correction=False)
    assert "importance_sampling_ratio" not in batch
    trainer._compute_loss(model, batch)
    trainer._flush_probes(1)
    (record,) = [json.loads(line) for line in (tmp_path / "off" / "probes.jsonl").read_text().splitlines()]
    log_kept = torch.tensor([math.log(m) for k in engine.kept for m in k])
    gap = record["vllm_logp_diff"]
    assert gap["mean"] == pytest.approx(float(log_kept.mean()), rel=1e-3)
    assert gap["max"] <= 1e-5 and gap["min"] == pytest.approx(float(log_kept.min()), rel=1e-3)
    per_sequence = torch.tensor([sum(math.log(m) for m in k) for k in engine.kept])
    assert record["vllm_seq_logp_diff"]["mean"] == pytest.approx(float(per_sequence.mean()), rel=1e-3)
    assert "vllm_is_weight" not in record


def test_a_probe_step_takes_one_cosine_on_its_first_micro_batch(model_and_tokenizer, train_dataset, tmp_path):
    """The cosine to the unclipped gradient (two extra backward passes) is taken on the first micro-batch of a
    probe step only: one value per step, the cosine of that micro-batch alone."""
    model, tok = model_and_tokenizer
    common = dict(objective="clip", epsilon=0.2, num_iterations=2, probe_every=1)
    micro_batches = [fake_inputs(model, tok, seed=seed) for seed in range(4)]
    model.train()
    alone = make_trainer(PSPOGRPOTrainer, PSPOGRPOConfig, model, tok, train_dataset, tmp_path / "a", **common)
    alone._compute_loss(model, micro_batches[0])
    (expected,) = alone.probe_log.current.cosines

    probes = tmp_path / "probes.jsonl"
    trainer = make_trainer(
        PSPOGRPOTrainer,
        PSPOGRPOConfig,
        model,
        tok,
        train_dataset,
        tmp_path / "b",
        gradient_accumulation_steps=4,
        probes_file=str(probes),
        **common,
    )
    trainer.current_gradient_accumulation_steps = 4
    assert trainer._probe_step()
    for inputs in micro_batches:
        trainer._compute_loss(model, inputs).backward()
    model.zero_grad()
    assert trainer.probe_log.current.cosines == [pytest.approx(expected, rel=1e-6)]
    assert -1 <= expected < 1 - 1e-4  # the clip binds on these stale ratios: not the unclipped direction
    trainer._flush_probes(1)
    (record,) = [json.loads(line) for line in probes.read_text().splitlines()]
    assert record["cos_to_noclip"] == pytest.approx(expected, rel=1e-6)
    assert record["n_tokens"] == sum(int(b["completion_mask"].sum()) for b in micro_batches)
    assert len(record["samples"]) == min(256, record["n_tokens"])  # samples still drawn from the whole step
