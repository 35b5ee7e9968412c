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


def test_unsupported_aggregation_and_objective_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match="loss_type 'sapo' is not an aggregation.*allowed: grpo, bnpo, dr_grpo, dapo"
    ):
        PSPOGRPOConfig(output_dir=str(tmp_path), loss_type="sapo", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        PSPOGRPOConfig(output_dir=str(tmp_path), objective="ppo", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2.0"):
        PSPOGRPOConfig(output_dir=str(tmp_path), objective="pspo", alpha=2.0, use_cpu=True, report_to="none")


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
