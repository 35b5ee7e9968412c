"""The dry run: optimizer steps and completions counted as TRL counts them, and the paper profile's plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pspo_repro.cli import app
from pspo_repro.study import plan, profiles
from pspo_repro.training.settings import TrainSettings


def _paper(model: str, label: str) -> TrainSettings:
    runs = profiles.expand(profiles.load_profile("paper"))
    return next(r.settings for r in runs if (r.model, r.label, r.seed) == (model, label, 0))


def test_paper_schedule_by_hand():
    """7,000 prompts in groups of 16 (64 completions): 437 full groups per epoch; each generation serves
    two optimizer steps (num_iterations 2), so 874 steps per epoch and 2,622 in three epochs."""
    clip = plan.schedule(_paper("Qwen/Qwen2.5-0.5B", "clip"), 7000, 472)
    assert (clip.optimizer_steps, clip.micro_batches, clip.generations) == (2622, 2622 * 16, 1311)
    assert clip.completions == 1311 * 64 == 83_904
    # step 0, every 100, the last; 4 sampled completions per prompt (the authors' validation)
    assert (clip.validations, clip.validation_completions) == (28, 28 * 472 * 4)
    noclip = plan.schedule(_paper("Qwen/Qwen2.5-0.5B", "noclip"), 7000, 472)
    assert (noclip.optimizer_steps, noclip.completions) == (
        1311,
        83_904,
    )  # on-policy: one step per generation


@pytest.mark.parametrize(
    "values",
    [
        dict(batch_size=4, grad_accum=16, num_iterations=2, num_generations=4, epochs=3.0, n=7000),
        dict(batch_size=4, grad_accum=3, num_iterations=2, num_generations=4, epochs=1.5, n=37),
        dict(batch_size=8, grad_accum=2, steps_per_generation=4, num_iterations=3, epochs=2.0, n=50),
        dict(batch_size=4, grad_accum=2, num_iterations=1, num_generations=2, max_steps=7, n=20),
    ],
)
def test_schedule_matches_trl(tiny_model, tmp_path, values):
    """The counts agree with TRL's own dataloader and transformers' step count for the same settings."""
    from datasets import Dataset

    from pspo_repro.models import loading
    from pspo_repro.training import rewards
    from pspo_repro.training.train import grpo_config
    from pspo_repro.training.trainer import PSPOGRPOTrainer

    n = values.pop("n")
    settings = TrainSettings.from_dict({"model": "tiny-test", "dataset": "synthetic", **values})
    source = loading.resolve("tiny-test")
    trainer = PSPOGRPOTrainer(
        model=loading.load_model(source),
        reward_funcs=[rewards.get("paper")],
        args=grpo_config(settings, tmp_path),
        train_dataset=Dataset.from_list(
            [{"prompt": f"q{i}", "answer": "1", "kind": "gsm8k"} for i in range(n)]
        ),
        processing_class=loading.load_tokenizer(source),
    )
    loader = trainer.get_train_dataloader()
    *_, steps_in_epoch, max_steps = trainer.set_initial_training_values(trainer.args, loader)
    ours = plan.schedule(settings, n, 10)
    assert ours.optimizer_steps == max_steps
    spg = settings.steps_per_generation or settings.grad_accum
    per_epoch = len(loader)  # micro-batches (dataloader batches) per epoch
    assert steps_in_epoch == per_epoch
    assert ours.generations == -(-ours.micro_batches // (spg * settings.num_iterations))
    if settings.max_steps <= 0 and float(settings.epochs).is_integer():
        assert ours.micro_batches == per_epoch * int(settings.epochs)


def test_dry_run_of_the_paper_profile():
    """No GPU, hub or data: the paper profile's 85 runs, with their differing settings, steps,
    completions and the estimate's assumptions."""
    result = CliRunner().invoke(app, ["study", "--profile", "paper", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("profile paper: 85 runs, 3 starting model evaluation(s)")
    rows = [line.split() for line in lines if line.startswith("Qwen/")]
    assert len(rows) == 85
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    clip = by_key[("Qwen/Qwen2.5-0.5B", "clip", "0")]
    # validation: 28 passes (step 0, every 100 of 2,622 steps, the last) x 472 prompts x 4 sampled completions
    # GPU-hours with validation batched by memory (2 generate calls of 1,024 sequences per pass at 0.5B);
    # disk at its peak: 2 x 1.98 GB best checkpoints + 2 x 5.93 GB trainer checkpoints (494,032,768 parameters)
    assert clip[3:] == ["epsilon=0.1", "learning_rate=1e-06", "2,622", "83,904", "52,864", "1.86", "15.81"]
    assert by_key[("Qwen/Qwen2.5-1.5B", "clip-eps0", "4")][3:7] == ["epsilon=0", "2,622", "83,904", "52,864"]
    noclip = by_key[("Qwen/Qwen2-Math-1.5B", "noclip", "0")]
    assert noclip[3:9] == [
        "alpha=0.4",
        "learning_rate=1e-06",
        "num_iterations=1",
        "1,311",
        "83,904",
        "28,320",
    ]  # 15 passes
    assert by_key[("Qwen/Qwen2.5-1.5B", "pspo", "0")][3] == "-"  # the common settings exactly
    assert "total: 85 runs, 203,205 optimizer steps, 7,131,840 training completions" in result.output
    assert by_key[("Qwen/Qwen2.5-1.5B", "pspo", "0")][-1] == "49.40"  # 2 x 6.17 + 2 x 18.52
    assert "about 230 GPU-hours" in result.output
    # the audit retrains the first steps of pspo and clip on each model to measure the identities
    assert (
        "audit identities: 6 runs (lowest build and seed of each model's pspo, clip, pspo-stress, clip-stress), "
        "4 optimizer steps each (24 in all), about 0.05 GPU-hours (not in the total above)"
    ) in result.output
    assert "0.025 s per decoding step of a batch for models <= 1B" in result.output
    assert "Qwen/Qwen2.5-0.5B 1024, Qwen/Qwen2.5-1.5B 512, Qwen/Qwen2-Math-1.5B 512" in result.output
    assert "not measurements" in result.output
    # what stays: one float32 best checkpoint per run, no trainer checkpoint (30 runs at 0.5B, 55 at 1.5B);
    # a run in progress holds its best and one trainer checkpoint (weights + Adam's two moments)
    kept = 30 * 4 * 494_032_768 + 55 * 4 * 1_543_714_304
    assert round(kept / 1e9, 1) == 398.9
    assert (
        "disk: 398.9 GB stays after the runs finish (each run's best checkpoint); a run in progress holds up to "
        "24.70 GB, 49.40 GB at its peak (Qwen/Qwen2.5-1.5B: best checkpoint 6.17 GB, trainer checkpoint 18.52 GB)"
    ) in result.output
    assert "Qwen/Qwen2.5-0.5B 494,032,768 (table of known counts: not on disk)" in result.output
    assert "Qwen/Qwen2.5-1.5B 1,543,714,304 (table of known counts: not on disk)" in result.output
    assert not (Path("runs") / "paper").exists()  # nothing ran


def test_the_disk_of_a_run_counts_one_trainer_checkpoint_whatever_the_number_of_saves():
    q15 = _paper("Qwen/Qwen2.5-1.5B", "pspo")
    n = 1_543_714_304
    assert q15.save_steps == 100 and q15.save_total_limit == 1  # 26 saves over the run, one checkpoint kept
    run = plan.disk(q15, n)
    assert (run.best, run.trainer, run.trainer_kept) == (4 * n, 12 * n, 1)
    assert run.peak == 2 * 4 * n + 2 * 12 * n  # a new best and the next trainer checkpoint beside the kept
    assert plan.disk(TrainSettings(save_steps=0), n).peak == 2 * 4 * n  # no trainer checkpoints
    assert plan.disk(TrainSettings(save_steps=100, save_total_limit=3), n).peak == 2 * 4 * n + 4 * 12 * n
    assert plan.disk(TrainSettings(save_steps=100, optimizer="sgd"), n).trainer == 4 * n  # no optimizer state


def test_dry_run_of_a_slice_and_unknown_sizes():
    result = CliRunner().invoke(
        app, ["study", "--profile", "audit", "--dry-run", "--models", "tiny-general-l@1", "--seeds", "0"]
    )
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line.split() for line in result.output.splitlines() if line.startswith("tiny-")}
    assert len(rows) == len([line for line in result.output.splitlines() if line.startswith("tiny-")])
    assert set(rows) == {
        "clip",
        "pspo",
        "sigmoid",
        "topr",
        "noclip",
        "clip-shuffled",
        "noclip-onpolicy",
        "clip-stress",
        "pspo-stress",
        "noclip-stress",
        # the claims audit's arms
        "pspo-a0",
        "pspo-a0.4",
        "pspo-a0.9",
        "noclip-sgd",
        "pspo-a0-sgd",
        "pspo-sgd",
        "pspo-a0.4-sgd",
        "pspo-a0.9-sgd",
        "clip-eps0",
        "clip-eps0.1",
        "clip-stress-eps0",
        "clip-stress-eps0.1",
    }
    # 20 steps of 64 completions; each generation of 128 serves 4 steps: 5 generations; validation at
    # steps 0, 7, 14 and 20 on 512 problems, greedy
    assert rows["clip"][-5:-1] == ["20", "640", "2,048", "-"]
    # one generation of 64 per step, matched in completions: 10 steps
    assert rows["noclip-onpolicy"][-5:-2] == ["10", "640", "1,536"]  # validated at steps 0, 5 and 10
    assert float(rows["clip"][-1]) < 0.1  # a tiny model's best checkpoint, twice (no trainer checkpoints)
    assert "GPU-hours not estimated" in result.output
    assert (
        "audit identities: 4 runs (lowest build and seed of each model's pspo, clip, pspo-stress, clip-stress), "
        "4 to 16 optimizer steps each (40 in all), GPU-hours not estimated (a model of unknown size)"
    ) in result.output


def test_dry_run_and_train_command_take_the_new_objectives(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "study",
            "--profile",
            "field",
            "--dry-run",
            "--objectives",
            "gspo,clip-higher,vespo",
            "--seeds",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("tiny-")}
    assert set(rows) == {"gspo", "clip-higher", "vespo"}
    assert "loss_type=grpo" in rows["gspo"]  # the settings that set a run apart (common: the slice's)
    # a GSPO run under a token-sum aggregation is refused before anything is written
    out = tmp_path / "run"
    bad = CliRunner().invoke(app, ["train", "--out", str(out), "--model", "tiny-test", "--objective", "gspo"])
    assert bad.exit_code != 0 and "objective 'gspo' needs loss_type 'grpo'" in bad.output
    assert not out.exists()
