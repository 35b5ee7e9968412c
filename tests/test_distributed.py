"""One run across processes: the per-step batch whatever the world size, one process writing the run's
files, the shipped accelerate config, and a real two-process run on CPUs (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerState

from pspo_repro.study import profiles, rundir
from pspo_repro.training import distributed
from pspo_repro.training.callbacks import RunLog, Validation
from pspo_repro.training.settings import TrainSettings
from pspo_repro.training.train import grpo_config, train

REPO = Path(__file__).resolve().parents[1]
ZERO2 = REPO / "configs" / "accelerate" / "zero2.yaml"


# --- the batch arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("world", "per_device", "accum"), [(1, 4, 16), (2, 4, 8), (4, 4, 4), (8, 4, 2), (16, 4, 1)]
)
def test_the_paper_profiles_64_completions_per_step_survive_any_dividing_world_size(world, per_device, accum):
    layout = distributed.batch_layout(4, 16, None, world)
    assert (layout.batch_size, layout.grad_accum, layout.steps_per_generation) == (per_device, accum, accum)
    assert layout.completions_per_step == 64
    assert layout.completions_per_generation == 64


def test_the_micro_batch_is_split_when_the_accumulation_cannot_be():
    # the cpu profile's stress arm style: 1 accumulation step, 2 generation steps of 32
    layout = distributed.batch_layout(32, 1, 2, 2)
    assert (layout.batch_size, layout.grad_accum, layout.steps_per_generation) == (16, 1, 2)
    assert layout.completions_per_step == 32
    assert layout.completions_per_generation == 64


def test_a_world_size_that_divides_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"3 processes cannot share .* 64 completions") as err:
        distributed.batch_layout(4, 16, None, 3)
    assert "use e.g. 1, 2, 4, 8, 16 processes" in str(err.value)


def test_grpo_config_takes_the_layout_of_the_world_size(monkeypatch, tmp_path):
    """The paper profile under 4 processes: TRL gets 4 per device x 4 accumulation steps; the generation
    batch TRL derives from it (per device x processes x steps per generation) is still the profile's 64."""
    run = profiles.expand(profiles.load_profile("paper"))[0]
    # the launcher's variables would make TrainingArguments join a process group: set the size alone
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    config = grpo_config(run.settings, tmp_path)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 4)
    assert config.steps_per_generation == 4
    # TRL's own generation batch uses its world size (1 in this process) times our per-process numbers
    assert config.generation_batch_size * 4 == 64


def test_a_world_size_that_does_not_divide_fails_before_the_run_folder_exists(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    settings = TrainSettings(model="tiny-test", dataset="synthetic", batch_size=4, grad_accum=16)
    with pytest.raises(ValueError, match="3 processes cannot share"):
        train(settings, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- the rank-0 guard ---------------------------------------------------------------------------------


def test_rank_comes_from_the_launchers_variables(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (1, 2, False)


def test_a_non_main_process_neither_validates_nor_logs(monkeypatch, tmp_path, tiny_model):
    from pspo_repro.data import synthetic
    from pspo_repro.models import loading

    settings = TrainSettings(model=str(tiny_model), dataset="synthetic", max_completion_length=8)
    tokenizer = loading.load_tokenizer(loading.resolve(str(tiny_model)))
    problems = synthetic.generate("validation", n=2, seed=0)
    monkeypatch.setenv("RANK", "1")  # the world of 1 keeps the barrier a no-op in this single process
    validation = Validation(tmp_path, settings, problems, tokenizer)
    assert validation.validate(model=None, step=5) == {}  # no model is touched on rank 1
    log = RunLog(tmp_path, validation, progress=False)
    log.on_log(None, TrainerState(global_step=1), None, logs={"reward": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- the accelerate config for the 1.5B models ---------------------------------------------------------


def test_the_zero2_config_loads_through_accelerates_launcher_into_a_deepspeed_plugin(monkeypatch):
    """What ``accelerate launch --config_file configs/accelerate/zero2.yaml`` hands to the training
    processes (DeepSpeed itself is not needed up to this point): ZeRO stage 2 without offload, bf16, and
    batch, accumulation and clipping left "auto", which transformers fills from the run's TrainingArguments
    (the layout of :func:`grpo_config`), so the config never contradicts a run's batch."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(ZERO2), "-m", "pspo_repro.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and not args.multi_gpu
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    config = DeepSpeedPlugin().deepspeed_config
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert config["gradient_accumulation_steps"] == "auto"
    assert config["gradient_clipping"] == "auto"
    assert config["train_micro_batch_size_per_gpu"] == "auto"


# --- a real run across two CPU processes ----------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_one_run_and_only_rank_0_writes_it(tiny_model, tmp_path):
    """``accelerate launch`` with two processes (DDP over gloo on CPUs) trains one run: each file has one
    record per step, not one per process, the probes pool both processes' tokens, and the per-step batch
    (8 x 2 = 16 completions) is shared out as 8 x 1 per process."""
    out = tmp_path / "run"
    overrides = dict(
        learning_rate=1e-3,
        warmup_steps=0,
        max_steps=2,
        batch_size=8,
        grad_accum=2,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=4,
        max_completion_length=16,
        eval_every=2,
        validation_limit=8,
        eval_batch_size=8,
        probe_every=3,
    )
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "pspo_repro.cli",
        "train",
        "--out",
        str(out),
        "--model",
        str(tiny_model),
        "--dataset",
        "synthetic",
        "--quiet",
        *sets,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rundir.is_done(out)
    # one process reported the run
    assert proc.stdout.count('"validation_best"') == 1
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    assert [r["step"] for r in rundir.read_jsonl(out / "probes.jsonl")] == [1, 2]
    assert [r["step"] for r in rundir.read_jsonl(out / "validation.jsonl")] == [0, 2]
    # TRL's metrics at steps 1 and 2, then the run's summary: once, not once per process
    assert [r["step"] for r in rundir.read_jsonl(out / "train_log.jsonl")] == [1, 2, 2]
    # 16 completions of at most 16 tokens per step: more than one process's 8 x 16 = 128 tokens
    probes = rundir.read_jsonl(out / "probes.jsonl")
    assert all(128 < p["n_tokens"] <= 256 for p in probes)
    # the reuse cycle is the single-process one: 2 generation micro-steps x 2 iterations / 2 accumulation
    assert [p["staleness"] for p in probes] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == [
        "DONE",
        "checkpoint",
        "config.json",
        "probes.jsonl",
        "provenance.json",
        "train_log.jsonl",
        "validation.jsonl",
    ]


# --- a failure on the main process reaches the others ---------------------------------------------------

VALIDATE_ON_RANK = """
import json, os, sys, time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState

from pspo_repro.data import synthetic
from pspo_repro.models import loading
from pspo_repro.training.callbacks import Validation
from pspo_repro.training.settings import TrainSettings

model_dir, run_dir, out = sys.argv[1:4]
PartialState(cpu=True, timeout=timedelta(seconds=120))  # as the trainer's Accelerator sets it up on CPUs (gloo)
settings = TrainSettings(model=model_dir, dataset="synthetic", max_completion_length=8)
tokenizer = loading.load_tokenizer(loading.resolve(model_dir))
validation = Validation(Path(run_dir), settings, synthetic.generate("validation", n=2, seed=0), tokenizer)
started = time.monotonic()
try:
    validation.validate(model=None, step=5)  # on rank 0, measuring without a model raises
    outcome = "returned"
except Exception as err:
    outcome = f"{type(err).__name__}: {err}"
seconds = time.monotonic() - started
Path(out).write_text(json.dumps({"outcome": outcome, "seconds": seconds, "left": not dist.is_initialized()}))
if os.environ["RANK"] == "0":
    time.sleep(600)  # the failed main process lives on (its error still being handled), as under NCCL
"""


def _start_two_ranks(script: Path, args: list[str]) -> list[subprocess.Popen]:
    """Rank 0 and rank 1 of a two-process gloo group, each running ``script`` with the variables a launcher
    sets and with ``args``, in which ``{rank}`` becomes the process's rank (so each writes its own file)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        rank_args = [arg.format(rank=rank) for arg in args]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *rank_args], env=env, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


@pytest.mark.slow
def test_a_validation_that_fails_on_the_main_process_stops_every_process_at_once(tiny_model, tmp_path):
    """Two processes over gloo: validation raises on rank 0, and rank 1, instead of waiting for rank 0 in a
    barrier until the collective's timeout, raises at once with rank 0's error."""
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_ON_RANK)
    procs = _start_two_ranks(
        script, [str(tiny_model), str(tmp_path / "run"), str(tmp_path / "rank{rank}.json")]
    )
    try:
        try:
            procs[1].wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 1 still waits for rank 0 after 90 s (a barrier that only the timeout ends)")
        assert procs[1].returncode == 0, procs[1].stderr.read()[-3000:]
        main = json.loads((tmp_path / "rank0.json").read_text())
        other = json.loads((tmp_path / "rank1.json").read_text())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert main["outcome"].startswith("AttributeError")
    assert other["outcome"].startswith("MainProcessFailed: validation at step 5 failed on the main process")
    assert main["outcome"] in other["outcome"]  # rank 0's own error, word for word
    assert other["seconds"] < 60
    # the stopped process left the process group (one left alive can abort it at exit); the failed main
    # process is still handling its error, and keeps it
    assert (main["left"], other["left"]) == (False, True)


LEAVE_ON_RANK = """
import json, sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState

from pspo_repro.training import distributed

PartialState(cpu=True, timeout=timedelta(seconds=120))  # as the trainer's Accelerator sets it up on CPUs (gloo)
joined = dist.is_initialized()
distributed.leave()
Path(sys.argv[1]).write_text(json.dumps({"joined": joined, "left": not dist.is_initialized()}))
"""


@pytest.mark.slow
def test_a_finished_process_leaves_the_process_group_before_it_exits(tmp_path):
    """``pspo-repro train`` ends a distributed run by destroying the process group on every rank: one left
    alive until the interpreter exits can abort a gloo process after its run is written."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_ON_RANK)
    procs = _start_two_ranks(script, [str(tmp_path / "rank{rank}.json")])
    try:
        for proc in procs:
            proc.wait(timeout=90)
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"joined": True, "left": True}
