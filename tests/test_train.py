"""Real training runs on the micro model (marked slow): every objective learns something, probes see the
clip, runs are reproducible, and a killed run leaves nothing a reader would take as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from pspo_repro.models import loading
from pspo_repro.study import profiles, rundir
from pspo_repro.training import callbacks, objectives
from pspo_repro.training import train as train_module
from pspo_repro.training.settings import TrainSettings, read_run_settings
from pspo_repro.training.train import train


def tiny_settings(model_path, **overrides) -> TrainSettings:
    values = dict(
        model=str(model_path),
        dataset="synthetic",
        learning_rate=1e-3,
        warmup_steps=0,
        max_steps=3,
        batch_size=8,
        grad_accum=1,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=4,
        # long enough for the micro model to reach a `#### N` line: the authors' reward gives shorter
        # completions 0 (no format bonus), and a group whose rewards are all equal has no gradient
        max_completion_length=40,
        eval_every=100,
        validation_limit=8,
        eval_batch_size=8,
        probe_every=2,
    )
    values.update(overrides)
    return TrainSettings(**values)


def weights(path):
    return loading.load_model(loading.ModelSource(str(path))).state_dict()


def rms_change(trained, start) -> float:
    """Root mean square, over every weight, of the change from ``start`` to ``trained`` (state dicts)."""
    squares = sum(float((trained[k].double() - start[k].double()).pow(2).sum()) for k in start)
    return (squares / sum(v.numel() for v in start.values())) ** 0.5


# Adam's first step moves every weight whose gradient is not zero by the learning rate (1e-3 in these runs):
# a checkpoint one step or more from its start has an RMS change near 1e-3; a copy of the start has 0.
MOVED = 1e-4


# settings an objective needs beyond the defaults: GSPO averages per sequence, over its paper's clip range
OBJECTIVE_SETTINGS = {"gspo": {"loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4}}


@pytest.mark.slow
@pytest.mark.parametrize("objective", objectives.names())
def test_every_objective_trains_and_changes_parameters(objective, tiny_model, tmp_path):
    extra = OBJECTIVE_SETTINGS.get(objective, {})
    run = train(
        tiny_settings(tiny_model, objective=objective, eval_every=3, **extra),
        tmp_path / objective,
        progress=False,
    )
    done = json.loads((run / "DONE").read_text())
    assert done["steps"] == 3
    probes = rundir.read_jsonl(run / "probes.jsonl")
    assert [p["step"] for p in probes] == [1, 2, 3]
    assert all(p["grad_norm"] > 0 for p in probes)
    # reused rollouts: after the first update on a batch, ratios leave 1
    assert max(p["mean_abs_r_minus_1"] for p in probes) > 0
    # objectives that read a sequence ratio record it per sequence
    assert all(("seq_ratio" in p) == (objective in ("gspo", "vespo")) for p in probes)
    # the checkpoint is the best validation step; a step-3 model differs from the start
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run / rundir.CHECKPOINT).state_dict()
    start = weights(tiny_model)
    step = rundir.read_json(run / rundir.CHECKPOINT / rundir.CHECKPOINT_STEP)["step"]
    assert step > 0  # the starting model is never the selected checkpoint
    assert trained.keys() == start.keys()
    assert rms_change(trained, start) > MOVED, objective
    # optimizer updates since generation: 4 steps per generation (2 micro-batches, each used twice)
    assert [p["staleness"] for p in probes] == [0, 1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["objective"] == objective
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["packages"]["trl"].startswith("1.") and prov["finished"] >= prov["started"]


@pytest.mark.slow
def test_best_checkpoint_is_chosen_after_step_0(tiny_model, tmp_path):
    """Step 0 is validated and logged but never selected, as with load_best_model_at_end; the DONE record
    names the best later step and the checkpoint is that step's."""
    settings = tiny_settings(tiny_model, objective="clip", max_steps=4, eval_every=1, learning_rate=3e-2)
    run = train(settings, tmp_path / "run", progress=False)
    history = rundir.read_jsonl(run / "validation.jsonl")
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4]
    assert history[0]["best"] is False
    best = max(history[1:], key=lambda r: r["reward"])
    done = json.loads((run / "DONE").read_text())
    assert done["validation_best"]["step"] == best["step"] > 0
    assert done["validation_first"]["step"] == 0
    assert json.loads((run / "checkpoint" / "checkpoint_step.json").read_text())["step"] == best["step"]
    assert (done["checkpoint"], done["checkpoint_step"]) == ("best", best["step"])
    lowest = min(history[1:], key=lambda r: r["strict"])
    assert done["validation_lowest"]["strict"] == lowest["strict"]


@pytest.mark.slow
def test_a_run_that_keeps_its_final_checkpoint_selects_nothing(tiny_model, tmp_path):
    """checkpoint: final keeps the last step's model whatever validation says, and still records the best step."""
    settings = tiny_settings(
        tiny_model, objective="clip", max_steps=4, eval_every=1, learning_rate=3e-2, checkpoint="final"
    )
    run = train(settings, tmp_path / "run", progress=False)
    history = rundir.read_jsonl(run / "validation.jsonl")
    done = json.loads((run / "DONE").read_text())
    assert (done["checkpoint"], done["checkpoint_step"]) == ("final", 4)
    assert json.loads((run / "checkpoint" / "checkpoint_step.json").read_text())["step"] == 4
    assert done["validation_best"]["step"] == max(history[1:], key=lambda r: r["reward"])["step"]
    with pytest.raises(ValueError, match="checkpoint must be one of best, final, got 'last'"):
        tiny_settings(tiny_model, checkpoint="last")


@pytest.mark.slow
def test_step_0_validation_of_a_tiny_model_is_computed_once(tiny_model, tmp_path):
    """Every run from the same cached tiny model shares one step-0 validation (greedy is deterministic)."""
    from pspo_repro.training import train as train_module

    settings = tiny_settings("tiny-test", objective="pspo", max_steps=1)
    first = train(settings, tmp_path / "a", progress=False)
    cache = train_module._initial_validation_path(loading.resolve("tiny-test"), settings)
    record = json.loads(cache.read_text())
    assert record == {
        k: v for k, v in rundir.read_jsonl(first / "validation.jsonl")[0].items() if k != "best"
    }
    cache.write_text(json.dumps({**record, "strict": 0.123}))  # a marker: the next run must read it
    second = train(settings, tmp_path / "b", progress=False)
    assert rundir.read_jsonl(second / "validation.jsonl")[0]["strict"] == 0.123
    cache.unlink()
    # another validation set is another cache entry
    other = tiny_settings("tiny-test", objective="pspo", max_steps=1, validation_limit=4)
    assert train_module._initial_validation_path(loading.resolve("tiny-test"), other) != cache
    # models outside the tiny cache are not cached
    assert train_module._initial_validation_path(loading.ModelSource(str(tmp_path)), settings) is None


def test_a_bad_model_name_leaves_no_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nosuchmodel' is not a tiny model"):
        train(TrainSettings(model="nosuchmodel", dataset="synthetic"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_training_moves_the_weights(tiny_model, tmp_path):
    """Three steps move the weights; probe steps sample (ratio, advantage, weight) triples and the cosine
    to the unclipped gradient."""
    run = train(tiny_settings(tiny_model, objective="clip", epsilon=0.2), tmp_path / "run", progress=False)
    assert rundir.read_json(run / rundir.CHECKPOINT / rundir.CHECKPOINT_STEP)["step"] == 3
    trained = loading.load_model(loading.ModelSource(str(run / rundir.CHECKPOINT))).state_dict()
    assert rms_change(trained, weights(tiny_model)) > MOVED
    probes = rundir.read_jsonl(run / "probes.jsonl")
    sampled = [p for p in probes if "samples" in p]
    assert [p["step"] for p in sampled] == [1, 3]  # probe_every = 2
    assert all(len(p["samples"]) == min(256, p["n_tokens"]) for p in sampled)
    first = sampled[0]
    # step 1 is on-policy for its micro-batch: ratio 1, clip = unclipped, cosine 1
    assert first["ratio"]["max"] == pytest.approx(1.0, abs=1e-5)
    assert first["cos_to_noclip"] is None or first["cos_to_noclip"] == pytest.approx(1.0, abs=1e-4)
    assert set(probes[0]["grad_norm_groups"]) >= {"embeddings", "attention", "mlp", "norms"}


@pytest.mark.slow
def test_clip_zeroes_gradients_where_pspo_does_not(tiny_model, tmp_path):
    frac = {}
    for objective in ("clip", "pspo"):
        settings = tiny_settings(
            tiny_model,
            objective=objective,
            learning_rate=0.05,
            max_steps=4,
            epsilon=0.05,
            steps_per_generation=4,
            num_iterations=1,
            max_grad_norm=0.0,
        )
        run = train(settings, tmp_path / objective, progress=False)
        probes = rundir.read_jsonl(run / "probes.jsonl")
        frac[objective] = [p["zero_weight_frac"] for p in probes if p["zero_weight_frac"] is not None]
        outside = max(p["ratio_outside"] for p in probes)
        assert outside > 0.01, f"{objective}: ratios never left the clip range ({outside})"
    assert max(frac["clip"]) > 0.0
    assert frac["pspo"] and all(f == 0.0 for f in frac["pspo"])


@pytest.mark.slow
def test_same_seed_same_loss_curve(tiny_model, tmp_path):
    logs = []
    for name in ("a", "b"):
        run = train(tiny_settings(tiny_model, objective="pspo", seed=3), tmp_path / name, progress=False)
        logs.append(
            [
                (r["step"], r["loss"], r.get("reward"), r["grad_norm"])
                for r in rundir.read_jsonl(run / "train_log.jsonl")
                if "loss" in r
            ]
        )
    assert len(logs[0]) == 3
    assert logs[0] == logs[1]
    other = train(tiny_settings(tiny_model, objective="pspo", seed=4), tmp_path / "c", progress=False)
    assert [r.get("loss") for r in rundir.read_jsonl(other / "train_log.jsonl") if "loss" in r] != [
        entry[1] for entry in logs[0]
    ]


@pytest.mark.slow
def test_finished_run_is_not_redone(tiny_model, tmp_path):
    run = train(tiny_settings(tiny_model, objective="noclip", max_steps=1), tmp_path / "run", progress=False)
    stamp = (run / "DONE").stat().st_mtime_ns
    train(tiny_settings(tiny_model, objective="noclip", max_steps=1), run, progress=False)
    assert (run / "DONE").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_killed_run_leaves_no_done_and_no_torn_files(tiny_model, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pspo_repro.cli",
        "train",
        "--out",
        str(run),
        "--model",
        str(tiny_model),
        "--dataset",
        "synthetic",
        "--quiet",
        *[
            f"--set={k}={v}"
            for k, v in {
                "max_steps": 500,
                "batch_size": 8,
                "grad_accum": 1,
                "num_generations": 4,
                "warmup_steps": 0,
                "max_completion_length": 16,
                "eval_every": 2,
                "validation_limit": 8,
                "eval_batch_size": 8,
                "learning_rate": 1e-3,
            }.items()
        ],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.time() + 240
    while time.time() < deadline and len(rundir.read_jsonl(run / "probes.jsonl")) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "DONE").exists()
    for name in ("train_log.jsonl", "probes.jsonl", "validation.jsonl"):
        assert rundir.read_jsonl(run / name), name  # every complete line parses
    json.loads((run / "config.json").read_text())
    ckpt = run / "checkpoint"
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    # resuming the same directory starts over cleanly and finishes
    train(tiny_settings(tiny_model, objective="pspo", max_steps=2), run, progress=False)
    assert (run / "DONE").is_file()
    assert [p["step"] for p in rundir.read_jsonl(run / "probes.jsonl")] == [1, 2]


def test_settings_from_text_are_typed_or_refused():
    """YAML reads ``2e-4`` as a string and ``--set`` values come through YAML: they become numbers."""
    s = TrainSettings.from_dict(
        {
            "learning_rate": "2e-4",
            "max_steps": "32",
            "temperature": 1,
            "probes": "false",
            "epsilon_high": None,
        }
    )
    assert (s.learning_rate, s.max_steps, s.temperature, s.probes, s.epsilon_high) == (
        2e-4,
        32,
        1.0,
        False,
        None,
    )
    assert type(s.learning_rate) is float and type(s.max_steps) is int
    for bad, message in [
        ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
        ({"max_steps": "2.5"}, "max_steps must be int, got '2.5'"),
        ({"probes": "yes"}, "probes must be bool, got 'yes'"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainSettings.from_dict(bad)


@pytest.mark.slow
def test_an_adam_step_at_the_papers_learning_rate_moves_the_master_weights(tiny_model):
    """On GPUs the paper profile trains with bf16; the weights the optimizer updates must stay float32. One
    AdamW step at lr 5e-7 moves nearly every float32 weight, while the same step on bf16 weights (the old
    policy: the model loaded in bf16) rounds almost every update away."""
    from pspo_repro.training import train as train_module

    assert train_module.MASTER_WEIGHTS_DTYPE is torch.float32
    config = train_module.grpo_config(tiny_settings(tiny_model, bf16=True), tiny_model)
    assert config.bf16 is True  # mixed precision: autocast, not bf16 weights

    def fraction_moved(dtype: torch.dtype) -> float:
        torch.manual_seed(0)
        model = loading.load_model(loading.ModelSource(str(tiny_model)), dtype=dtype).train()
        before = [p.detach().clone() for p in model.parameters()]
        ids = torch.randint(10, 200, (4, 24))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.optim.AdamW(model.parameters(), lr=5e-7).step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before, strict=True))
        return moved / sum(b.numel() for b in before)

    assert fraction_moved(train_module.MASTER_WEIGHTS_DTYPE) > 0.9
    assert fraction_moved(torch.bfloat16) < 0.05


class Preempted(Exception):
    pass


class Preempt(TrainerCallback):
    """Stops the run as a preemption would, once step ``after`` is complete (its logs, probes and validation
    written) and before the next begins."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.after:
            raise Preempted


class FinalWeights(TrainerCallback):
    weights: dict[str, torch.Tensor] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_preempted_run_resumes_from_its_checkpoint_with_one_history(tiny_model, tmp_path):
    """A run stopped after step 5 resumes from its step-4 checkpoint: same final weights, probes, rewards and
    validation as an uninterrupted run, and each step once in every log. One generation serves 2 optimizer
    steps (1 micro-batch per step, used twice), so checkpoints every 2 steps fall where generations start;
    advantages are shuffled so that the shuffle's generator must be restored too."""
    settings = tiny_settings(
        tiny_model,
        objective="clip",
        max_steps=6,
        steps_per_generation=1,
        num_iterations=2,
        save_steps=2,
        eval_every=1,
        probe_every=3,
        shuffle_advantages=True,
    )
    whole = FinalWeights()
    a = train(settings, tmp_path / "a", progress=False, callbacks=[whole])

    b = tmp_path / "b"
    with pytest.raises(Preempted):
        train(settings, b, progress=False, callbacks=[Preempt(after=5)])
    assert not (b / "DONE").exists()
    assert [p.name for p in (b / "trainer").glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit 1
    assert [r["step"] for r in rundir.read_jsonl(b / "probes.jsonl")] == [1, 2, 3, 4, 5]
    resumed = FinalWeights()
    train(settings, b, progress=False, callbacks=[resumed])

    assert resumed.weights.keys() == whole.weights.keys()
    assert all(torch.equal(resumed.weights[k], whole.weights[k]) for k in whole.weights)
    start = weights(tiny_model)
    assert any(not torch.equal(whole.weights[k], start[k]) for k in start)
    assert rundir.read_jsonl(b / "probes.jsonl") == rundir.read_jsonl(a / "probes.jsonl")
    assert rundir.read_jsonl(b / "validation.jsonl") == rundir.read_jsonl(a / "validation.jsonl")
    assert [r["step"] for r in rundir.read_jsonl(b / "validation.jsonl")] == [0, 1, 2, 3, 4, 5, 6]

    def metrics(run):
        return [
            (r["step"], r["loss"], r.get("reward"), r["grad_norm"])
            for r in rundir.read_jsonl(run / "train_log.jsonl")
            if "loss" in r
        ]

    assert [m[0] for m in metrics(b)] == [1, 2, 3, 4, 5, 6]
    assert metrics(b) == metrics(a)
    done_a, done_b = (json.loads((run / "DONE").read_text()) for run in (a, b))
    assert done_b["validation_best"] == done_a["validation_best"] and done_b["steps"] == 6
    assert (
        json.loads((b / "checkpoint" / "checkpoint_step.json").read_text())["step"]
        == done_a["validation_best"]["step"]
    )
    assert not (b / "trainer").exists() and not (b / "checkpoint.next").exists()
    assert [r["step"] for r in json.loads((b / "provenance.json").read_text())["resumed"]] == [4]


def test_checkpoints_must_fall_where_a_generation_starts():
    # 2 micro-batches per generation, used twice, 1 per optimizer step: generations start every 4 steps
    with pytest.raises(ValueError, match="save_steps=6 must be a multiple of 4"):
        TrainSettings(save_steps=6, grad_accum=1, steps_per_generation=2, num_iterations=2)
    assert TrainSettings(save_steps=8, grad_accum=1, steps_per_generation=2, num_iterations=2).save_steps == 8
    # the paper's: 16 micro-batches per step and per generation, used twice: every 2 steps
    assert TrainSettings(save_steps=100).save_steps == 100
    with pytest.raises(ValueError, match="save_steps=99 must be a multiple of 2"):
        TrainSettings(save_steps=99)


def test_objective_parameters_under_their_earlier_names_are_read():
    """Older profiles and run configs say eps / eps_high / tau_pos / tau_neg: they mean GRPOConfig's names."""
    s = TrainSettings.from_dict(
        {"objective": "clip", "eps": 0, "eps_high": "0.3", "tau_pos": 2, "tau_neg": 3}
    )
    assert (s.epsilon, s.epsilon_high, s.sapo_temperature_pos, s.sapo_temperature_neg) == (0.0, 0.3, 2.0, 3.0)
    assert s.objective_params() == {"epsilon": 0.0, "epsilon_high": 0.3}
    assert TrainSettings.from_dict({"eps": 0.2, "epsilon": 0.2}).epsilon == 0.2
    with pytest.raises(
        ValueError, match="'eps' is the earlier name of 'epsilon'.*\\(0 and 0.2\\); give 'epsilon' only"
    ):
        TrainSettings.from_dict({"eps": 0, "epsilon": 0.2})
    config = train_module.grpo_config(
        TrainSettings(objective="clip", epsilon=0.15, epsilon_high=0.25), Path("run")
    )
    assert (config.epsilon, config.epsilon_high, config.build_objective().params) == (
        0.15,
        0.25,
        {"epsilon": 0.15, "epsilon_high": 0.25},
    )


def test_validation_is_greedy_or_sampled_with_the_training_sampler_by_default():
    with pytest.raises(ValueError, match="validation must be one of greedy, sampled, got 'beam'"):
        TrainSettings(validation="beam")
    with pytest.raises(ValueError, match="validation_temperature apply to validation: sampled only"):
        TrainSettings(validation_temperature=0.5)
    assert TrainSettings().sampled_validation() is None
    sampled = TrainSettings(validation="sampled", temperature=0.7, top_p=0.95, num_generations=8)
    assert sampled.sampled_validation() == {"temperature": 0.7, "top_p": 0.95, "n": 8}
    own = TrainSettings(validation="sampled", validation_temperature=1.0, validation_generations=2)
    assert own.sampled_validation() == {"temperature": 1.0, "top_p": 0.9, "n": 2}


def test_the_paper_profile_validates_as_the_authors_and_the_cpu_profiles_as_before():
    """The authors' TRL evaluation: T 0.8, top-p 0.9, 4 completions per prompt; smoke and cpu stay greedy,
    without trainer checkpoints."""

    paper = profiles.expand(profiles.load_profile("paper"))
    assert {str(r.settings.sampled_validation()) for r in paper} == {
        "{'temperature': 0.8, 'top_p': 0.9, 'n': 4}"
    }
    assert {r.settings.save_steps for r in paper} == {100}
    for name in ("smoke", "cpu"):
        runs = profiles.expand(profiles.load_profile(name))
        assert {(r.settings.validation, r.settings.save_steps, r.settings.report_to) for r in runs} == {
            ("greedy", 0, "none")
        }


def test_sampled_validation_is_seeded_and_leaves_the_training_random_stream_alone(tiny_model, tmp_path):
    from pspo_repro.data import loaders, prompts

    source = loading.resolve(str(tiny_model))
    model, tokenizer = loading.load_model(source), loading.load_tokenizer(source)
    problems = loaders.load("synthetic", "validation")[:3]
    texts = [prompts.render_prompt(tokenizer, p.question, p.kind) for p in problems]
    options = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "eos_token_id": tokenizer.eos_token_id}

    def sample(seed):
        return callbacks.sampled_completions(model, tokenizer, texts, 24, 8, 4, seed, options)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample(7)
    assert torch.equal(torch.get_rng_state(), before)
    assert [len(group) for group in first] == [4, 4, 4]
    assert sample(7) == first
    assert sample(8) != first
    assert any(len(set(group)) > 1 for group in first)  # sampled, not four copies of the greedy answer

    settings = tiny_settings(tiny_model, validation="sampled", validation_generations=4, validation_limit=3)
    validation = callbacks.Validation(tmp_path, settings, problems, tokenizer)
    record = validation.measure(model, 5)
    assert (record["n"], record["completions"]) == (3, 12)
    assert validation.measure(model, 5) == record


def test_max_prompt_length_is_gone_with_a_clear_error_and_old_run_configs_still_read(tmp_path):
    """TRL 1.16's GRPOConfig has no max_prompt_length (prompts are never truncated): the setting, passed to
    nothing, is refused; a run folder written before, with it and with the earlier eps name, still reads."""
    from dataclasses import fields

    from trl import GRPOConfig

    assert "max_prompt_length" not in {f.name for f in fields(GRPOConfig)}
    with pytest.raises(
        ValueError, match="setting max_prompt_length was removed: TRL 1.16's GRPOConfig has no"
    ):
        TrainSettings.from_dict({"max_prompt_length": 512})
    old = {**TrainSettings(objective="clip").to_dict(), "max_prompt_length": 512, "eps": 0.0}
    for name in ("epsilon", "save_steps", "save_total_limit", "report_to", "validation"):
        old.pop(name)  # settings added since
    old.pop("validation_temperature"), old.pop("validation_top_p"), old.pop("validation_generations")
    rundir.atomic_write_json(tmp_path / "config.json", old)
    settings = read_run_settings(tmp_path)
    assert (settings.objective, settings.epsilon, settings.save_steps) == ("clip", 0.0, 0)


def test_report_to_maps_to_transformers_trackers_and_is_off_by_default(tiny_model, tmp_path):
    config = train_module.grpo_config(TrainSettings(), tmp_path)
    assert config.report_to == []
    config = train_module.grpo_config(TrainSettings(report_to="wandb, trackio", label="clip-x"), tmp_path)
    assert config.report_to == ["wandb", "trackio"] and config.run_name == "Qwen2.5-0.5B/clip-x/seed0"
    with pytest.raises(
        ValueError, match="report_to must be 'none' or a comma-separated .*got 'tensorbord'.*tensorboard"
    ):
        TrainSettings(report_to="tensorbord")
    # tensorboard is a tracker transformers knows, but its package is not installed here
    settings = TrainSettings(model=str(tiny_model), dataset="synthetic", report_to="tensorboard")
    assert train_module.grpo_config(settings, tmp_path).report_to == ["tensorboard"]
    with pytest.raises(
        ValueError, match=r"report_to names tracker\(s\) \['tensorboard'\] whose package is not"
    ):
        train(settings, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_validation_generate_call_holds_the_settings_batch_or_64_sequences_on_a_cpu(tiny_model, tmp_path):
    """eval_batch_size, when set, is the sequences per validation generate call; unset, a GPU run sizes it by
    memory (pspo_repro.models.footprint) and a CPU keeps 64. The batch is fixed for the run and recorded."""
    from pspo_repro.data import loaders

    assert TrainSettings().eval_batch_size is None
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1 .*, got 0"):
        TrainSettings(eval_batch_size=0)
    source = loading.resolve(str(tiny_model))
    model, tokenizer = loading.load_model(source), loading.load_tokenizer(source)
    problems = loaders.load("synthetic", "validation")[:3]
    unset = callbacks.Validation(
        tmp_path / "a", tiny_settings(tiny_model, eval_batch_size=None), problems, tokenizer
    )
    assert unset.generate_batch(model) == callbacks.CPU_VALIDATION_BATCH == 64
    assert unset.measure(model, 1)["generate_batch"] == 64
    given = callbacks.Validation(
        tmp_path / "b", tiny_settings(tiny_model, eval_batch_size=8), problems, tokenizer
    )
    assert given.generate_batch(model) == 8
    resumed = callbacks.Validation(
        tmp_path / "c",
        tiny_settings(tiny_model, eval_batch_size=None),
        problems,
        tokenizer,
        history=[{"step": 10, "reward": 0.5, "generate_batch": 256}],
    )
    assert resumed.generate_batch(model) == 256  # as before the interruption: the same samples
