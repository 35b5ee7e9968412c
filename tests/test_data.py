"""Benchmark loaders against the real data files: counts, record fields, the authors' GSM8K split, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pspo_repro.data import loaders, synthetic
from pspo_repro.evaluation import grading


@pytest.mark.parametrize(
    ("name", "split", "count"),
    [
        ("gsm8k", "train", 7473),
        ("gsm8k", "test", 1319),
        ("math", "train", 7500),
        ("math", "test", 5000),
        ("math500", "test", 500),
        ("svamp", "test", 1000),
        ("asdiv", "test", 2305),
    ],
)
def test_record_counts_kinds_and_unique_ids(data_dir: Path, name: str, split: str, count: int) -> None:
    problems = loaders.load(name, split, data_dir=data_dir)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert {p.benchmark for p in problems} == {name}
    assert {p.kind for p in problems} == {"latex" if name.startswith("math") else "numeric"}
    assert all(p.question.strip() and p.question == p.question.strip() for p in problems)


def test_gsm8k_records(data_dir: Path) -> None:
    test = loaders.load("gsm8k", "test", data_dir=data_dir)
    first = test[0]
    assert first.id == "test-0000"
    assert first.question.startswith("Janet")
    assert first.answer == "18"
    assert first.solution is not None and first.solution.endswith("#### 18")
    assert test[17].id == "test-0017"
    # Thousands separators are stripped; negative answers are kept.
    answers = {p.answer for p in test}
    assert "1600" in answers and "1,600" not in answers
    assert "-10" in answers
    for problem in test:
        assert grading.parse_number(problem.answer) is not None, problem.id
        assert problem.answer == problem.solution.rsplit("####", 1)[1].strip().replace(",", "")


def test_math_records(data_dir: Path) -> None:
    test = {p.id: p for p in loaders.load("math", "test", data_dir=data_dir)}
    polar = test["test/precalculus/807.json"]
    assert polar.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert polar.metadata == {"subject": "Precalculus", "level": 2}
    assert polar.question.startswith("Convert the point $(0,3)$")
    assert all(p.answer for p in test.values())
    ids = list(test)
    assert ids[0] == "test/algebra/1.json"  # subjects alphabetically, files numerically
    train = {p.id: p for p in loaders.load("math", "train", data_dir=data_dir)}
    # Quirks of the original release: "Level ?" and two solutions that box nothing.
    assert train["train/geometry/377.json"].metadata["level"] is None
    assert train["train/geometry/377.json"].metadata["level_raw"] == "Level ?"
    assert sorted(i for i, p in train.items() if not p.answer) == [
        "train/number_theory/7115.json",
        "train/number_theory/7117.json",
    ]
    assert all(
        p.metadata["level"] in {1, 2, 3, 4, 5}
        for i, p in train.items()
        if "geometry/377" not in i and "geometry/471" not in i
    )


def test_math500_is_a_subset_of_math_test(data_dir: Path) -> None:
    math_test = {p.id: p for p in loaders.load("math", "test", data_dir=data_dir)}
    math500 = loaders.load("math500", data_dir=data_dir)
    for problem in math500:
        assert problem.id in math_test, problem.id
        assert problem.question == math_test[problem.id].question
        # The last \boxed{} of the MATH solution is exactly MATH-500's answer field.
        assert problem.answer == math_test[problem.id].answer
    polar = next(p for p in math500 if p.id == "test/precalculus/807.json")
    assert polar.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert polar.metadata == {"subject": "Precalculus", "level": 2}


def test_svamp_records(data_dir: Path) -> None:
    problems = loaders.load("svamp", data_dir=data_dir)
    first = problems[0]
    assert first.id == "chal-1"
    assert first.answer == "51"
    assert first.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert first.metadata == {"type": "Subtraction", "equation": "( 76.0 - 25.0 )"}
    assert first.solution is None
    assert all(p.answer.isdigit() for p in problems)  # every SVAMP answer is a whole number: no ".0"


def test_asdiv_records_and_answer_shapes(data_dir: Path) -> None:
    problems = {p.id: p for p in loaders.load("asdiv", data_dir=data_dir)}
    first = problems["nluds-0001"]
    assert first.answer == "9"
    assert (
        first.question
        == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    assert first.metadata["answer_raw"] == "9 (apples)"
    assert first.metadata["answer_is_numeric"] is True
    assert first.metadata["grade"] == 1 and first.metadata["solution_type"] == "Addition"
    assert first.metadata["formula"] == "7+2=9"
    # Fractions are single numbers; ratios, clock times, several answers and names are not.
    assert (problems["nluds-1312"].answer, problems["nluds-1312"].metadata["answer_is_numeric"]) == (
        "5/2",
        True,
    )
    assert problems["nluds-1331"].answer == "-1/3"
    assert (problems["nluds-0850"].answer, problems["nluds-0850"].metadata["answer_is_numeric"]) == (
        "5:6",
        False,
    )
    assert problems["nluds-1310"].answer == "11; 12; 13"
    assert problems["nluds-0030"].answer == "Mrs. Hilt"
    non_numeric = [p for p in problems.values() if not p.metadata["answer_is_numeric"]]
    assert len(non_numeric) == 137
    for problem in problems.values():
        parsed = grading.parse_number(problem.answer)
        assert (parsed is not None) == problem.metadata["answer_is_numeric"], problem.id


def test_gsm8k_train_validation_split(data_dir: Path) -> None:
    train_ids = [p.id for p in loaders.load("gsm8k", "train", data_dir=data_dir)]
    fit, val = loaders.gsm8k_train_validation(seed=1, data_dir=data_dir)
    assert (len(fit), len(val)) == (7000, 472)
    fit_ids, val_ids = [p.id for p in fit], [p.id for p in val]
    assert len(set(fit_ids)) == 7000 and len(set(val_ids)) == 472
    assert not set(fit_ids) & set(val_ids)
    # 7,000 + 472 = 7,472: one of the 7,473 train problems is left out, which one depends on the seed.
    assert len(set(train_ids) - set(fit_ids) - set(val_ids)) == 1
    again_fit, again_val = loaders.gsm8k_train_validation(seed=1, data_dir=data_dir)
    assert [p.id for p in again_fit] == fit_ids and [p.id for p in again_val] == val_ids
    other_fit, other_val = loaders.gsm8k_train_validation(seed=2, data_dir=data_dir)
    assert [p.id for p in other_val] != val_ids
    assert len({p.id for p in other_val} & set(val_ids)) < 100  # two random 472-subsets share ~30
    whole_fit, whole_val = loaders.gsm8k_train_validation(seed=1, data_dir=data_dir, n_validation=473)
    assert sorted(p.id for p in whole_fit + whole_val) == sorted(train_ids)
    assert [p.id for p in whole_fit] == fit_ids  # the training part does not depend on n_validation
    with pytest.raises(ValueError, match="at most 7473"):
        loaders.gsm8k_train_validation(seed=1, data_dir=data_dir, n_validation=474)


def test_gsm8k_split_matches_datasets_shuffle(data_dir: Path) -> None:
    """The order is what `datasets.Dataset.shuffle(seed)` gives, so a script shuffling the hub copy agrees."""
    from datasets import Dataset

    train = loaders.load("gsm8k", "train", data_dir=data_dir)
    shuffled = Dataset.from_dict({"index": list(range(len(train)))}).shuffle(seed=3)["index"]
    fit, val = loaders.gsm8k_train_validation(seed=3, data_dir=data_dir)
    assert [p.id for p in fit + val] == [train[i].id for i in shuffled[:7472]]


def test_limit_env_var_and_copies(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loaders.DATA_DIR_ENV, str(data_dir))
    assert loaders.resolve_data_dir() == data_dir
    full = loaders.load("gsm8k", "test")
    head = loaders.load("gsm8k", "test", limit=5)
    assert [p.id for p in head] == [p.id for p in full[:5]]
    # Returned records are copies: changing one does not leak into later loads.
    head[0].metadata["tampered"] = True
    assert "tampered" not in loaders.load("gsm8k", "test", limit=1)[0].metadata
    record = loaders.load("asdiv", limit=1)[0]
    assert json.loads(json.dumps(record.as_dict())) == record.as_dict()
    assert record.as_dict()["id"] == "nluds-0001"


def test_synthetic_names_dispatch_to_the_generator() -> None:
    assert loaders.load("synthetic", "train", limit=10) == synthetic.generate("train", n=10)
    svamp = loaders.load("synthetic-svamp", limit=20)
    assert [p.benchmark for p in svamp] == ["synthetic-svamp"] * 20
    assert svamp == synthetic.generate("test-svamp", n=20)
    assert len(loaders.load("synthetic-asdiv")) == synthetic.SPLITS["test-asdiv"]
    assert set(loaders.BENCHMARKS) == set(loaders.SPLITS) == set(loaders.KINDS)


def test_unknown_benchmark_and_split() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'") as info:
        loaders.load("gsm9k")
    assert all(name in str(info.value) for name in loaders.BENCHMARKS)
    with pytest.raises(ValueError, match="'svamp' has no split 'train'; its splits: test"):
        loaders.load("svamp", "train")
    with pytest.raises(ValueError, match="limit"):
        loaders.load("gsm8k", limit=-1)


def test_missing_folder_and_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="PSPO_DATA_DIR") as info:
        loaders.load("gsm8k", data_dir=missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        loaders.load("gsm8k", data_dir=tmp_path)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        loaders.load("math", "train", data_dir=tmp_path)
    assert str(tmp_path / "MATH" / "train") in str(info.value)


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    good = json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"})
    path.write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match="line 3 is not valid JSON") as info:
        loaders.load("gsm8k", data_dir=tmp_path)
    assert str(path) in str(info.value)
    other = tmp_path / "other"
    (other / "gsm8k").mkdir(parents=True)
    (other / "gsm8k" / "test.jsonl").write_text(
        f"{good}\n" + json.dumps({"question": "q", "answer": "no mark"})
    )
    with pytest.raises(ValueError, match="line 2 has no '#### <answer>'"):
        loaders.load("gsm8k", data_dir=other)


def test_hub_fallback_offline_says_to_pass_a_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loaders.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loaders.resolve_data_dir() is None
    with pytest.raises(FileNotFoundError, match="--data-dir") as info:
        loaders.load("svamp")
    assert "ChilleD/SVAMP" in str(info.value) and loaders.DATA_DIR_ENV in str(info.value)


def test_every_benchmark_file_has_a_hub_source() -> None:
    assert set(loaders._HUB_LOADERS) == set(loaders._LOCAL_LOADERS) == set(loaders.HUB_IDS)
