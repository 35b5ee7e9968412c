"""Benchmark loaders that turn every data set into one record shape, `Problem`.

Local files (the layout of the shared data folder: ``gsm8k/``, ``MATH/``, ``MATH-500/``, ``SVAMP/``,
``ASDiv/``) are read when a data directory is given or ``PSPO_DATA_DIR`` is set; otherwise the Hugging
Face hub copies named in the paper are used. Synthetic benchmarks are generated, never read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pspo_repro.data import synthetic
from pspo_repro.data.problem import Problem

__all__ = ["BENCHMARKS", "Problem", "load"]

DATA_DIR_ENV = "PSPO_DATA_DIR"

BENCHMARKS: tuple[str, ...] = (
    "gsm8k",
    "math",
    "math500",
    "svamp",
    "asdiv",
    "synthetic",
    "synthetic-svamp",
    "synthetic-asdiv",
)
SPLITS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("train", "test"),
    "math": ("train", "test"),
    "math500": ("test",),
    "svamp": ("test",),
    "asdiv": ("test",),
    "synthetic": ("train", "validation", "test"),
    "synthetic-svamp": ("test",),
    "synthetic-asdiv": ("test",),
}
# Grading path per benchmark: numbers compared numerically, or LaTeX expressions checked for equivalence.
KINDS: dict[str, str] = {name: "latex" if name.startswith("math") else "numeric" for name in BENCHMARKS}

MATH_SUBJECTS: tuple[str, ...] = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

# Hub copies used when no local folder is configured (the data sets named by the paper, arXiv 2509.21282). The full MATH set is the
# EleutherAI mirror of the original release, one config per subject with the release's fields.
HUB_IDS: dict[str, str] = {
    "gsm8k": "openai/gsm8k",
    "math": "EleutherAI/hendrycks_math",
    "math500": "HuggingFaceH4/MATH-500",
    "svamp": "ChilleD/SVAMP",
    "asdiv": "EleutherAI/asdiv",
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data folder: the argument, else ``$PSPO_DATA_DIR``, else None (meaning: the hub)."""
    source = "the data_dir argument"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        source = f"${DATA_DIR_ENV}"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark data folder {str(path)!r} (from {source}) does not exist; point --data-dir "
            f"or {DATA_DIR_ENV} at the folder holding gsm8k/, MATH/, MATH-500/, SVAMP/, ASDiv/"
        )
    return path


def load(
    name: str, split: str = "test", data_dir: str | Path | None = None, limit: int | None = None
) -> list[Problem]:
    """Problems of benchmark ``name`` and ``split``, in a fixed order, optionally the first ``limit``."""
    if name not in SPLITS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"benchmark {name!r} has no split {split!r}; its splits: {', '.join(SPLITS[name])}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    if name.startswith("synthetic"):
        synthetic_split = split if name == "synthetic" else f"{split}-{name.removeprefix('synthetic-')}"
        return synthetic.generate(synthetic_split, n=limit)
    root = resolve_data_dir(data_dir)
    records = _LOCAL_LOADERS[name](root, split) if root is not None else _load_hub(name, split)
    if limit is not None:
        records = records[:limit]
    # Records are cached: hand out copies so that callers cannot alter the cache through metadata.
    return [dataclasses.replace(p, metadata=dict(p.metadata)) for p in records]


def gsm8k_train_validation(
    seed: int, data_dir: str | Path | None = None, n_validation: int = 472, n_train: int = 7000
) -> tuple[list[Problem], list[Problem]]:
    """The authors' split: GSM8K train shuffled by the run seed, the first ``n_train`` problems for
    training and the next ``n_validation`` for validation.

    The permutation is ``numpy.random.default_rng(seed).permutation(n)``, which is exactly what
    ``datasets.Dataset.shuffle(seed=seed)`` applies, so it matches a script that shuffles the hub copy.
    GSM8K train has 7,473 problems, so the paper's 7,000 + 472 leaves one shuffled problem unused.
    """
    import numpy as np

    train = load("gsm8k", "train", data_dir=data_dir)
    if n_train < 1 or n_validation < 1 or n_train + n_validation > len(train):
        raise ValueError(
            f"n_train ({n_train}) and n_validation ({n_validation}) must be positive "
            f"and sum to at most {len(train)}, the size of GSM8K train"
        )
    order = np.random.default_rng(seed).permutation(len(train)).tolist()
    return [train[i] for i in order[:n_train]], [train[i] for i in order[n_train : n_train + n_validation]]


# ---------------------------------------------------------------- answer helpers


def _gsm8k_answer(text: str) -> str:
    """The gold number after ``####``, without thousands separators."""
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def _format_number(value: float) -> str:
    """``51.0`` -> ``"51"``; non-integral values keep their shortest repr (``"2.5"``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_NUMBER = r"-?\d+(?:\.\d+)?"
_ASDIV_SINGLE = re.compile(rf"^({_NUMBER})\s*(?:\(.*\))?$")
_ASDIV_FRACTION = re.compile(r"^(-?)\(?(\d+)/(\d+)\)?$")


def _asdiv_answer(raw: str) -> tuple[str, bool]:
    """ASDiv's "9 (apples)" -> ("9", True); fractions as "a/b"; ratios, times, names, several answers:
    the raw text and False."""
    text = raw.strip()
    if match := _ASDIV_SINGLE.match(text):
        return match.group(1), True
    if match := _ASDIV_FRACTION.match(text.replace(" ", "")):
        sign, num, den = match.groups()
        return f"{sign}{num}/{den}", True
    return text, False


def _math_level(level: Any) -> int | None:
    """Level 3 -> 3; the release's "Level ?" (and anything else unparsable) -> None."""
    if isinstance(level, int):
        return level
    match = re.fullmatch(r"Level (\d+)", str(level).strip())
    return int(match.group(1)) if match else None


def _boxed_answer(solution: str) -> str:
    from pspo_repro.evaluation.grading import extract_boxed

    answer = extract_boxed(solution)
    return answer if answer is not None else ""


# ---------------------------------------------------------------- record builders (shared by local and hub)


def _gsm8k_problem(split: str, index: int, row: dict) -> Problem:
    return Problem(
        id=f"{split}-{index:04d}",
        question=row["question"].strip(),
        answer=_gsm8k_answer(row["answer"]),
        benchmark="gsm8k",
        kind="numeric",
        solution=row["answer"],
    )


def _math_problem(pid: str, row: dict, benchmark: str = "math") -> Problem:
    metadata = {"subject": row["type"], "level": _math_level(row["level"])}
    if metadata["level"] is None:
        metadata["level_raw"] = row["level"]
    answer = _boxed_answer(row["solution"])
    if not answer:  # two train solutions of the original release box nothing: "\boxed{}"
        metadata["answer_missing"] = True
    return Problem(
        id=pid,
        question=row["problem"].strip(),  # some train problems end in a newline
        answer=answer,
        benchmark=benchmark,
        kind="latex",
        solution=row["solution"],
        metadata=metadata,
    )


def _math500_problem(row: dict) -> Problem:
    return Problem(
        id=row["unique_id"],
        question=row["problem"].strip(),
        answer=row["answer"],
        benchmark="math500",
        kind="latex",
        solution=row["solution"],
        metadata={"subject": row["subject"], "level": _math_level(row["level"])},
    )


def _svamp_problem(row: dict) -> Problem:
    return Problem(
        id=row["ID"],
        question=f"{row['Body'].strip()} {row['Question'].strip()}",
        answer=_format_number(row["Answer"]),
        benchmark="svamp",
        kind="numeric",
        metadata={"type": row["Type"], "equation": row["Equation"].strip()},
    )


def _asdiv_problem(pid: str, body: str, question: str, raw_answer: str, metadata: dict) -> Problem:
    answer, numeric = _asdiv_answer(raw_answer)
    return Problem(
        id=pid,
        question=f"{body.strip()} {question.strip()}",
        answer=answer,
        benchmark="asdiv",
        kind="numeric",
        metadata={**metadata, "answer_raw": raw_answer, "answer_is_numeric": numeric},
    )


# ---------------------------------------------------------------- local files


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark file {str(path)!r} not found; point --data-dir or {DATA_DIR_ENV} at a folder "
            f"with the layout of the shared data folder (gsm8k/, MATH/, MATH-500/, SVAMP/, ASDiv/)"
        )
    return path


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(0-based line index, object) for every non-blank line; bad JSON names the file and line."""
    rows = []
    with _require_file(path).open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                rows.append((index, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {index + 1} is not valid JSON ({exc.msg})") from exc
    return rows


def _checked(path: Path, line: int, row: Any, keys: tuple[str, ...]) -> dict:
    missing = [k for k in keys if not isinstance(row, dict) or k not in row]
    if missing:
        raise ValueError(f"{path}: line {line} lacks field(s) {', '.join(missing)}")
    return row


@functools.lru_cache(maxsize=32)
def _local_gsm8k(root: Path, split: str) -> tuple[Problem, ...]:
    path = root / "gsm8k" / f"{split}.jsonl"
    problems = []
    for index, row in _read_jsonl(path):
        _checked(path, index + 1, row, ("question", "answer"))
        if "####" not in row["answer"]:
            raise ValueError(f"{path}: line {index + 1} has no '#### <answer>' in its answer field")
        problems.append(_gsm8k_problem(split, index, row))
    return tuple(problems)


@functools.lru_cache(maxsize=32)
def _local_math(root: Path, split: str) -> tuple[Problem, ...]:
    folder = root / "MATH" / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"benchmark folder {str(folder)!r} not found; point --data-dir or {DATA_DIR_ENV} at a folder "
            f"holding MATH/{split}/<subject>/<n>.json"
        )
    # Subject, then file number as an integer: a fixed order that does not depend on the file system.
    paths = sorted(
        folder.glob("*/*.json"),
        key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else -1, p.stem),
    )
    problems = []
    for path in paths:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        _checked(path, 1, row, ("problem", "solution", "level", "type"))
        problems.append(_math_problem(f"{split}/{path.parent.name}/{path.name}", row))
    if not problems:
        raise FileNotFoundError(f"no MATH problems (*/*.json) under {str(folder)!r}")
    return tuple(problems)


@functools.lru_cache(maxsize=8)
def _local_math500(root: Path, split: str) -> tuple[Problem, ...]:
    path = root / "MATH-500" / f"{split}.jsonl"
    keys = ("problem", "solution", "answer", "subject", "level", "unique_id")
    return tuple(_math500_problem(_checked(path, i + 1, row, keys)) for i, row in _read_jsonl(path))


@functools.lru_cache(maxsize=8)
def _local_svamp(root: Path, split: str) -> tuple[Problem, ...]:
    path = _require_file(root / "SVAMP" / "SVAMP.json")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    keys = ("ID", "Body", "Question", "Equation", "Answer", "Type")
    return tuple(_svamp_problem(_checked(path, i + 1, row, keys)) for i, row in enumerate(rows))


@functools.lru_cache(maxsize=8)
def _local_asdiv(root: Path, split: str) -> tuple[Problem, ...]:
    path = _require_file(root / "ASDiv" / "ASDiv.xml")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc})") from exc
    problems = []
    for element in tree.getroot().iter("Problem"):
        texts = {tag: (element.findtext(tag) or "") for tag in ("Body", "Question", "Answer", "Formula")}
        solution_type = element.find("Solution-Type")
        grade = element.get("Grade")
        metadata = {
            "solution_type": (solution_type.text or "").strip() if solution_type is not None else "",
            "grade": int(grade) if grade and grade.isdigit() else None,
            "formula": texts["Formula"].strip(),
            "source": element.get("Source", ""),
        }
        problems.append(
            _asdiv_problem(element.get("ID", ""), texts["Body"], texts["Question"], texts["Answer"], metadata)
        )
    return tuple(problems)


_LOCAL_LOADERS: dict[str, Callable[[Path, str], tuple[Problem, ...]]] = {
    "gsm8k": _local_gsm8k,
    "math": _local_math,
    "math500": _local_math500,
    "svamp": _local_svamp,
    "asdiv": _local_asdiv,
}


# ---------------------------------------------------------------- hub fallback


def _hub_rows(name: str, *args: Any, **kwargs: Any) -> Any:
    from datasets import load_dataset

    return load_dataset(HUB_IDS[name], *args, **kwargs)


def _hub_gsm8k(split: str) -> tuple[Problem, ...]:
    rows = _hub_rows("gsm8k", "main", split=split)
    return tuple(_gsm8k_problem(split, i, row) for i, row in enumerate(rows))


def _hub_math(split: str) -> tuple[Problem, ...]:
    problems = []
    for subject in MATH_SUBJECTS:
        rows = _hub_rows("math", subject, split=split)
        problems += [_math_problem(f"{split}/{subject}/hub-{i:04d}", row) for i, row in enumerate(rows)]
    return tuple(problems)


def _hub_math500(split: str) -> tuple[Problem, ...]:
    return tuple(_math500_problem(row) for row in _hub_rows("math500", split="test"))


def _hub_svamp(split: str) -> tuple[Problem, ...]:
    # The hub splits the 1,000 problems 700/300; the benchmark here is all of them, in ID order.
    both = _hub_rows("svamp")
    rows = sorted((row for part in both.values() for row in part), key=lambda r: int(r["ID"].split("-")[1]))
    return tuple(_svamp_problem(row) for row in rows)


def _hub_asdiv(split: str) -> tuple[Problem, ...]:
    rows = _hub_rows("asdiv", "asdiv", split="validation")
    return tuple(
        _asdiv_problem(
            f"nluds-{i + 1:04d}",
            row["body"],
            row["question"],
            row["answer"],
            {"solution_type": row.get("solution_type", ""), "grade": None, "formula": row.get("formula", "")},
        )
        for i, row in enumerate(rows)
    )


_HUB_LOADERS: dict[str, Callable[[str], tuple[Problem, ...]]] = {
    "gsm8k": _hub_gsm8k,
    "math": _hub_math,
    "math500": _hub_math500,
    "svamp": _hub_svamp,
    "asdiv": _hub_asdiv,
}


@functools.lru_cache(maxsize=16)
def _load_hub(name: str, split: str) -> tuple[Problem, ...]:
    """The same records from the hub copies. Ids follow the local ones where the hub rows allow it:
    the hub MATH mirror has no file names, so its ids are ``{split}/{subject}/hub-{row}``; ASDiv ids
    assume the hub keeps the XML order (nluds-0001 first), as the local file does."""
    loader = _HUB_LOADERS[name]  # names are checked in load()
    try:
        return loader(split)
    except Exception as exc:
        raise FileNotFoundError(
            f"could not load benchmark {name!r} from the Hugging Face hub ({HUB_IDS[name]}): "
            f"{type(exc).__name__}: {exc}. Without hub access, pass a local data folder with "
            f"--data-dir / data_dir= or set {DATA_DIR_ENV}."
        ) from exc
