"""The synthetic word-problem domain: determinism, disjoint splits, correct arithmetic, OOD variants."""

from __future__ import annotations

import re
import time

import pytest

from pspo_repro import synthetic
from pspo_repro.data import Problem

LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
ALL_SPLITS = tuple(synthetic.SPLITS)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Problem]]:
    return {split: synthetic.generate(split) for split in ALL_SPLITS}


def _check_solution(problem: Problem) -> list[int]:
    """Recompute the chain of a solution; returns the operands (start value first)."""
    *lines, final = problem.solution.split("\n")
    assert final == f"#### {problem.answer}", problem
    assert len(lines) == problem.metadata["n_ops"] and 1 <= len(lines) <= 3
    operands: list[int] = []
    previous = None
    ops = ""
    for line in lines:
        match = LINE.match(line)
        assert match, (problem.id, line)
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if previous is None:
            operands.append(a)
        else:
            assert a == previous, f"{problem.id}: chain broken at {line!r}"
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        if op == "/":
            assert b > 0 and a % b == 0, f"{problem.id}: inexact division {line!r}"
        assert c == expected and 0 <= c <= synthetic.MAX_VALUE, (problem.id, line)
        operands.append(b)
        ops += op
        previous = c
    assert str(previous) == problem.answer
    assert ops == problem.metadata["ops"]
    return operands


def _is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_arithmetic_lengths_and_fields(splits: dict[str, list[Problem]], split: str) -> None:
    problems = splits[split]
    assert len(problems) == synthetic.SPLITS[split]
    assert len({p.id for p in problems}) == len(problems)
    assert len({p.question for p in problems}) == len(problems)
    assert {p.benchmark for p in problems} == {synthetic.BENCHMARK_OF_SPLIT[split]}
    assert {p.kind for p in problems} == {"numeric"}
    max_question = (
        synthetic.MAX_PERTURBED_QUESTION_CHARS if split == "test-svamp" else synthetic.MAX_QUESTION_CHARS
    )
    for problem in problems:
        operands = _check_solution(problem)
        assert len(problem.question) <= max_question, problem.question
        assert len(problem.solution) <= synthetic.MAX_SOLUTION_CHARS, problem.solution
        assert problem.question.isascii() and problem.solution.isascii()
        assert problem.question.endswith("?") or problem.metadata["variant"] == "question-first"
        numbers = [int(x) for x in re.findall(r"\d+", problem.question)]
        if problem.metadata["variant"] == "distractor":
            numbers = _drop_distractor_number(problem)
        # Every number in the story is used, in order; numbers like "doubles" or "half" are implicit.
        assert _is_subsequence(numbers, operands), (problem.question, operands)
        assert numbers and numbers[0] == operands[0]
    # All operation counts and all four operations occur in every split.
    n_ops = [p.metadata["n_ops"] for p in problems]
    assert all(n_ops.count(k) >= 0.2 * len(problems) for k in (1, 2, 3))
    ops = "".join(p.metadata["ops"] for p in problems)
    assert all(ops.count(op) >= 0.08 * len(ops) for op in "+-*/")


def _drop_distractor_number(problem: Problem) -> list[int]:
    sentences = problem.question.split(". ")
    distractor = sentences[-2]  # inserted just before the question sentence
    assert re.fullmatch(r"[A-Z][a-z]+ has \d+ [a-z]+", distractor), problem.question
    return [int(x) for s in sentences[:-2] + sentences[-1:] for x in re.findall(r"\d+", s)]


# Keyword readings of the story sentences, written independently of the generator's templates:
# (pattern, operation, implicit operand or None). Start sentences without a group match nothing.
READINGS = (
    (r" of \d+ \w+\.$", "*", None),  # "4 bags of 6 pens." / "8 rows of 11 cards."
    (r"\bdoubles\b", "*", 2),
    (r"\btriples\b", "*", 3),
    (r"times as many|-fold", "*", None),
    (r"\bhalf\b", "/", 2),
    (r"\ba third\b", "/", 3),
    (r"\ba quarter\b", "/", 4),
    (r"equal piles|shared equally", "/", None),
    (r"\bmore\b|\badds\b", "+", None),
    (r"\bloses\b|\bsells\b|takes out|are removed|\bfewer\b|gives \d+ \w+ to", "-", None),
)


def _read_story(question: str) -> list[tuple[str, int | None]]:
    steps = []
    for sentence in re.findall(r"[^.?]+[.?]", question):
        for pattern, op, implicit in READINGS:
            if re.search(pattern, sentence):
                steps.append((op, implicit))
                break
    return steps


@pytest.mark.parametrize("split", ["train", "test-asdiv"])
def test_sentences_say_what_the_solution_computes(splits: dict[str, list[Problem]], split: str) -> None:
    for problem in splits[split]:
        steps = _read_story(problem.question)
        assert "".join(op for op, _ in steps) == problem.metadata["ops"], problem.question
        operands = [int(line.split()[2]) for line in problem.solution.split("\n")[:-1]]
        for (_, implicit), operand in zip(steps, operands, strict=True):
            assert implicit is None or implicit == operand, problem.question


def test_examples_read_like_gsm8k(splits: dict[str, list[Problem]]) -> None:
    one_op = [p for p in splits["train"] if p.metadata["n_ops"] == 1]
    assert max(len(p.question) for p in one_op) <= 120
    assert all(p.metadata["variant"] == "base" for p in splits["train"])
    example = splits["train"][0]
    assert example.id == "train-s0-00000"
    assert example.solution.endswith(f"\n#### {example.answer}")


def test_deterministic_and_seed_dependent() -> None:
    for split in ALL_SPLITS:
        first = synthetic.generate(split, n=40, seed=5)
        assert first == synthetic.generate(split, n=40, seed=5)
        other = synthetic.generate(split, n=40, seed=6)
        assert len({p.question for p in first} & {p.question for p in other}) < 5
        # A prefix does not depend on how many problems were asked for.
        assert synthetic.generate(split, n=15, seed=5) == first[:15]
    assert synthetic.generate("test", n=0) == []


def test_splits_are_disjoint(splits: dict[str, list[Problem]]) -> None:
    train = {p.question for p in splits["train"]}
    validation = {p.question for p in splits["validation"]}
    test = {p.question for p in splits["test"]}
    assert not train & validation and not train & test and not validation & test
    # The split is a function of the question text, so other seeds do not leak held-out questions either.
    other_train = {p.question for p in synthetic.generate("train", n=5000, seed=1)}
    assert not other_train & (test | validation)
    assert not {p.question for p in splits["test-svamp"]} & train
    assert not {p.question for p in splits["test-asdiv"]} & train


def test_svamp_variants_keep_the_gold_answer(splits: dict[str, list[Problem]]) -> None:
    base = {p.id: p for p in splits["test"]}
    variants = [p.metadata["variant"] for p in splits["test-svamp"]]
    assert set(variants) == {"question-first", "distractor"}
    assert min(variants.count("question-first"), variants.count("distractor")) >= 0.3 * len(variants)
    for problem, original in zip(splits["test-svamp"], splits["test"], strict=True):
        assert problem.metadata["base_id"] == original.id
        assert base[problem.metadata["base_id"]] is original
        assert (problem.answer, problem.solution) == (original.answer, original.solution)
        assert problem.metadata["template"] == original.metadata["template"]
        assert problem.question != original.question
        body, question = original.question.rsplit(". ", 1)
        if problem.metadata["variant"] == "question-first":
            assert problem.question == f"{question} {body}."
        else:
            assert problem.question.startswith(body + ". ") and problem.question.endswith(". " + question)
            distractor = problem.question[len(body) + 2 : -len(question) - 2]
            name = distractor.split()[0]
            assert name not in original.question  # an irrelevant person


def _skeleton(sentence: str) -> str:
    """A sentence with numbers, names, items and containers masked: its structure."""
    masked = re.sub(r"\d+", "#", sentence)
    for word in synthetic._ALL_NAMES:
        masked = re.sub(rf"\b{word}\b", "N", masked)
    for word in synthetic._ITEMS + synthetic._GROUPS + synthetic._CONTAINERS:
        masked = re.sub(rf"\b{word}\b", "X", masked)
    return masked


def _sentences(text: str) -> list[str]:
    return re.findall(r"[^.?]+[.?]", text)


def test_asdiv_split_uses_unseen_templates(splits: dict[str, list[Problem]]) -> None:
    train_templates = {t for p in splits["train"] for t in p.metadata["template"].split("+")}
    ood_templates = {t for p in splits["test-asdiv"] for t in p.metadata["template"].split("+")}
    assert not train_templates & ood_templates
    assert {p.metadata["variant"] for p in splits["test-asdiv"]} == {"container", "compare"}
    train_skeletons = {_skeleton(s) for p in splits["train"][:3000] for s in _sentences(p.question)}
    ood_skeletons = {_skeleton(s) for p in splits["test-asdiv"] for s in _sentences(p.question)}
    assert "N has # X." in train_skeletons and len(ood_skeletons) >= 10
    assert not train_skeletons & ood_skeletons


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown synthetic split 'dev'; allowed: train, validation, test"):
        synthetic.generate("dev")
    with pytest.raises(ValueError, match="non-negative"):
        synthetic.generate("train", n=-1)


def test_fast_enough() -> None:
    start = time.perf_counter()
    synthetic.generate("train", seed=11)
    assert time.perf_counter() - start < 10  # about 0.6 s on a shared 2-core machine
