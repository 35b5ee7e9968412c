"""The run folder's I/O: one JSON-lines reader and appender, one atomic JSON writer."""

from __future__ import annotations

import json

import pytest

from pspo_repro.study import rundir


def test_appended_records_read_back_in_order(tmp_path):
    path = tmp_path / "sub" / rundir.PROBES
    rundir.append_jsonl(path, {"step": 1})
    rundir.append_jsonl(path, {"step": 2}, {"step": 3})
    assert rundir.read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_a_missing_file_reads_as_no_records(tmp_path):
    assert rundir.read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "rew')  # a crash in the middle of the second write
    assert rundir.read_jsonl(path) == [{"step": 1}]
    rundir.append_jsonl(path, {"step": 3})
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'
    assert rundir.read_jsonl(path) == [{"step": 1}, {"step": 3}]


def test_a_file_holding_only_a_torn_line_is_emptied_by_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"st')
    assert rundir.read_jsonl(path) == []
    rundir.append_jsonl(path, {"step": 1})
    assert path.read_text() == '{"step": 1}\n'


def test_a_corrupt_complete_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 3 is not valid JSON"):
        rundir.read_jsonl(path)


def test_text_with_unicode_line_separators_round_trips(tmp_path):
    # U+2028 is a line break for str.splitlines but not in JSON lines: a record holding it stays one record
    record = {"completion": "a\u2028b\u0085c é", "n": 1}
    path = tmp_path / "records.jsonl"
    rundir.append_jsonl(path, record, {"n": 2})
    assert rundir.read_jsonl(path) == [record, {"n": 2}]


def test_atomic_json_sorts_keys_unless_told_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / rundir.SUMMARY
    rundir.atomic_write_json(path, {"b": 1, "a": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    rundir.atomic_write_json(path, {"b": 1, "a": 2}, sort_keys=False)
    assert list(json.loads(path.read_text())) == ["b", "a"]
    assert rundir.read_json(path) == {"b": 1, "a": 2}
    assert [p.name for p in tmp_path.iterdir()] == [rundir.SUMMARY]
