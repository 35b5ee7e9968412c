"""The paper profile's code path on a real instruct model, end to end on CPU (the `paper-smoke` profile).

SmolLM2-135M-Instruct has a Hugging Face BPE tokenizer and chat template, as the Qwen models do, so this is
where the paper's path meets a real tokenizer: the authors' system prompt, the paper reward, sampled
validation, bf16 autocast over float32 master weights, trainer checkpoints, training by epochs, evaluation
in fresh processes, and the audit of a profile whose parent trains by epochs (max_steps -1).

On a CPU without bf16 arithmetic (no AVX512-BF16, no AMX: an AVX2-only x86 CPU, for one) PyTorch emulates
bf16, and an optimizer step of SmolLM2 under autocast took 277 s on such a CPU against seconds in float32
(`benchmarks/bench_bf16_matmul.py`: bf16 products 29-68x slower there). There the tests that train run the
profile in float32, through a profile file that extends it; the bf16 path is then covered by the tiny-model
tests (`tests/test_identities.py`) and by this module on any CPU that has bf16 arithmetic.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import TrainerCallback

from pspo_repro.analysis import audit
from pspo_repro.analysis.audit.measurement import identity_steps
from pspo_repro.data import loaders, prompts
from pspo_repro.models import generation, loading
from pspo_repro.study import profiles, rundir, runner
from pspo_repro.training import rewards
from pspo_repro.training.callbacks import Validation
from pspo_repro.training.settings import TrainSettings
from pspo_repro.training.train import grpo_config, to_dataset, train
from pspo_repro.training.trainer import PSPOGRPOTrainer

pytestmark = pytest.mark.slow

PROFILE = "paper-smoke"


def cpu_has_bf16_arithmetic() -> bool:
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


BF16 = cpu_has_bf16_arithmetic()
PRECISION = "bf16" if BF16 else "float32"
STUDY = PROFILE if BF16 else f"{PROFILE}-float32"


@pytest.fixture(scope="module")
def trained_profile(tmp_path_factory) -> str:
    """The profile the tests that train run: ``paper-smoke`` itself, or where the CPU only emulates bf16 a file
    that extends it in float32 (under its own name, so its results are never taken for the profile's)."""
    if BF16:
        return PROFILE
    path = tmp_path_factory.mktemp("profile") / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump({"name": STUDY, "extends": PROFILE, "train": {"bf16": False}}))
    return str(path)


def smoke_settings(data_dir, label: str = "clip", profile: str = PROFILE) -> TrainSettings:
    run = next(r for r in profiles.expand(profiles.load_profile(profile)) if r.label == label)
    return TrainSettings.from_dict({**run.settings.to_dict(), "data_dir": str(data_dir)})


@pytest.fixture(scope="module")
def study(data_dir, trained_profile, tmp_path_factory):
    """The whole profile: starting model, two runs, evaluation in fresh processes, then the audit."""
    root = tmp_path_factory.mktemp("paper-smoke")
    result = runner.run_study(
        trained_profile, root / "runs", root / "results", data_dir=str(data_dir), progress=False, isolate=True
    )
    assert result.failed == []
    return root


def test_the_float32_profile_differs_from_the_profile_only_in_precision(trained_profile):
    runs = {r.label: r.settings for r in profiles.expand(profiles.load_profile(trained_profile))}
    for r in profiles.expand(profiles.load_profile(PROFILE)):
        assert runs[r.label].bf16 is BF16
        assert {**runs[r.label].to_dict(), "bf16": True} == r.settings.to_dict()


def test_the_profile_is_the_paper_scaled_down():
    paper = {r.label: r.settings for r in profiles.expand(profiles.load_profile("paper"))}
    runs = profiles.expand(profiles.load_profile(PROFILE))
    assert sorted(r.label for r in runs) == ["clip", "pspo"]
    for r in runs:
        s = r.settings
        assert (s.model, s.dataset, s.reward, s.system_prompt, s.validation) == (
            "smollm2", "gsm8k", "paper", "authors", "sampled"
        )  # fmt: skip
        assert s.max_steps == -1 and s.epochs == 1 and s.train_limit == 2  # by epochs, as the paper trains
        assert s.bf16 is True and s.save_steps == 2 and s.num_iterations == 2  # reuse: staleness 1
        same = (
            "loss_type",
            "beta",
            "temperature",
            "top_p",
            "num_generations",
            "max_grad_norm",
            "lr_scheduler",
        )
        assert {k: getattr(s, k) for k in same} == {k: getattr(paper[r.label], k) for k in same}


def test_runs_train_and_are_evaluated_in_fresh_processes(study):
    study_dir = study / "runs" / STUDY
    for label in ("clip", "pspo"):
        folder = study_dir / "smollm2" / label / "seed0"
        done = rundir.read_json(folder / rundir.DONE)
        assert done["steps"] == 4
        assert [r["step"] for r in rundir.read_jsonl(folder / rundir.VALIDATION)] == [0, 2, 4]
        summary = rundir.read_json(folder / rundir.EVAL / rundir.SUMMARY)
        assert sorted(summary["benchmarks"]) == ["asdiv", "gsm8k", "svamp"]
        assert all(b["n_problems"] == 4 for b in summary["benchmarks"].values())
        assert {"paper", "strict", "flexible", "permissive"} <= set(summary["benchmarks"]["gsm8k"]["metrics"])
        assert rundir.read_json(folder / rundir.CONFIG)["system_prompt"] == "authors"


def test_prompt_token_ids_are_the_same_in_rollouts_validation_and_evaluation(study, data_dir, tmp_path):
    settings = smoke_settings(data_dir)
    source = loading.resolve(settings.model)
    tokenizer = loading.load_tokenizer(source)
    problems = loaders.load("gsm8k", data_dir=data_dir, limit=4)  # the problems the study evaluated
    trainer = PSPOGRPOTrainer(
        model=loading.load_model(source),
        reward_funcs=[rewards.get(settings.reward)],
        args=grpo_config(settings, tmp_path),
        train_dataset=to_dataset(problems, settings.system_prompt),
        processing_class=tokenizer,
    )
    rollout_ids = trainer._tokenize_prompts([row["prompt"] for row in trainer.train_dataset])[0]
    validation = Validation(tmp_path, settings, problems, tokenizer)
    validation_ids = tokenizer(validation.texts, add_special_tokens=False)["input_ids"]
    records = rundir.read_jsonl(
        study / "runs" / STUDY / "smollm2" / "clip" / "seed0" / "eval" / "gsm8k.jsonl"
    )
    by_id = {r["id"]: r["prompt"] for r in records}
    evaluation_ids = tokenizer([by_id[p.id] for p in problems], add_special_tokens=False)["input_ids"]
    assert [list(x) for x in rollout_ids] == validation_ids == evaluation_ids
    assert prompts.AUTHORS_SYSTEM_PROMPT in validation.texts[0]  # the authors' system message

    # completions stop where TRL's rollouts stop: the same stop ids, and no stop token inside a completion
    stops = generation.stop_token_ids(tokenizer, trainer.model.generation_config)
    assert stops == sorted(trainer.eos_token_ids)
    for r in records:
        for text in r["completions"]:
            assert all(tokenizer.convert_ids_to_tokens(i) not in text for i in stops)


def test_a_run_resumes_from_its_trainer_checkpoint(data_dir, trained_profile, tmp_path):
    settings = smoke_settings(data_dir, "pspo", trained_profile)

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after the trainer checkpoint of step 2
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(settings, tmp_path, progress=False, callbacks=[Crash()])
    assert not rundir.is_done(tmp_path)
    train(settings, tmp_path, progress=False)
    provenance = rundir.read_json(tmp_path / rundir.PROVENANCE)
    assert [r["step"] for r in provenance["resumed"]] == [2]
    steps = [r["step"] for r in rundir.read_jsonl(tmp_path / rundir.TRAIN_LOG) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # each optimizer step logged once, to the end of the epoch
    assert rundir.read_json(tmp_path / rundir.DONE)["steps"] == 4


def test_the_audit_runs_on_a_profile_trained_by_epochs(study, data_dir, trained_profile):
    # the rule for epoch-counted runs gives 4 steps (asserted below); 2 keep this test within minutes on CPU
    path = audit.run_audit(trained_profile, study / "runs", study / "results", identity_steps=2, plot=False)
    text = path.read_text()
    ident = rundir.read_json(study / "results" / STUDY / audit.IDENTITIES_FILE)
    assert sorted(ident) == ["smollm2/clip/seed0", "smollm2/pspo/seed0"]
    # a few steps (one reuse cycle, at least 4) although the parent profile counts epochs (max_steps -1)
    assert identity_steps(smoke_settings(data_dir)) == 4
    assert [m["steps"] for m in ident.values()] == [2, 2]
    assert {m["precision"] for m in ident.values()} == {PRECISION}  # judged at its precision's tolerance
    assert "## PSPO is a rescaled unclipped surrogate" in text
    assert sorted(p.name for p in (study / "results" / STUDY).iterdir() if p.name.startswith(".")) == []
