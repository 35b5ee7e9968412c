"""What the trainer calls back during a run: validation on held-out problems with the best checkpoint kept
(:class:`Validation`), and the run's own logs and progress line (:class:`RunLog`)."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from pspo_repro.data import loaders, prompts
from pspo_repro.models import footprint, precision
from pspo_repro.models.generation import generate_batch, greedy_completions
from pspo_repro.study import rundir
from pspo_repro.training import distributed, rewards
from pspo_repro.training.settings import TrainSettings

STAGED_BEST = "checkpoint.next"  # a new best checkpoint awaiting its trainer checkpoint (see Validation)
LOGS = (rundir.TRAIN_LOG, rundir.PROBES, rundir.VALIDATION)  # one record per step (or logging step)
CPU_VALIDATION_BATCH = 64  # sequences per validation generate call on a CPU when eval_batch_size is unset


# --- validation and the best checkpoint ---------------------------------------------------------


def sampled_completions(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    n: int,
    seed: int,
    options: dict[str, Any],
) -> list[list[str]]:
    """``n`` sampled completions of each rendered prompt, with generation ``options`` (temperature, top_p,
    eos_token_id and any further sampler settings), through the one generation path
    (:func:`pspo_repro.models.generation.generate_batch`).

    Sampling draws from the global generator seeded with ``seed`` inside a fork of the random state, so the
    completions depend on the seed alone and the training's random stream is left as it was."""
    sampler = dict(options)
    stop = sampler.pop("eos_token_id")
    stop_ids = [stop] if isinstance(stop, int) else list(stop)
    temperature, top_p = sampler.pop("temperature"), sampler.pop("top_p")
    per_call = max(1, batch_size // n)
    out: list[list[str]] = []
    was_training = model.training
    model.eval()
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(texts), per_call):
                batch = generate_batch(
                    model,
                    tokenizer,
                    texts[start : start + per_call],
                    n=n,
                    max_new_tokens=max_new_tokens,
                    stop_ids=stop_ids,
                    temperature=temperature,
                    top_p=top_p,
                    sampler=sampler,
                )
                out += [generation.texts for generation in batch]
    finally:
        model.train(was_training)
    return out


class Validation(TrainerCallback):
    """Validation reward every N steps (as the authors did); keeps the best checkpoint in <run>/checkpoint, or
    the final one (``checkpoint: final``: no selection, the validation records still name the best step).

    Step 0 (the starting model) is validated and logged but is never a candidate for the best checkpoint,
    as with ``load_best_model_at_end`` in the authors' setup: a run that only degrades then shows it.
    ``initial`` is a known step-0 record (the same starting model, validated the same way) to reuse."""

    def __init__(
        self,
        run_dir: Path,
        settings: TrainSettings,
        problems: list[loaders.Problem],
        tokenizer: Any,
        initial: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
    ):
        self.run_dir, self.settings, self.problems, self.tokenizer = run_dir, settings, problems, tokenizer
        self.texts = [
            prompts.render_prompt(tokenizer, p.question, p.kind, settings.system_prompt) for p in problems
        ]
        self.initial = initial
        # a resumed run continues from the validation records kept up to its trainer checkpoint
        history = history or []
        self.best: float = max((r["reward"] for r in history if r["step"] > 0), default=-math.inf)
        # sampled validation: the training sampler's settings other than temperature and top_p, as TRL's
        # generation config has them (train() sets them from the trainer)
        self.sampler_options: dict[str, Any] = {
            "top_k": 0,
            "min_p": None,
            "repetition_penalty": 1.0,
            "eos_token_id": tokenizer.eos_token_id,
        }
        self.last: dict[str, Any] = history[-1] if history else {}
        # Sequences per generate call, fixed for the run (sampled completions depend on how they are batched):
        # a resumed run keeps the batch it validated with before.
        self.batch: int | None = next(
            (r["generate_batch"] for r in reversed(history) if "generate_batch" in r), None
        )
        self.optimizer: Any = None  # the trainer's (on_train_begin): its state counts against a GPU's memory

    def generate_batch(self, model: Any) -> int:
        """Sequences per validation generate call: ``eval_batch_size`` when set; else, on a GPU, as many as fit
        in half the memory left free (:func:`footprint.generation_batch`), on a CPU 64."""
        if self.settings.eval_batch_size is not None:
            return self.settings.eval_batch_size
        if self.batch is None:
            self.batch = self._batch_by_memory(model)
        return self.batch

    def _batch_by_memory(self, model: Any) -> int:
        if model.device.type != "cuda":
            return CPU_VALIDATION_BATCH
        s = self.settings
        shape = footprint.Shape.of_model(model)
        prompt = max(len(ids) for ids in self.tokenizer(self.texts, add_special_tokens=False)["input_ids"])
        # at step 0 Adam's moments do not exist yet: leave room for them
        state = shape.parameters * footprint.ADAM_STATE if s.optimizer == "adamw" else 0
        held = sum(
            t.numel() * t.element_size()
            for st in (self.optimizer.state.values() if self.optimizer is not None else ())
            for t in st.values()
            if torch.is_tensor(t)
        )
        free = footprint.free_cuda_bytes(model.device, max(0, state - held))
        bf16 = precision.for_device("cuda", s.bf16).autocast is not None
        return footprint.generation_batch(shape, prompt, s.max_completion_length, free, 2 if bf16 else 4)

    def measure(self, model: Any, step: int) -> dict[str, Any]:
        """Validation reward and accuracy of ``model`` (logged by :meth:`validate`): of one greedy completion
        per problem, or, sampled, the means over ``n`` completions per problem, as TRL's evaluation reports
        them (seeded by the run seed and the step, so a resumed run validates as an uninterrupted one)."""
        from pspo_repro.evaluation import grading

        s = self.settings
        sampled = s.sampled_validation()
        batch = self.generate_batch(model)
        if sampled is None:
            completions = greedy_completions(
                model, self.tokenizer, self.texts, s.max_completion_length, batch
            )
            n = 1
        else:
            n = sampled["n"]
            options = {
                "temperature": sampled["temperature"],
                "top_p": sampled["top_p"],
                **self.sampler_options,
            }
            seed = s.seed * 1_000_003 + step
            groups = sampled_completions(
                model,
                self.tokenizer,
                self.texts,
                s.max_completion_length,
                batch,
                n,
                seed,
                options,
            )
            completions = [c for group in groups for c in group]
        reward_fn = rewards.get(s.reward)
        answers = [p.answer for p in self.problems for _ in range(n)]
        kinds = [p.kind for p in self.problems for _ in range(n)]
        rs = reward_fn(None, completions, answer=answers, kind=kinds)
        grades = [grading.score(c, a, k) for c, a, k in zip(completions, answers, kinds, strict=True)]
        record = {
            "step": step,
            "reward": sum(rs) / len(rs),
            "strict": sum(g.strict for g in grades) / len(grades),
            "flexible": sum(g.flexible for g in grades) / len(grades),
            "n": len(self.problems),
            "generate_batch": batch,
        }
        if sampled is not None:
            record["completions"] = len(completions)
        return record

    def validate(self, model: Any, step: int, final: bool = False) -> dict[str, Any]:
        """Validate on the main process (the others wait, and raise with it when it fails: see
        :func:`pspo_repro.training.distributed.on_main`); the record there, {} on the others. ``final``: the
        run's last step, whose checkpoint a run that keeps its final checkpoint keeps."""
        record = distributed.on_main(
            lambda: self._validate_here(model, step, final), f"validation at step {step}"
        )
        return record if record is not None else {}

    def _validate_here(self, model: Any, step: int, final: bool = False) -> dict[str, Any]:
        if step == 0 and self.initial is not None:
            record = {**self.initial, "step": 0}
        else:
            record = self.measure(model, step)
        record["best"] = step > 0 and record["reward"] > self.best
        if record["best"]:
            self.best = record["reward"]
        keep = record["best"] if self.settings.checkpoint == "best" else final and step > 0
        if keep:
            self._save_checkpoint(model, step)
        rundir.append_jsonl(self.run_dir / rundir.VALIDATION, record)
        self.last = record
        return record

    def _save_checkpoint(self, model: Any, step: int) -> None:
        tmp = self.run_dir / f"{rundir.CHECKPOINT}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        rundir.atomic_write_json(tmp / rundir.CHECKPOINT_STEP, {"step": step})
        if self.settings.save_steps:
            # With trainer checkpoints, a new best waits in checkpoint.next until the trainer checkpoint of its
            # step (or a later one) is complete: a run resumed from an earlier one never finds a best model
            # from the steps it is about to redo.
            rundir.replace_dir(tmp, self.run_dir / STAGED_BEST)
        else:
            rundir.replace_dir(tmp, self.run_dir / rundir.CHECKPOINT)

    def promote(self) -> None:
        """Make a staged best checkpoint the run's best (see :meth:`_save_checkpoint`)."""
        if (self.run_dir / STAGED_BEST).is_dir():
            rundir.replace_dir(self.run_dir / STAGED_BEST, self.run_dir / rundir.CHECKPOINT)

    def on_save(self, args, state, control, **kwargs):
        self.promote()

    def on_train_end(self, args, state, control, **kwargs):
        self.promote()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimizer = optimizer
        if state.global_step == 0:
            self.validate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.settings.eval_every == 0 or step == state.max_steps:
            self.validate(model, step, final=step == state.max_steps)


class RunLog(TrainerCallback):
    """TRL's logged metrics to train_log.jsonl, and a progress bar with reward and time left."""

    def __init__(self, run_dir: Path, validation: Validation, progress: bool = True, elapsed: float = 0.0):
        self.path = run_dir / rundir.TRAIN_LOG
        self.validation = validation
        self.progress = progress
        self.main = distributed.is_main_process()  # GPU options: one process logs
        self.bar: tqdm | None = None
        self.elapsed = elapsed  # training seconds before this process (a resumed run)
        self.start = time.time() - elapsed

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and self.main),
        )
        self.start = time.time() - self.elapsed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not self.main:
            return
        rundir.append_jsonl(self.path, {"step": state.global_step, "time": time.time() - self.start, **logs})
        if self.bar is not None:
            post = {k: f"{logs[k]:.3f}" for k in ("reward",) if isinstance(logs.get(k), float)}
            if self.validation.last:
                post["val"] = f"{self.validation.last['reward']:.3f}"
            self.bar.set_postfix(post, refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
