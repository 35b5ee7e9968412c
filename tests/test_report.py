"""The report on the smoke profile's results: every notebook executes and writes every expected file; the
main table equals a recomputation from the raw per-problem records; a failing notebook names its cell."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pspo_repro.analysis import report
from pspo_repro.study import runner

pytestmark = pytest.mark.slow

TABLES = [
    "main_results", "main_results_wide", "published_comparison", "training_curves", "gradient_summary",
    "zero_gradient_by_staleness", "generalisation", "generalisation_categories", "metric_inflation",
    "metric_disagreement_counts", "metric_disagreements",
]  # fmt: skip
FIGURES = [
    "main_accuracy", "validation_strict", "validation_flexible", "training_reward", "entropy",
    "completion_length", "zero_gradient_fraction", "zero_gradient_by_staleness", "weight_vs_ratio",
    "grad_norm_groups", "cosine_to_unclipped", "generalisation_overall",
    "category_synthetic-svamp_transfer", "category_synthetic-svamp_variant",
    "category_synthetic-asdiv_transfer", "category_synthetic-asdiv_variant",
    "metric_spread_synthetic", "metric_spread_synthetic-svamp", "metric_spread_synthetic-asdiv",
]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("runs", "runs"),
        (report.REPO_ROOT / "results" / "cpu", "results/cpu"),
        (report.REPO_ROOT.parent / "x", "../x"),
    ],
)
def test_notebook_paths_are_recorded_relative_to_the_repository(given, recorded, monkeypatch):
    monkeypatch.chdir(report.REPO_ROOT)
    assert report.relative_to_repo(given) == recorded
    params = report.parameters("cpu", Path(given), Path("results"), Path("figures"))
    assert params == {
        "profile": "cpu",
        "runs_dir": recorded,
        "results_dir": "results",
        "tables_dir": "results/cpu/tables",
        "figures_dir": "figures/cpu",
    }


@pytest.fixture(scope="module")
def smoke(tiny_model, tmp_path_factory):
    """The smoke profile studied, then reported (one papermill pass over every notebook)."""
    root = tmp_path_factory.mktemp("smoke-report")
    result = runner.run_study("smoke", root / "runs", root / "results", progress=False)
    assert result.failed == []
    executed = report.run_report("smoke", root / "runs", root / "results", root / "figures")
    return root, executed


def test_report_executes_every_notebook_and_writes_every_file(smoke):
    root, executed = smoke
    names = [p.stem for p in report.notebooks()]
    assert [e.name for e in executed] == names  # executed side by side, returned in the notebooks' order
    assert {"main_results", "training_dynamics", "gradients", "generalisation", "metrics"} <= set(names)
    for e in executed:
        assert e.error is None
        nb = nbformat.read(e.output, as_version=4)
        params = nb.metadata["papermill"]["parameters"]
        assert params["profile"] == "smoke"
        # recorded relative to the repository root (the kernel's folder), never as this machine's paths
        assert not Path(params["runs_dir"]).is_absolute()
        assert (report.REPO_ROOT / params["runs_dir"]).resolve() == (root / "runs").resolve()
        assert str(report.REPO_ROOT) not in e.output.read_text()
        assert all(
            o.get("output_type") != "error"
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
        )
    tables = root / "results" / "smoke" / "tables"
    missing = [
        f"{t}.{x}" for t in TABLES for x in ("csv", "md", "tex") if not (tables / f"{t}.{x}").is_file()
    ]
    assert missing == []
    figures = root / "figures" / "smoke"
    missing = [f"{f}.{x}" for f in FIGURES for x in ("png", "pdf") if not (figures / f"{f}.{x}").is_file()]
    assert missing == []
    assert (figures / "main_accuracy.pdf").read_bytes().startswith(b"%PDF")
    assert (
        (tables / "main_results_wide.md")
        .read_text()
        .startswith("| model | label | seeds | synthetic paper | synthetic strict |")
    )
    assert "\\begin{tabular}" in (tables / "main_results.tex").read_text()


def test_main_table_equals_the_raw_records(smoke):
    root, _ = smoke
    rows = list(csv.DictReader((root / "results" / "smoke" / "tables" / "main_results.csv").open()))
    base = root / "runs" / "smoke" / "tiny-test"
    labels = ["start", "clip", "pspo", "sigmoid", "topr", "noclip"]
    assert (
        len(rows) == len(labels) * 3 * 4
    )  # arms x benchmarks x metrics (paper, strict, flexible, permissive)
    for r in rows:
        folder = base / "start" if r["label"] == "start" else base / r["label"] / "seed0"
        lines = (folder / "eval" / f"{r['benchmark']}.jsonl").read_text().splitlines()
        grades = [json.loads(x)["grades"][0][r["metric"]] for x in lines]
        assert float(r["mean"]) == pytest.approx(sum(grades) / len(grades))
        assert int(r["n"]) == len(grades) == 64
        assert r["ci_low"] == r["ci_high"] == ""  # one seed: no interval, not an invented one
    wide = (root / "results" / "smoke" / "tables" / "main_results_wide.md").read_text()
    assert "(1 seed)" in wide


def test_a_figure_is_a_real_image(smoke):
    root, _ = smoke
    image = matplotlib.image.imread(root / "figures" / "smoke" / "validation_strict.png")
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank: lines, text and grid on white


def test_a_failing_notebook_names_itself_and_its_cell(smoke, tmp_path):
    root, _ = smoke
    folder = tmp_path / "notebooks"
    folder.mkdir()
    params = new_code_cell('profile = "x"\nruns_dir = "."')
    params.metadata["tags"] = ["parameters"]
    good = new_notebook(cells=[params, new_code_cell("print(profile)")])
    bad = new_notebook(
        cells=[params, new_code_cell("x = 1"), new_code_cell("raise ValueError('no such arm')")]
    )
    for nb in (good, bad):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(bad, folder / "broken.ipynb")
    nbformat.write(good, folder / "fine.ipynb")
    with pytest.raises(report.ReportError) as err:
        report.run_report("smoke", root / "runs", tmp_path / "results", tmp_path / "figures", folder)
    message = str(err.value)
    assert "1 of 2 notebook(s) failed" in message
    # the injected parameters cell comes after the parameters cell, so the raising cell is index 3
    assert "notebook broken failed in cell 3" in message and "ValueError: no such arm" in message
    executed = nbformat.read(tmp_path / "results" / "smoke" / "notebooks" / "fine.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "smoke\n"  # the other notebook ran, with its parameters


def test_a_missing_study_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study folder"):
        report.run_report("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_report_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="report workers must be >= 1, got 0"):
        report.run_report("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures", workers=0)
