"""The run directory: atomic writes, JSON-lines logs that survive a crash, provenance, the DONE marker.

Layout of one run (later tools read exactly these names)::

    <run>/config.json        fully resolved settings
    <run>/provenance.json    git commit and dirty flag, package versions, device, seed, start/end times
    <run>/train_log.jsonl    one line per logging step (TRL's metrics: reward, loss, grad_norm, ...)
    <run>/probes.jsonl       one line per optimizer step (see pspo_repro.probes)
    <run>/validation.jsonl   one line per validation pass (step, mean reward, accuracy)
    <run>/checkpoint/        the best checkpoint by validation reward (Hugging Face format)
    <run>/eval/              per-benchmark evaluation records and summary.json
    <run>/DONE               written last, atomically: the run is complete
"""

from __future__ import annotations

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

DONE = "DONE"
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
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one whole line and fsync it. A crash can leave at most a torn last line: readers ignore it,
    and the next append cuts it first, so it never runs into the new line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_line(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
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


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete lines of a JSON-lines file. A last line without its newline is a write cut short and
    is skipped; a complete line that is not JSON is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}); fix or delete the file"
                ) from exc
    return out


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


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Where a result came from: code version, packages, machine, seed, start time."""
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    return {
        "git_commit": _git(["rev-parse", "HEAD"]),
        "git_dirty": bool(status) if status is not None else None,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_info(),
        "seed": seed,
        "argv": sys.argv,
        "started": now(),
    }
