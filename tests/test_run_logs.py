"""The small files behind every number are copied beside the results, and a run gone from the study is gone
from them too."""

from __future__ import annotations

from fake_runs import correct, write_run, write_start

from pspo_repro.analysis import run_logs


def test_the_run_logs_hold_each_runs_small_files_and_no_records(tmp_path):
    study, results = tmp_path / "runs" / "cpu", tmp_path / "results" / "cpu"
    write_start(study, "tiny-general-l@0", 0.5)
    kept = write_run(study, "tiny-general-l@0", "clip", 0, correct(0.6, 1))
    gone = write_run(study, "tiny-general-l@0", "pspo", 0, correct(0.6, 2))
    out = run_logs.collect(study, results)
    assert out == results / "run-logs"
    run = out / "tiny-general-l@0" / "clip" / "seed0"
    assert sorted(p.name for p in run.iterdir()) == [
        "DONE",
        "config.json",
        "eval",
        "probes.jsonl",
        "validation.jsonl",
    ]
    assert [p.name for p in (run / "eval").iterdir()] == ["summary.json"]  # not the per-problem records
    assert (out / "tiny-general-l@0" / "start" / "eval" / "summary.json").is_file()
    assert (run / "config.json").read_text() == (kept / "config.json").read_text()
    (gone / "DONE").unlink()
    run_logs.collect(study, results)
    assert not (out / "tiny-general-l@0" / "pspo").exists() and run.is_dir()
