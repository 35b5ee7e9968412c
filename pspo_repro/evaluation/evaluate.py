"""The evaluation loop: generate completions for benchmark problems, grade them, and summarise.

Greedy decoding (temperature 0) gives the headline accuracy; sampling (temperature > 0, ``n_samples``
per problem) adds pass@k and majority-vote accuracy. Every completion is graded under the four
metrics of ``pspo_repro.evaluation.grading`` (strict, flexible, permissive, and the paper's own grading).

Outputs, in ``<out_dir>/eval/``:

- ``<benchmark>.jsonl``: one line per problem (prompt, completions, token counts, truncation flags,
  per-completion grades with the answer each metric extracted, gold, metadata, settings). Lines are
  appended and fsync'ed as they are made (``rundir.append_jsonl``), so an interrupted evaluation resumes
  from the problems already recorded; a trailing partial line (a write cut short) is dropped.
- ``summary.json``: per benchmark and metric, accuracy with a Wilson 95% interval, mean completion
  length, fraction cut at the token limit, per-category accuracy, and pass@k / majority vote when
  ``n_samples > 1``; written atomically (temporary file + ``os.replace``).

Generation is done by a backend of :mod:`pspo_repro.evaluation.backends` (``hf`` or ``vllm``); the statistics
(Wilson intervals, pass@k, majority vote) are those of :mod:`pspo_repro.evaluation.stats`.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pspo_repro.data import loaders, prompts
from pspo_repro.evaluation import backends, grading
from pspo_repro.evaluation.backends import BACKENDS, Backend, make_backend, require_vllm
from pspo_repro.evaluation.stats import majority_vote, pass_at_k, wilson_interval
from pspo_repro.models import loading
from pspo_repro.models.generation import Generation
from pspo_repro.study import rundir

METRICS: tuple[str, ...] = grading.METRICS
PASS_AT_K: tuple[int, ...] = (1, 2, 4, 8, 16)

SYNTHETIC_BENCHMARKS: tuple[str, ...] = tuple(b for b in loaders.BENCHMARKS if b.startswith("synthetic"))
REAL_BENCHMARKS: tuple[str, ...] = tuple(b for b in loaders.BENCHMARKS if not b.startswith("synthetic"))
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
# - Synthetic: 64; the tiny models' reference solutions are at most about 25 tokens (one per word, digit, sign).
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


# ---------------------------------------------------------------- answers


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
        elif key in loaders.BENCHMARKS:
            names.append(key)
        else:
            raise ValueError(
                f"unknown benchmark {part.strip()!r}; known benchmarks: {', '.join(loaders.BENCHMARKS)}; "
                f"groups: {', '.join(BENCHMARK_GROUPS)}"
            )
    if not names:
        raise ValueError(f"no benchmark given in {text!r}; known benchmarks: {', '.join(loaders.BENCHMARKS)}")
    return list(dict.fromkeys(names))


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
    system message's style (:mod:`pspo_repro.data.prompts`); default: the run's own when ``model`` is a run
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
    problems = {name: loaders.load(name, "test", data_dir=data_dir, limit=limit) for name in names}
    if backend == "vllm":
        require_vllm()
    loading.resolve(model)  # a missing model path fails here, before any file is written

    eval_dir = Path(out_dir) / rundir.EVAL
    eval_dir.mkdir(parents=True, exist_ok=True)
    summary_path = eval_dir / rundir.SUMMARY
    settings = {
        "model": str(model),
        "backend": backend,
        "temperature": temperature,
        "top_p": top_p,
        "n_samples": n_samples,
        "seed": seed,
        "system_prompt": system_prompt,
    }

    # the precision the run was validated at (pspo_repro.models.precision), recorded in the summary
    bf16 = run_bf16(model)
    numerics = backends.precision_record(backend, bf16)
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
                engine = make_backend(backend, model, batch_size=batch_size, seed=seed, bf16=bf16)
            new = _run_benchmark(
                engine, name, todo, bench_settings, path, progress, total=len(problems[name])
            )
            done.update((r["id"], r) for r in new)
        records = [done[p.id] for p in problems[name]]
        # the records' own shares (records written before they carried one count as unknown: None)
        shares = [r.get("generation_seconds") for r in records]
        elapsed = round(sum(shares), 3) if shares and None not in shares else None
        entries[name] = {
            **summarize_benchmark(records),
            "max_new_tokens": budget,
            "settings": bench_settings,
            "generation_seconds": elapsed,
            "generated_problems": len(todo),
            "precision": numerics,
        }
        rundir.atomic_write_json(  # benchmarks keep their order: it is the tables' row order
            summary_path,
            _merged_summary(summary_path, settings, max_new_tokens, limit, entries, numerics),
            sort_keys=False,
        )
    return _merged_summary(summary_path, settings, max_new_tokens, limit, entries, numerics)


def run_system_prompt(model: str | Path) -> str:
    """The system prompt a run directory was trained with (its ``config.json``), else ``default``."""
    config = Path(model) / "config.json"
    if (Path(model) / "checkpoint").is_dir() and config.is_file():
        return rundir.read_json(config).get("system_prompt", prompts.DEFAULT)
    return prompts.DEFAULT


def run_bf16(model: str | Path) -> bool | None:
    """A run directory's ``bf16`` setting (None: the device's default), else None."""
    config = Path(model) / "config.json"
    if (Path(model) / "checkpoint").is_dir() and config.is_file():
        return rundir.read_json(config).get("bf16")
    return None


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


def _existing_records(path: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Records already in ``path`` by id; an error when they were made with other settings."""
    if overwrite and path.exists():
        path.unlink()
    done: dict[str, dict] = {}
    for record in rundir.read_jsonl(path):
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
    todo: list[loaders.Problem],
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
            started = time.perf_counter()
            generations = engine.generate(
                [texts[i] for i in chunk],
                n=settings["n_samples"],
                temperature=settings["temperature"],
                top_p=settings["top_p"],
                max_new_tokens=settings["max_new_tokens"],
                seed=chunk_seed,
            )
            # each record carries its share of the chunk's generation time, so that a summary rebuilt from
            # the records still knows what generating them cost
            share = (time.perf_counter() - started) / len(chunk)
            records = [
                _record(todo[i], texts[i], g, settings, share)
                for i, g in zip(chunk, generations, strict=True)
            ]
            for record in records:
                rundir.append_jsonl(path, record)
            written += records
            bar.update(len(chunk))
    finally:
        bar.close()
    return written


def _record(
    problem: loaders.Problem, prompt: str, generation: Generation, settings: dict, seconds: float
) -> dict:
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
        "generation_seconds": round(seconds, 6),
    }
    record["grades"] = grade_record(record)
    return record


def _merged_summary(
    path: Path,
    settings: dict,
    max_new_tokens: int | None,
    limit: int | None,
    entries: dict[str, dict],
    numerics: dict,
) -> dict:
    """This call's benchmarks over those of earlier calls into the same folder (each keeps its settings)."""
    previous: dict[str, dict] = {}
    if path.is_file():
        try:
            previous = rundir.read_json(path).get("benchmarks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    return {
        "settings": {**settings, "max_new_tokens": max_new_tokens, "limit": limit, "precision": numerics},
        "provenance": rundir.provenance(settings.get("seed")),
        "benchmarks": {**previous, **entries},
    }
