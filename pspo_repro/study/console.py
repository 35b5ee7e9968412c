"""What a study shows on the terminal: one progress display, and no library noise a user cannot act on."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

from tqdm.auto import tqdm


def quiet_libraries() -> None:
    """Silence what users cannot act on: transformers' and TRL's ``FutureWarning``s and advice, weight-
    loading and shard-writing bars, the datasets bars. Errors still reach the terminal (as exceptions)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for module in ("transformers", "trl", "accelerate", "torch", "datasets", "huggingface_hub"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    for name in ("trl", "accelerate", "huggingface_hub", "math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


class StudyProgress:
    """One line for the whole study: tasks done / total, elapsed and estimated time left, and for each
    task in progress its phase (warm start, training step and reward, evaluation).

    Workers send plain dicts to :meth:`update`: ``{"task": name, "phase": ..., "step": ...,
    "max_steps": ..., "reward": ...}``; :meth:`finish` marks a task done. The estimate counts a task in
    training as the fraction of its steps done."""

    def __init__(self, total: int, desc: str = "study", enabled: bool = True) -> None:
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="run",
            dynamic_ncols=True,
            disable=not enabled,
            mininterval=0.5 if interactive else 30.0,
            bar_format="{desc}: {n:.1f}/{total} runs |{bar:20}| {elapsed}<{remaining}{postfix}",
        )
        self.done = 0
        self.active: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def update(self, message: dict[str, Any]) -> None:
        task = message["task"]
        if message.get("phase") == "finished":
            self.finish(task)
            return
        self.active.setdefault(task, {}).update(message)
        self._render()

    def note(self, text: str) -> None:
        """A line above the progress display (e.g. a run that failed)."""
        self.bar.write(text)

    def finish(self, task: str) -> None:
        self.active.pop(task, None)
        self.done += 1
        self._render()

    def _render(self) -> None:
        partial = 0.0
        parts = []
        for task, state in self.active.items():
            phase = state.get("phase", "")
            if phase == "train" and state.get("max_steps"):
                partial += 0.8 * state["step"] / state["max_steps"]  # evaluation is the remaining ~20%
                reward = state.get("reward")
                extra = f" r={reward:.2f}" if isinstance(reward, float) else ""
                parts.append(f"{task} {state['step']}/{state['max_steps']}{extra}")
            else:
                partial += 0.8 if phase == "eval" else 0.0
                parts.append(f"{task} {phase}")
        self.bar.n = self.done + partial
        self.bar.set_postfix_str("; ".join(parts), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.n = self.done
        self.bar.set_postfix_str(
            f"finished in {tqdm.format_interval(time.time() - self.started)}", refresh=False
        )
        self.bar.close()
