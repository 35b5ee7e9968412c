"""Evaluation: generate completions for benchmark problems, grade them, and summarise.

Greedy decoding (temperature 0) gives the headline accuracy; sampling (temperature > 0, ``n_samples``
per problem) adds pass@k and majority-vote accuracy. Every completion is graded under the four
metrics of ``pspo_repro.grading`` (strict, flexible, permissive, and the paper's own grading).

Outputs, in ``<out_dir>/eval/``:

- ``<benchmark>.jsonl``: one line per problem (prompt, completions, token counts, truncation flags,
  per-completion grades with the answer each metric extracted, gold, metadata, settings). Lines are
  appended a batch at a time and fsync'ed, so an interrupted evaluation resumes from the problems
  already recorded; a trailing partial line (a write cut short) is dropped.
- ``summary.json``: per benchmark and metric, accuracy with a Wilson 95% interval, mean completion
  length, fraction cut at the token limit, per-category accuracy, and pass@k / majority vote when
  ``n_samples > 1``; written atomically (temporary file + ``os.replace``).

Two generation backends share one interface (:class:`Backend`): ``hf`` (transformers ``generate``,
CPU or GPU) and ``vllm`` (vLLM ``LLM.generate``, GPU; optional dependency).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pspo_repro import data, grading, models, prompts, rundir

METRICS: tuple[str, ...] = grading.METRICS
BACKENDS: tuple[str, ...] = ("hf", "vllm")
PASS_AT_K: tuple[int, ...] = (1, 2, 4, 8, 16)

SYNTHETIC_BENCHMARKS: tuple[str, ...] = tuple(b for b in data.BENCHMARKS if b.startswith("synthetic"))
REAL_BENCHMARKS: tuple[str, ...] = tuple(b for b in data.BENCHMARKS if not b.startswith("synthetic"))
# The paper's evaluation set (v1): GSM8K plus the cross-dataset generalisation benchmarks.
PAPER_BENCHMARKS: tuple[str, ...] = ("gsm8k", "svamp", "asdiv", "math500")
BENCHMARK_GROUPS: dict[str, tuple[str, ...]] = {
    "all": REAL_BENCHMARKS,
    "paper": PAPER_BENCHMARKS,
    "synthetic-all": SYNTHETIC_BENCHMARKS,
}
ALIASES: dict[str, str] = {"math-500": "math500", "gsm-8k": "gsm8k"}

# Per-benchmark generation budgets (new tokens), used unless ``max_new_tokens`` is given.
# - GSM8K-like word problems: 128, the paper's budget (training and evaluation).
# - MATH / MATH-500: 1024. MATH solutions are long (the authors' 128 would cut most): with SmolLM2's BPE tokenizer
#   the MATH-500 reference solutions have a median of 173 tokens; 63% exceed 128, 9% exceed 512 and
#   0.4% exceed 1024. 1024 fits 99.6% of the references while bounding the cost of degenerate,
#   repeating completions (which run to the limit).
# - Synthetic: 64; tiny character-level models, whose reference solutions are at most ~50 characters.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "gsm8k": 128,
    "svamp": 128,
    "asdiv": 128,
    "math": 1024,
    "math500": 1024,
    "synthetic": 64,
    "synthetic-svamp": 64,
    "synthetic-asdiv": 64,
}
# Metadata keys that name a problem's category, for per-category accuracy in the summary.
CATEGORY_KEYS: dict[str, tuple[str, ...]] = {
    "svamp": ("type",),
    "asdiv": ("solution_type",),
    "math": ("subject", "level"),
    "math500": ("subject", "level"),
    # transfer: how many steps use a template the warm-start teacher can get wrong
    "synthetic": ("transfer", "n_ops"),
    "synthetic-svamp": ("transfer", "variant"),
    "synthetic-asdiv": ("transfer", "variant"),
}
WILSON_Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


# ---------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when ``n == 0``.

    Preferred over the normal approximation because it stays inside [0, 1] and behaves at 0% / 100%.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not 1e-17 of rounding
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)``.

    The probability that at least one of ``k`` samples drawn without replacement from ``n`` samples,
    ``c`` of them correct, is correct. Computed as a product to avoid huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of a representative of the most frequent answer, or None when no answer was extracted.

    Answers are grouped with ``same`` (an equivalence such as numeric equality with tolerance), so
    "12", "12.0" and "12.00" count as one vote. Missing answers (None) do not vote. Ties go to the
    group whose first member comes first, which keeps the vote deterministic.
    """
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if same(answers[group[0]], answer):  # type: ignore[arg-type]
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)  # max keeps the first of equal-sized groups
    return best[0]


def answers_equivalent(a: str, b: str, kind: str) -> bool:
    """Whether two extracted answers are the same answer, by the graders' own comparison.

    ``a`` is written in the strict format (``#### a``, or ``\\boxed{a}`` for LaTeX) and strictly graded
    against ``b`` as the gold, so numbers compare with the graders' tolerance and LaTeX by equivalence:
    majority vote and accuracy agree on what "the same answer" means.
    """
    if a.strip() == b.strip():
        return True
    probe = f"\\boxed{{{a}}}" if kind == "latex" else f"#### {a}"
    return grading.score(probe, b, kind).strict


# ---------------------------------------------------------------- backends


@dataclass
class Generation:
    """The ``n`` completions of one prompt, their lengths in tokens, and whether each hit the limit."""

    texts: list[str]
    num_tokens: list[int]
    truncated: list[bool]


class Backend(Protocol):
    """What the evaluator needs from a generation engine."""

    name: str
    tokenizer: Any
    chunk_size: int  # prompts per generate() call between two writes of the records

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]: ...


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos id and every eos id of the model's generation
    config, the rule of TRL's ``GRPOTrainer`` for its rollouts (``self.eos_token_ids``), so that a model is
    evaluated on completions cut where its training completions were cut.

    For the Qwen base models that is ``<|endoftext|>`` only, which is also where the authors' evaluation
    stopped: a ``<|im_end|>`` such a model writes does not end its completion, in training or here.
    """
    eos = getattr(generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids if i is not None})


# Below this many parameters a forward pass is a handful of tiny matrix products: splitting them over
# threads costs more in synchronisation than it gains.
SINGLE_THREAD_PARAMS = 20_000_000


def cpu_threads(n_params: int) -> int:
    """Intra-op threads for CPU generation.

    OpenMP threads wait for each other at every matrix product, so a thread that has no free core to
    run on stalls all of them: on a 2-core machine already running ~3 busy processes, SmolLM2 decoding
    took 4.7 s per step with 2 threads and 0.18 s with 1. So: 1 thread for tiny models; otherwise
    torch's default (physical cores) capped at the CPUs this process may use and at the cores left idle
    by the current load average. An explicit OMP_NUM_THREADS is obeyed as is.
    """
    import torch

    if n_params < SINGLE_THREAD_PARAMS:
        return 1
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        allowed = os.cpu_count() or 1
    try:
        idle = round(allowed - os.getloadavg()[0])
    except OSError:  # pragma: no cover - load average unavailable
        idle = allowed
    return max(1, min(torch.get_num_threads(), allowed, idle))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block only (the setting is process-wide)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HFBackend:
    """transformers ``generate``: batched, left-padded, KV cache, under ``torch.inference_mode``."""

    name = "hf"

    def __init__(self, source: models.ModelSource, batch_size: int = 32, device: str | None = None) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = models.load_tokenizer(source)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = _load_model(source, dtype=dtype, device=self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.threads = cpu_threads(n_params) if self.device == "cpu" else None
        self.batch_size = batch_size
        self.chunk_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]:
        import torch
        from transformers import GenerationConfig

        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_ids,
            # top_k=0 disables HF's default top-k of 50, so sampling is plain temperature + top-p
            # (as in vLLM and TRL's rollouts).
            **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {}),
        )
        per_call = max(1, self.batch_size // n)  # batch_size counts sequences, not prompts
        results: list[Generation] = []
        for start in range(0, len(prompts), per_call):
            batch = list(prompts[start : start + per_call])
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            if sampling:
                torch.manual_seed(seed + start)
            with torch.inference_mode(), _torch_threads(self.threads):
                out = self.model.generate(**enc, generation_config=config)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for row in range(len(batch)):
                texts, lengths, cut = [], [], []
                for ids in new[row * n : (row + 1) * n]:
                    end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
                    body = ids if end is None else ids[:end]
                    texts.append(self.tokenizer.decode(body, skip_special_tokens=True))
                    lengths.append(len(body))
                    cut.append(end is None)  # no stop token within max_new_tokens
                results.append(Generation(texts, lengths, cut))
        return results


class VLLMBackend:
    """vLLM ``LLM.generate`` (GPU). Prompts go in as token ids from our tokenizer, so both backends
    see exactly the same tokens (no second BOS from vLLM's own tokenisation)."""

    name = "vllm"

    def __init__(self, source: models.ModelSource, seed: int = 0, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' "
                "(or use --backend hf)"
            ) from exc
        self._vllm = vllm
        self.tokenizer = models.load_tokenizer(source)
        model = str(Path(source.path) / source.gguf_file) if source.gguf_file else source.path
        # For a GGUF file vLLM reads the tokenizer from the same file.
        self.llm = vllm.LLM(model=model, tokenizer=model, seed=seed, **llm_kwargs)
        self.chunk_size = 512  # vLLM schedules its own batches; this only sets how often records are saved
        self.stop_ids = stop_token_ids(
            self.tokenizer, getattr(self.llm.llm_engine, "generation_config", None)
        )

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Generation]:
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        params = [
            self._vllm.SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_new_tokens,
                seed=seed + i,  # one stream per prompt: samples do not depend on batching
                stop_token_ids=self.stop_ids,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        results = []
        for request in outputs:
            texts, lengths, cut = [], [], []
            for completion in sorted(request.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                if tokens and completion.finish_reason == "stop" and tokens[-1] in self.stop_ids:
                    tokens = tokens[:-1]  # count the completion's own tokens, as the hf backend does
                texts.append(completion.text)
                lengths.append(len(tokens))
                cut.append(completion.finish_reason == "length")
            results.append(Generation(texts, lengths, cut))
        return results


def _load_model(source: models.ModelSource, dtype: Any, device: str) -> Any:
    """``models.load_model`` with a clear error when a hub-like id is neither a folder nor available."""
    try:
        return models.load_model(source, dtype=dtype, device=device)
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load model {source.path!r}: it is not an existing folder and not an available hub "
            f"model ({type(exc).__name__}: {exc})"
        ) from exc


def make_backend(
    backend: str, model: str | Path, *, batch_size: int = 32, seed: int = 0, device: str | None = None
) -> Backend:
    """The generation backend ``backend`` for model specification ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    source = models.resolve(model)
    if backend == "vllm":
        return VLLMBackend(source, seed=seed)
    return HFBackend(source, batch_size=batch_size, device=device)


# ---------------------------------------------------------------- benchmark names


def parse_benchmarks(text: str) -> list[str]:
    """Comma-separated benchmark names or groups -> names, deduplicated, in order.

    Groups: ``all`` (every real benchmark), ``paper`` (GSM8K, SVAMP, ASDiv, MATH-500) and
    ``synthetic-all`` (the synthetic sets). Unknown names raise a ValueError listing the known ones.
    """
    names: list[str] = []
    for part in str(text).split(","):
        key = part.strip().lower()
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key in BENCHMARK_GROUPS:
            names += BENCHMARK_GROUPS[key]
        elif key in data.BENCHMARKS:
            names.append(key)
        else:
            raise ValueError(
                f"unknown benchmark {part.strip()!r}; known benchmarks: {', '.join(data.BENCHMARKS)}; "
                f"groups: {', '.join(BENCHMARK_GROUPS)}"
            )
    if not names:
        raise ValueError(f"no benchmark given in {text!r}; known benchmarks: {', '.join(data.BENCHMARKS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- record files


def read_records(path: Path) -> list[dict]:
    """The complete records of a ``.jsonl`` file. A last line without its newline is a write cut short
    and is ignored (it is truncated away before the next append); a bad complete line is an error."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({exc.msg}); fix or delete the file"
            ) from exc
    return records


def _drop_partial_line(path: Path) -> None:
    """Cut a trailing partial line so the next append starts on a fresh line."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw):
        with path.open("r+b") as handle:
            handle.truncate(keep)


def append_records(path: Path, records: Iterable[dict]) -> None:
    """Append whole lines and fsync, so a crash loses at most the batch being written."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Readers see the old summary or the whole new one (temporary file + ``os.replace``)."""
    rundir.atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- grading and summaries


def grade_record(record: dict) -> list[dict]:
    """Grades (``Grade.as_dict()``) of every completion of a record, recomputed from its text."""
    return [grading.score(c, record["gold"], record["kind"]).as_dict() for c in record["completions"]]


def summarize_benchmark(records: Sequence[dict]) -> dict:
    """Summary statistics of one benchmark's records (see the module docstring)."""
    n_problems = len(records)
    n = len(records[0]["completions"]) if records else 0
    lengths = [t for r in records for t in r["num_tokens"]]
    cut = [c for r in records for c in r["truncated"]]
    out: dict[str, Any] = {
        "n_problems": n_problems,
        "n_samples": n,
        "mean_completion_tokens": sum(lengths) / len(lengths) if lengths else None,
        "truncated_fraction": sum(cut) / len(cut) if cut else None,
        "metrics": {},
    }
    for metric in METRICS:
        first = sum(bool(r["grades"][0][metric]) for r in records)
        lo, hi = wilson_interval(first, n_problems)
        entry: dict[str, Any] = {
            "accuracy": first / n_problems if n_problems else None,
            "correct": first,
            "ci95": [lo, hi],
        }
        if n > 1:
            counts = [sum(bool(g[metric]) for g in r["grades"]) for r in records]
            entry["mean_sample_accuracy"] = sum(counts) / (n * n_problems) if n_problems else None
            entry["pass_at_k"] = {
                str(k): sum(pass_at_k(n, c, k) for c in counts) / n_problems if n_problems else None
                for k in PASS_AT_K
                if k <= n
            }
            # Permissive grading searches for the gold rather than extracting one answer, so its
            # "answers" exist only for correct completions: a vote over them would be pass@n.
            if metric != "permissive":
                votes = [_majority_correct(r, metric) for r in records]
                entry["majority_vote"] = sum(votes) / n_problems if n_problems else None
        out["metrics"][metric] = entry
    categories = _category_accuracy(records)
    if categories:
        out["categories"] = categories
    return out


def _majority_correct(record: dict, metric: str) -> bool:
    """Whether the majority answer under ``metric`` (extracted answers, grouped by equivalence) is right."""
    answers = [g.get(f"{metric}_answer") for g in record["grades"]]
    winner = majority_vote(answers, lambda a, b: answers_equivalent(a, b, record["kind"]))
    return winner is not None and bool(record["grades"][winner][metric])


def _category_accuracy(records: Sequence[dict]) -> dict:
    """First-completion accuracy per metric within each category (SVAMP type, MATH subject/level...)."""
    keys = CATEGORY_KEYS.get(records[0]["benchmark"], ()) if records else ()
    result: dict[str, dict] = {}
    for key in keys:
        table: dict[str, dict] = {}
        for r in records:
            value = str(r["metadata"].get(key))
            cell = table.setdefault(value, {"n": 0, **{m: 0 for m in METRICS}})
            cell["n"] += 1
            for m in METRICS:
                cell[m] += bool(r["grades"][0][m])
        result[key] = {
            value: {"n": cell["n"], **{m: cell[m] / cell["n"] for m in METRICS}}
            for value, cell in sorted(table.items())
        }
    return result


def summary_table(summary: dict) -> str:
    """A plain-text table of a summary: accuracy [95% CI] per metric, length, truncation, pass@k/vote."""
    rows = []
    header = f"{'benchmark':<16} {'n':>5} {'tokens':>6}"
    header += "".join(f" | {m:>19}" for m in METRICS) + f" | {'mean len':>8} {'cut':>5}"
    rows.append(header)
    rows.append("-" * len(header))
    for name, entry in summary.get("benchmarks", {}).items():
        line = f"{name:<16} {entry['n_problems']:>5} {entry['max_new_tokens']:>6}"
        for metric in METRICS:
            m = entry["metrics"][metric]
            acc = "   n/a" if m["accuracy"] is None else f"{100 * m['accuracy']:5.1f}%"
            line += f" | {acc} [{100 * m['ci95'][0]:4.1f},{100 * m['ci95'][1]:5.1f}]"
        mean_len = entry["mean_completion_tokens"]
        cut = entry["truncated_fraction"]
        line += f" | {mean_len or 0:8.1f} {100 * (cut or 0):4.0f}%"
        rows.append(line)
        for metric in METRICS:
            m = entry["metrics"][metric]
            if "pass_at_k" in m:
                ks = " ".join(f"pass@{k} {100 * v:.1f}%" for k, v in m["pass_at_k"].items())
                vote = f", majority vote {100 * m['majority_vote']:.1f}%" if "majority_vote" in m else ""
                rows.append(f"{'':<16}   {metric}: {ks}{vote}")
    return "\n".join(rows)


# ---------------------------------------------------------------- the evaluation loop


def evaluate(
    model: str | Path,
    benchmarks: Sequence[str] | str,
    out_dir: str | Path,
    *,
    backend: str = "hf",
    limit: int | None = None,
    temperature: float = 0.0,
    n_samples: int = 1,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    data_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    system_prompt: str | None = None,
) -> dict:
    """Evaluate ``model`` on ``benchmarks`` and write records and summary under ``<out_dir>/eval/``.

    ``model``: a specification understood by :func:`pspo_repro.models.resolve` (tiny model name,
    ``smollm2``, run directory, model folder, hub id). ``benchmarks``: names, or a string for
    :func:`parse_benchmarks`. ``limit``: the first N problems of each benchmark. ``max_new_tokens``:
    one budget for all benchmarks, else :data:`DEFAULT_MAX_NEW_TOKENS`. ``batch_size``: sequences per
    forward pass (hf backend). Records already present with the same settings are kept (resume); other
    settings raise a ValueError unless ``overwrite`` deletes the old records. ``system_prompt``: the
    system message's style (:mod:`pspo_repro.prompts`); default: the run's own when ``model`` is a run
    directory, so a model is evaluated with the prompt it was trained with, else ``default``.
    Returns the summary.
    """
    names = (
        parse_benchmarks(benchmarks)
        if isinstance(benchmarks, str)
        else parse_benchmarks(",".join(benchmarks))
    )
    _check_settings(backend, limit, temperature, n_samples, top_p, max_new_tokens, batch_size)
    system_prompt = system_prompt if system_prompt is not None else run_system_prompt(model)
    prompts.check_system_prompt(system_prompt)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(
            f"benchmark data folder {str(data_dir)!r} does not exist; point data_dir / --data-dir at the folder "
            "holding gsm8k/, MATH/, MATH-500/, SVAMP/, ASDiv/"
        )
    # Everything cheap is checked before the (slow) model load: data, then the model specification.
    problems = {name: data.load(name, "test", data_dir=data_dir, limit=limit) for name in names}
    if backend == "vllm":
        _require_vllm()
    models.resolve(model)  # a missing model path fails here, before any file is written

    eval_dir = Path(out_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    summary_path = eval_dir / "summary.json"
    settings = {
        "model": str(model),
        "backend": backend,
        "temperature": temperature,
        "top_p": top_p,
        "n_samples": n_samples,
        "seed": seed,
        "system_prompt": system_prompt,
    }

    engine: Backend | None = None
    entries: dict[str, dict] = {}
    for name in names:
        budget = max_new_tokens if max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS[name]
        bench_settings = {**settings, "max_new_tokens": budget}
        path = eval_dir / f"{name}.jsonl"
        done = _existing_records(path, bench_settings, overwrite)
        todo = [p for p in problems[name] if p.id not in done]
        if todo:
            if engine is None:
                engine = make_backend(backend, model, batch_size=batch_size, seed=seed)
            started = time.perf_counter()
            new = _run_benchmark(
                engine, name, todo, bench_settings, path, progress, total=len(problems[name])
            )
            elapsed = time.perf_counter() - started
            done.update((r["id"], r) for r in new)
        else:
            elapsed = None
        records = [done[p.id] for p in problems[name]]
        entries[name] = {
            **summarize_benchmark(records),
            "max_new_tokens": budget,
            "settings": bench_settings,
            "generation_seconds": elapsed,
            "generated_problems": len(todo),
        }
        write_json_atomic(
            summary_path, _merged_summary(summary_path, settings, max_new_tokens, limit, entries)
        )
    return _merged_summary(summary_path, settings, max_new_tokens, limit, entries)


def run_system_prompt(model: str | Path) -> str:
    """The system prompt a run directory was trained with (its ``config.json``), else ``default``."""
    config = Path(model) / "config.json"
    if (Path(model) / "checkpoint").is_dir() and config.is_file():
        return rundir.read_json(config).get("system_prompt", prompts.DEFAULT)
    return prompts.DEFAULT


def _check_settings(
    backend: str,
    limit: int | None,
    temperature: float,
    n_samples: int,
    top_p: float,
    max_new_tokens: int | None,
    batch_size: int,
) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples!r}")
    if temperature == 0 and n_samples > 1:
        raise ValueError(f"n_samples={n_samples} needs temperature > 0: greedy decoding gives one completion")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer or None, got {max_new_tokens!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")


def _require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "backend 'vllm' needs vLLM, which needs a CUDA GPU: pip install 'pspo-repro[vllm]' (or use --backend hf)"
        )


def _existing_records(path: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Records already in ``path`` by id; an error when they were made with other settings."""
    if overwrite and path.exists():
        path.unlink()
    _drop_partial_line(path)
    done: dict[str, dict] = {}
    for record in read_records(path):
        # records from before the system prompt was a setting were made with the default one
        made_with = {"system_prompt": prompts.DEFAULT, **record.get("settings", {})}
        if made_with != settings:
            diff = {k: (made_with.get(k), v) for k, v in settings.items() if made_with.get(k) != v}
            raise ValueError(
                f"{path} holds records made with other settings ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                "use another output folder, or overwrite=True (--overwrite) to discard them"
            )
        done.setdefault(record["id"], _current_grades(record))
    return done


def _current_grades(record: dict) -> dict:
    """The record, graded again from its completions when it predates one of the metrics."""
    if all(m in g for g in record["grades"] for m in METRICS):
        return record
    return {**record, "grades": grade_record(record)}


def _run_benchmark(
    engine: Backend,
    name: str,
    todo: list[data.Problem],
    settings: dict,
    path: Path,
    progress: bool,
    total: int | None = None,
) -> list[dict]:
    """Generate, grade and append the records of ``todo``; longest prompts first (less padding per
    batch, and an out-of-memory error shows at once)."""
    from tqdm.auto import tqdm

    texts = [
        prompts.render_prompt(engine.tokenizer, p.question, p.kind, settings["system_prompt"]) for p in todo
    ]
    lengths = [len(ids) for ids in engine.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(todo)), key=lambda i: -lengths[i])
    written: list[dict] = []
    total = total or len(todo)
    bar = tqdm(
        total=total, initial=total - len(todo), desc=f"eval {name}", unit="problem", disable=not progress
    )
    try:
        for start in range(0, len(order), engine.chunk_size):
            chunk = order[start : start + engine.chunk_size]
            # A seed per chunk, derived from its first problem, so samples differ across chunks.
            chunk_seed = zlib.crc32(f"{settings['seed']}:{todo[chunk[0]].id}".encode())
            generations = engine.generate(
                [texts[i] for i in chunk],
                n=settings["n_samples"],
                temperature=settings["temperature"],
                top_p=settings["top_p"],
                max_new_tokens=settings["max_new_tokens"],
                seed=chunk_seed,
            )
            records = [
                _record(todo[i], texts[i], g, settings) for i, g in zip(chunk, generations, strict=True)
            ]
            append_records(path, records)
            written += records
            bar.update(len(chunk))
    finally:
        bar.close()
    return written


def _record(problem: data.Problem, prompt: str, generation: Generation, settings: dict) -> dict:
    record = {
        "id": problem.id,
        "benchmark": problem.benchmark,
        "kind": problem.kind,
        "gold": problem.answer,
        "prompt": prompt,
        "completions": generation.texts,
        "num_tokens": generation.num_tokens,
        "truncated": generation.truncated,
        "metadata": problem.metadata,
        "settings": settings,
    }
    record["grades"] = grade_record(record)
    return record


def _merged_summary(
    path: Path, settings: dict, max_new_tokens: int | None, limit: int | None, entries: dict[str, dict]
) -> dict:
    """This call's benchmarks over those of earlier calls into the same folder (each keeps its settings)."""
    previous: dict[str, dict] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("benchmarks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    return {
        "settings": {**settings, "max_new_tokens": max_new_tokens, "limit": limit},
        "provenance": rundir.provenance(settings.get("seed")),
        "benchmarks": {**previous, **entries},
    }
