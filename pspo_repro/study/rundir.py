"""The run directory: its layout, atomic writes, JSON-lines logs that survive a crash, provenance, DONE.

Layout of one run (later tools read exactly these names, which are the constants below)::

    <run>/config.json        CONFIG: fully resolved settings
    <run>/provenance.json    PROVENANCE: git commit and dirty flag, package versions, device, seed, times
    <run>/train_log.jsonl    TRAIN_LOG: one line per logging step (TRL's metrics: reward, loss, ...)
    <run>/probes.jsonl       PROBES: one line per optimizer step (see pspo_repro.training.probes)
    <run>/validation.jsonl   VALIDATION: one line per validation pass (step, mean reward, accuracy)
    <run>/checkpoint/        CHECKPOINT: the best checkpoint by validation reward (Hugging Face format),
                             with CHECKPOINT_STEP naming its step
    <run>/eval/              EVAL: per-benchmark records (<benchmark>.jsonl) and SUMMARY
    <run>/DONE               DONE: written last, atomically: the run is complete
    <run>/.lock              LOCK: held by the process working in the folder (pspo_repro.study.launch)
    <run>/FAILED             FAILED: the traceback of a task that raised
    <run>/model_build.json   MODEL_BUILD: the build of the tiny model the results come from

One rule for every file written here: JSON documents are replaced atomically (:func:`atomic_write_json`),
and JSON-lines logs grow by whole lines (:func:`append_jsonl`), read back by :func:`read_jsonl`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

CONFIG = "config.json"
PROVENANCE = "provenance.json"
TRAIN_LOG = "train_log.jsonl"
PROBES = "probes.jsonl"
VALIDATION = "validation.jsonl"
CHECKPOINT = "checkpoint"
CHECKPOINT_STEP = "checkpoint_step.json"
TRAINER_OUTPUT = "trainer"  # TRL's output folder while the run trains; removed when it ends
EVAL = "eval"
SUMMARY = "summary.json"  # inside EVAL
DONE = "DONE"
LOCK = ".lock"
FAILED = "FAILED"
MODEL_BUILD = "model_build.json"
# What a training attempt writes; an attempt that did not finish is removed before the next one.
TRAINING_OUTPUTS = (TRAIN_LOG, PROBES, VALIDATION, CHECKPOINT, TRAINER_OUTPUT)
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "math-verify", "vllm", "pspo-repro")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> None:
    """``obj`` as indented UTF-8 JSON, written atomically (:func:`atomic_write_text`). Keys are sorted
    unless ``sort_keys`` is False (where their order carries meaning, such as benchmarks in a summary)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=str)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_jsonl(path: str | os.PathLike, *records: dict) -> None:
    """Append ``records`` as whole lines in one write, flushed and fsynced: a crash loses at most these
    lines and leaves at most a torn last line, which :func:`read_jsonl` ignores and the next append cuts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_line(path)
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _cut_torn_line(path: Path, block: int = 1 << 16) -> None:
    """Truncate a last line that has no newline (a write cut short), reading only the file's tail."""
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return
            pos = start
        f.truncate(0)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file; [] when it does not exist.

    The rule for damage: a last line without its newline is a write cut short by a crash and is ignored
    (:func:`append_jsonl` cuts it before writing); a complete line that is not valid JSON is not a crash's
    doing, and raises a ``ValueError`` naming the file and the line. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({exc.msg}); fix or delete the file"
            ) from exc
    return records


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing it; ``dst`` is never seen half-written."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def is_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / DONE).is_file()


def mark_done(run_dir: str | os.PathLike, summary: dict | None = None) -> None:
    atomic_write_json(Path(run_dir) / DONE, {"finished": now(), **(summary or {})})


def _git(args: list[str]) -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """A digest of the package's code and profiles as installed here (every .py, .yaml and .csv file under
    ``pspo_repro/``): equal digests mean the same code, with or without git."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml", ".csv") and p.is_file()):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Where a result came from: code version (git, and a digest of the package's files), packages, machine,
    seed, start time."""
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    return {
        "git_commit": _git(["rev-parse", "HEAD"]),
        "git_dirty": bool(status) if status is not None else None,
        "package_digest": package_digest(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_info(),
        "seed": seed,
        "argv": sys.argv,
        "started": now(),
    }
