"""The report: every notebook in ``notebooks/`` executed with papermill on one study's results.

First every run's small files are copied to ``<results>/<profile>/run-logs/`` (:mod:`pspo_repro.analysis.run_logs`).
Each notebook is executed into ``<results>/<profile>/notebooks/<name>.ipynb``; the notebooks write their
figures (PNG and PDF) to ``<figures>/<profile>/`` and their tables (CSV, Markdown, LaTeX) to
``<results>/<profile>/tables/`` through :class:`pspo_repro.analysis.style.Outputs`.

Every notebook takes the same parameters in its cell tagged ``parameters`` (each gets those it declares):

- ``profile``: the study's profile name;
- ``runs_dir``: the folder of run folders (the study is ``<runs_dir>/<profile>/``);
- ``results_dir``: the folder of results (the study's tables are ``<results_dir>/<profile>/``);
- ``tables_dir``, ``figures_dir``: where the notebook writes its tables and figures.

A notebook that raises does not stop the others; the report then fails naming each failed notebook, its
cell and the error, and the executed copy (with the traceback in place) stays for reading.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pspo_repro

REPO_ROOT = Path(pspo_repro.__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class Executed:
    """One notebook's execution: where its executed copy is, how long it took, and its failure if any."""

    name: str
    output: Path
    seconds: float
    error: str | None = None


class ReportError(RuntimeError):
    """One or more notebooks failed; the message names each, its cell and its error."""


def notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks of ``folder``, by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder {folder}")
    found = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {folder}")
    return found


def profile_name(profile: str) -> str:
    """The study's name: ``profile`` itself, or the ``name`` in a profile file (as ``pspo-repro study``)."""
    if Path(profile).suffix in (".yaml", ".yml"):
        from pspo_repro.study.profiles import load_profile

        return load_profile(profile).get("name", Path(profile).stem)
    return profile


def relative_to_repo(path: Path | str) -> str:
    """``path`` (relative to this process's folder, or absolute) relative to the repository root, with ``..``
    where it lies outside: the kernels run in the repository root, so an executed notebook names no folder
    of the machine that ran it."""
    return os.path.relpath(Path(path).resolve(), REPO_ROOT)


def parameters(profile: str, runs_dir: Path, results_dir: Path, figures_dir: Path) -> dict[str, str]:
    """The parameters every notebook may declare: paths relative to the repository root, where the kernels
    run (:func:`relative_to_repo`)."""
    return {
        "profile": profile,
        "runs_dir": relative_to_repo(runs_dir),
        "results_dir": relative_to_repo(results_dir),
        "tables_dir": relative_to_repo(Path(results_dir) / profile / "tables"),
        "figures_dir": relative_to_repo(Path(figures_dir) / profile),
    }


def strip_machine_paths(notebook: Path) -> None:
    """Rewrite the repository's absolute path out of an executed notebook (papermill's input and output
    paths, messages that print a path) so that it reads relative to the repository root."""
    from pspo_repro.study import rundir

    text = notebook.read_text()
    root = json.dumps(str(REPO_ROOT))[1:-1]  # as the path appears inside JSON strings
    cleaned = text.replace(root + "/", "").replace(f'"{root}"', '"."')
    if cleaned != text:
        rundir.atomic_write_text(notebook, cleaned)


@contextmanager
def _kernel_environment() -> Iterator[None]:
    """The kernels import the same pspo_repro as this process (its folder first on PYTHONPATH)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO_ROOT), old) if x)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _describe(name: str, err: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = next((line for line in err.source.splitlines() if line.strip()), "")
        return (
            f"notebook {name} failed in cell {err.cell_index} (execution count {err.exec_count}, "
            f"starting {first.strip()!r}): {err.ename}: {err.evalue}"
        )
    return f"notebook {name} failed: {type(err).__name__}: {err}"


def _execute(path: Path, output: Path, given: dict[str, str]) -> Executed:
    """One notebook executed into ``output`` (in a worker process of :func:`run_report`): its failure is
    returned, not raised, so that the other notebooks still run."""
    import papermill

    started = time.monotonic()
    error = None
    with _kernel_environment():
        try:
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=given,
                kernel_name="python3",
                progress_bar=False,
                request_save_on_cell_execute=False,
                cwd=str(REPO_ROOT),  # the parameters are relative to it
                # the kernel's own log (transport warnings, the interrupt at shutdown) is noise here;
                # a cell's error reaches us through papermill
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
        except Exception as err:  # any failure is reported by name; the other notebooks still run
            error = _describe(path.stem, err)
    if output.is_file():
        strip_machine_paths(output)
    return Executed(path.stem, output, time.monotonic() - started, error)


def default_report_workers() -> int:
    """Notebooks executed at once: one per core this process may use, at most 4 (each is one kernel, mostly
    single-threaded, and they write separate files)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def run_report(
    profile: str,
    runs_dir: Path = Path("runs"),
    results_dir: Path = Path("results"),
    figures_dir: Path = Path("figures"),
    notebooks_dir: Path = NOTEBOOKS_DIR,
    on_done: Callable[[Executed], None] | None = None,
    workers: int | None = None,
) -> list[Executed]:
    """Execute every notebook of ``notebooks_dir`` on the study ``profile`` (a name, or a profile file),
    ``workers`` at a time (default :func:`default_report_workers`), calling ``on_done`` as each finishes;
    raise :class:`ReportError` naming every notebook that failed (after running the others). Returns the
    executions in the notebooks' order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import papermill

    profile = profile_name(profile)
    workers = default_report_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"report workers must be >= 1, got {workers}")
    study_dir = Path(runs_dir) / profile
    if not study_dir.is_dir():
        raise FileNotFoundError(
            f"no study folder {study_dir}; run `pspo-repro study --profile {profile} --runs {runs_dir}` first"
        )
    from pspo_repro.analysis import run_logs

    run_logs.collect(study_dir, Path(results_dir) / profile)  # the small files behind every number
    params = parameters(profile, runs_dir, results_dir, figures_dir)
    out_dir = Path(results_dir) / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for path in notebooks(notebooks_dir):
        declared = {p for p in papermill.inspect_notebook(str(path))}
        given = {k: v for k, v in params.items() if k in declared} if declared else params
        jobs.append((path, out_dir / path.name, given))
    done: dict[str, Executed] = {}
    # spawned workers: a fork of a process that has imported torch and zmq is not safe
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, max(1, len(jobs))), mp_context=context) as pool:
        futures = [pool.submit(_execute, *job) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            done[result.name] = result
            if on_done is not None:
                on_done(result)
    ordered = [done[path.stem] for path, _, _ in jobs]
    failed = [e for e in ordered if e.error]
    if failed:
        lines = [f"{e.error} (executed copy: {e.output})" for e in failed]
        raise ReportError(f"{len(failed)} of {len(ordered)} notebook(s) failed:\n" + "\n".join(lines))
    return ordered
