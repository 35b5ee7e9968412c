"""One training run: settings in, a complete run directory out (see :mod:`pspo_repro.study.rundir`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from pspo_repro.data import loaders, prompts
from pspo_repro.models import loading, precision
from pspo_repro.study import rundir
from pspo_repro.training import distributed, objectives, rewards, rollouts
from pspo_repro.training.callbacks import LOGS, STAGED_BEST, RunLog, Validation
from pspo_repro.training.settings import TrainSettings

# --- data -----------------------------------------------------------------------------------------


def load_problems(settings: TrainSettings) -> tuple[list[loaders.Problem], list[loaders.Problem]]:
    """Training and validation problems: GSM8K split 7,000 / 472 by the run seed, or the synthetic splits."""
    if settings.dataset == "gsm8k":
        train, validation = loaders.gsm8k_train_validation(settings.seed, data_dir=settings.data_dir)
    else:
        train = loaders.load("synthetic", "train")
        validation = loaders.load("synthetic", "validation")
    if settings.validation_limit is not None:
        validation = validation[: settings.validation_limit]
    if settings.train_limit is not None:
        train = train[: settings.train_limit]
    return train, validation


def to_dataset(problems: list[loaders.Problem], system_prompt: str = prompts.DEFAULT) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": prompts.chat_messages(p.question, p.kind, system_prompt),
                "answer": p.answer,
                "kind": p.kind,
            }
            for p in problems
        ]
    )


# --- the run ------------------------------------------------------------------------------------


# The optimizer updates float32 master weights whatever the device; bf16 is autocast only (TrainingArguments'
# ``bf16=True``), as in the authors' runs, where TRL loaded the model from a path in float32. Adam steps of
# about lr = 5e-7 are far below half a bf16 rounding step of nearly every weight: bf16 weights would not move.
MASTER_WEIGHTS_DTYPE = torch.float32


def grpo_config(settings: TrainSettings, run_dir: Path) -> Any:
    from pspo_repro.training.trainer import PSPOGRPOConfig

    s = settings
    gpu = torch.cuda.is_available()
    # GPU options: the profile's per-step batch kept whatever the number of processes (pspo_repro.training.distributed)
    layout = distributed.settings_layout(s)
    return PSPOGRPOConfig(
        output_dir=str(run_dir / rundir.TRAINER_OUTPUT),
        objective=s.objective,
        **{name: getattr(s, name) for name in objectives.parameter_names()},
        importance_sampling_level=s.ratio_level,
        shuffle_advantages=s.shuffle_advantages,
        probes=s.probes,
        probe_every=s.probe_every,
        probes_file=str(run_dir / rundir.PROBES),
        seed=s.seed,
        data_seed=s.seed,
        learning_rate=s.learning_rate,
        optim="sgd" if s.optimizer == "sgd" else "adamw_torch",
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=layout.batch_size,
        gradient_accumulation_steps=layout.grad_accum,
        steps_per_generation=layout.steps_per_generation,
        num_iterations=s.num_iterations,
        num_generations=s.num_generations,
        temperature=s.temperature,
        top_p=s.top_p,
        max_completion_length=s.max_completion_length,
        loss_type=s.loss_type,
        beta=s.beta,
        max_grad_norm=s.max_grad_norm,
        weight_decay=s.weight_decay,
        gradient_checkpointing=s.gradient_checkpointing,
        **rollouts.grpo_kwargs(s),  # GPU options: vLLM rollouts
        bf16=precision.for_device("cuda" if gpu else "cpu", s.bf16).autocast == "bfloat16",
        logging_steps=s.logging_steps,
        save_strategy="steps" if s.save_steps else "no",
        save_steps=s.save_steps or 500,  # unused without a save strategy; transformers wants a positive value
        save_total_limit=s.save_total_limit,
        report_to=s.trackers() or "none",
        run_name=f"{Path(s.model).name}/{s.label or s.objective}/seed{s.seed}",
        disable_tqdm=True,
        use_cpu=not gpu,
    )


def _initial_validation_path(source: loading.ModelSource, settings: TrainSettings) -> Path | None:
    """Where the step-0 validation of a cached tiny model is kept, or None for other models.

    Greedy validation of the starting model is the same for every run that starts from it (every
    objective and seed of a study), so it is computed once. Only tiny models qualify: their folder name
    carries the fingerprint of their weights."""
    from pspo_repro.models import tiny

    folder = Path(source.path)
    if source.gguf_file or folder.parent != tiny.cache_root() / "tiny":
        return None
    key = {
        "model": folder.name,
        "dataset": settings.dataset,
        "validation_limit": settings.validation_limit,
        "max_completion_length": settings.max_completion_length,
        "reward": settings.reward,
        # only when not the default, so that the step-0 records cached before this setting stay valid
        **({"system_prompt": settings.system_prompt} if settings.system_prompt != prompts.DEFAULT else {}),
    }
    sampled = settings.sampled_validation()
    if sampled is not None:  # sampled validation depends on the seed too (greedy keys stay as they were)
        key.update(validation=sampled, seed=settings.seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return tiny.cache_root() / "validation" / f"{folder.name}-{digest}.json"


def last_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest complete trainer checkpoint of a run, as (step, folder), or None.

    transformers writes trainer_state.json last, so a checkpoint cut short by a crash has none, or a torn one."""
    found = []
    for folder in (run_dir / rundir.TRAINER_OUTPUT).glob("checkpoint-*"):
        try:
            state = rundir.read_json(folder / "trainer_state.json")
            step = int(folder.name.removeprefix("checkpoint-"))
        except (OSError, ValueError):
            continue
        if state.get("global_step") == step:
            found.append((step, folder))
    return max(found, default=None)


def _resume_point(run_dir: Path, settings: TrainSettings) -> tuple[int, Path] | None:
    """The checkpoint to resume from: the newest complete one, when the run was started with these very
    settings (anything else is another run and starts afresh)."""
    if not settings.save_steps or not (run_dir / rundir.CONFIG).is_file():
        return None
    same = rundir.read_json(run_dir / rundir.CONFIG) == json.loads(json.dumps(settings.to_dict()))
    return last_checkpoint(run_dir) if same else None


def _rewind(run_dir: Path, step: int) -> float:
    """Drop what a crashed run wrote after its checkpoint at ``step``, so that the resumed run's logs are one
    history; returns the training seconds spent up to that step."""
    for name in LOGS:
        kept = [r for r in rundir.read_jsonl(run_dir / name) if r["step"] <= step]
        rundir.atomic_write_text(run_dir / name, "".join(json.dumps(r, default=str) + "\n" for r in kept))
    best, staged, old = run_dir / rundir.CHECKPOINT, run_dir / STAGED_BEST, run_dir / "checkpoint.old"
    if not best.exists() and old.is_dir():  # a crash inside replace_dir, between its two renames
        os.replace(old, best)
    shutil.rmtree(old, ignore_errors=True)
    if staged.is_dir():
        staged_step = rundir.read_json(staged / rundir.CHECKPOINT_STEP)["step"]
        if staged_step <= step:  # confirmed by the checkpoint; the crash came before it was promoted
            rundir.replace_dir(staged, best)
        else:
            shutil.rmtree(staged)
    times = [r["time"] for r in rundir.read_jsonl(run_dir / rundir.TRAIN_LOG) if "time" in r]
    return max(times, default=0.0)


def _check_trackers_installed(settings: TrainSettings) -> None:
    from transformers.integrations import get_available_reporting_integrations

    installed = get_available_reporting_integrations()
    missing = [name for name in settings.trackers() if name not in installed]
    if missing:
        raise ValueError(
            f"report_to names tracker(s) {missing} whose package is not installed; installed trackers: "
            f"{', '.join(installed) or 'none'}"
        )


def _prepare_run_dir(run_dir: Path, settings: TrainSettings, resume: tuple[int, Path] | None) -> float:
    """Make the run folder ready to train into; returns the training seconds already spent (a resumed run)."""
    if resume is None:
        # A run that died part-way without a usable checkpoint restarts: its logs would mix two histories.
        for name in (*rundir.TRAINING_OUTPUTS, STAGED_BEST):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_json(run_dir / rundir.CONFIG, settings.to_dict())
        prov = rundir.provenance(settings.seed)
        elapsed = 0.0
    else:
        elapsed = _rewind(run_dir, resume[0])
        started_as = run_dir / rundir.PROVENANCE
        prov = rundir.read_json(started_as) if started_as.is_file() else rundir.provenance(settings.seed)
        now = rundir.provenance(settings.seed)
        prov.setdefault("resumed", []).append(
            {
                "step": resume[0],
                "at": now["started"],
                "git_commit": now["git_commit"],
                "git_dirty": now["git_dirty"],
            }
        )
    prov["processes"] = distributed.world_size()
    rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)
    return elapsed


def train(
    settings: TrainSettings,
    run_dir: str | os.PathLike,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train one configuration into ``run_dir``; a finished run (DONE present) is left as it is.

    A run cut short resumes from its newest trainer checkpoint (``save_steps``) when it has one and was
    started with the same settings; its logs keep the records up to that checkpoint and drop the rest, so
    each step appears once. Otherwise it starts from scratch. The model and the data are resolved before
    anything is written, so a bad name leaves no run folder. ``callbacks`` are extra ``TrainerCallback``s
    (a study's progress display)."""
    from pspo_repro.training.trainer import PSPOGRPOTrainer

    run_dir = Path(run_dir)
    if rundir.is_done(run_dir):
        return run_dir
    rollouts.require_vllm(settings)  # GPU options: both fail before anything is written
    distributed.settings_layout(settings)
    source = loading.resolve(settings.model)
    _check_trackers_installed(settings)
    train_problems, validation_problems = load_problems(settings)
    tokenizer = loading.load_tokenizer(source)

    resume = _resume_point(run_dir, settings)
    elapsed = 0.0
    if distributed.is_main_process():  # GPU options: one process writes the run's files
        elapsed = _prepare_run_dir(run_dir, settings, resume)

    model = loading.load_model(source, dtype=MASTER_WEIGHTS_DTYPE)
    model.train()

    cache = _initial_validation_path(source, settings)
    initial = rundir.read_json(cache) if cache is not None and cache.is_file() else None
    history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
    validation = Validation(
        run_dir, settings, validation_problems, tokenizer, initial=initial, history=history
    )
    trainer = PSPOGRPOTrainer(
        model=model,
        reward_funcs=[rewards.get(settings.reward)],
        args=grpo_config(settings, run_dir),
        train_dataset=to_dataset(train_problems, settings.system_prompt),
        processing_class=tokenizer,
        callbacks=[validation, RunLog(run_dir, validation, progress, elapsed), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # RunLog writes the metrics; no dicts on the terminal
    validation.sampler_options = {
        "top_k": trainer.args.top_k,
        "min_p": trainer.args.min_p,
        "repetition_penalty": trainer.args.repetition_penalty,
        "eos_token_id": trainer.eos_token_ids,
    }
    for callback in trainer.callback_handler.callbacks:
        # TensorBoard would write under the trainer folder, which goes when the run is done
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / "tensorboard")
    started = time.time() - elapsed
    state = rundir.read_json(resume[1] / "trainer_state.json") if resume else None
    if state is not None and state["global_step"] >= state["max_steps"]:
        steps = state["global_step"]  # the crash came after the last step: nothing is left to train
        validation.promote()
    else:
        trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
        steps = trainer.state.global_step
    seconds = time.time() - started

    def finish() -> None:
        shutil.rmtree(run_dir / rundir.TRAINER_OUTPUT, ignore_errors=True)

        prov = rundir.read_json(run_dir / rundir.PROVENANCE)
        prov.update(finished=rundir.now(), train_seconds=seconds, steps=steps)
        rundir.atomic_write_json(run_dir / rundir.PROVENANCE, prov)
        history = rundir.read_jsonl(run_dir / rundir.VALIDATION)
        if cache is not None and initial is None:
            rundir.atomic_write_json(cache, {k: v for k, v in history[0].items() if k != "best"})
        # The best checkpoint is chosen among the steps after 0 (see Validation).
        best = max([r for r in history if r["step"] > 0] or history, key=lambda r: r["reward"])
        rundir.mark_done(
            run_dir,
            {
                "steps": steps,
                "seconds": seconds,
                "seconds_per_step": seconds / max(steps, 1),
                "validation_first": history[0],
                "validation_last": history[-1],
                "validation_best": best,
                # the checkpoint kept and evaluated: the best step's, or the last step's (checkpoint: final)
                "checkpoint": settings.checkpoint,
                "checkpoint_step": history[-1]["step"] if settings.checkpoint == "final" else best["step"],
                "validation_lowest": min(
                    [r for r in history if r["step"] > 0] or history, key=lambda r: r["strict"]
                ),
            },
        )

    # GPU options: the main process finishes the run; the others return once DONE is written, or raise
    # with the main process when finishing fails there
    distributed.on_main(finish, "finishing the run")
    return run_dir
