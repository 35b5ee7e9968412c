"""The synthetic word-problem domain: determinism, disjoint splits, correct arithmetic, OOD variants."""

from __future__ import annotations

import itertools
import re

import pytest

from pspo_repro.data import synthetic
from pspo_repro.data.loaders import Problem

LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
ALL_SPLITS = tuple(synthetic.SPLITS)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Problem]]:
    return {split: synthetic.generate(split) for split in ALL_SPLITS}


def _check_solution(problem: Problem) -> list[int]:
    """Recompute the chain of a solution; returns the operands (start value first)."""
    *lines, final = problem.solution.split("\n")
    assert final == f"#### {problem.answer}", problem
    assert len(lines) == problem.metadata["n_ops"] and 1 <= len(lines) <= synthetic.MAX_OPS
    operands: list[int] = []
    previous = None
    ops = ""
    carries = 0
    for line in lines:
        match = LINE.match(line)
        assert match, (problem.id, line)
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if previous is None:
            operands.append(a)
            assert a in synthetic.START_VALUES
        else:
            assert a == previous, f"{problem.id}: chain broken at {line!r}"
        assert op in "+-" and b in synthetic.OPERANDS
        # either neither operation would carry or borrow, or both would: the numbers never tell the operation
        easy = a // 10 == (a + b) // 10 == (a - b) // 10
        hard = a // 10 != (a + b) // 10 and a // 10 != (a - b) // 10
        assert easy or hard, (problem.id, line)
        carries += hard
        assert c == (a + b if op == "+" else a - b) and c > 0, (problem.id, line)
        operands.append(b)
        ops += op
        previous = c
    assert str(previous) == problem.answer
    assert ops == problem.metadata["ops"]
    assert [b for _, _, b in problem.metadata["steps"]] == operands[1:]
    assert operands[0] == problem.metadata["start"]
    assert carries == problem.metadata["carries"]
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
        synthetic.MAX_PERTURBED_QUESTION_CHARS
        if split in ("test-svamp", "warmstart-ood")
        else synthetic.MAX_QUESTION_CHARS
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
    # Both operation counts and both operations are common in every split, and so are transfer steps.
    n_ops = [p.metadata["n_ops"] for p in problems]
    assert all(n_ops.count(k) >= 0.4 * len(problems) for k in (1, 2))
    ops = "".join(p.metadata["ops"] for p in problems)
    assert all(ops.count(op) >= 0.4 * len(ops) for op in "+-")
    assert sum(p.metadata["transfer"] > 0 for p in problems) >= 0.15 * len(problems)
    # about 30% of steps carry or borrow, where the value allows one that does both
    steps = sum(p.metadata["n_ops"] for p in problems)
    assert 0.15 * steps <= sum(p.metadata["carries"] for p in problems) <= 0.4 * steps


def test_corpus_tells_retold_stories_with_true_calculations():
    texts = synthetic.corpus(600, seed=3)
    assert texts == synthetic.corpus(600, seed=3) and texts != synthetic.corpus(600, seed=4)
    assert not any("?" in t or "####" in t for t in texts)  # never a question, never a solution
    for opening in ("There are", "A ", "At first", "kept"):  # the out-of-distribution forms are there
        assert any(opening in t for t in texts), opening
    for text in texts:
        value = step_op = step_b = None
        for sentence in re.findall(r"[^.]+\.", text):
            sentence = sentence.strip()
            calculation = re.fullmatch(r"(\d+) ([-+]) (\d+) = (\d+)\.", sentence)
            if calculation:  # it follows its step, from the running value, with the step's operation
                a, op, b, c = int(calculation[1]), calculation[2], int(calculation[3]), int(calculation[4])
                assert (a, op, b) == (value, step_op, step_b), text
                assert c == (a + b if op == "+" else a - b), text
                value = c
            elif value is None and re.search(r"\d", sentence):
                value = int(re.findall(r"\d+", sentence)[0])  # the start
            elif _read_story(sentence):
                step_op, step_b = _read_story(sentence)[0][0], int(re.findall(r"\d+", sentence)[0])
    words = {w for t in texts for w in re.findall(r"[A-Za-z]+", t)}
    assert words <= set(synthetic.vocabulary())


def test_the_warm_starts_rare_forms_are_disjoint_from_the_test_sets():
    warm = synthetic.generate("warmstart-ood", 4000)
    assert {p.metadata["variant"] for p in warm} == {"past", "container", "question-first", "distractor"}
    questions = {p.question for p in warm}
    for split in ("test", "test-svamp", "test-asdiv", "validation", "train"):
        assert not questions & {p.question for p in synthetic.generate(split)}, split
    # a teacher wrong on an in-family template is wrong on its past-tense retelling too
    gave = next(p for p in warm if [t for t, _, _ in p.metadata["steps"]] == ["t.gave"])
    assert synthetic.teacher_solution(gave, {"p.gives": 1.0}).splitlines()[0].split()[1] == "+"
    assert synthetic.teacher_solution(gave, {"p.gets": 1.0}).splitlines()[0].split()[1] == "-"


def _drop_distractor_number(problem: Problem) -> list[int]:
    sentences = problem.question.split(". ")
    distractor = sentences[-2]  # inserted just before the question sentence
    assert re.fullmatch(r"[A-Z][a-z]+ has \d+ [a-z]+", distractor), problem.question
    return [int(x) for s in sentences[:-2] + sentences[-1:] for x in re.findall(r"\d+", s)]


# Keyword readings of the story sentences, written independently of the generator's templates:
# (pattern, operation, transfer between two people). Start sentences and questions match nothing.
READINGS = (
    (r"\bgives? \w+ \d+ more\b|\bgave \w+ another\b", "+", True),
    (r"\bgives \d+ \w+ to\b|\bgave \w+ \d+ of\b", "-", True),
    (r"\bmore\b|\badds\b", "+", False),
    (r"\bloses\b|\beats\b|\bate\b|\bdropped\b|takes out|are removed", "-", False),
)


def _read_story(question: str) -> list[tuple[str, bool]]:
    steps = []
    for sentence in re.findall(r"[^.?]+[.?]", question):
        for pattern, op, transfer in READINGS:
            if re.search(pattern, sentence):
                steps.append((op, transfer))
                break
    return steps


@pytest.mark.parametrize("split", ["train", "test-asdiv"])
def test_sentences_say_what_the_solution_computes(splits: dict[str, list[Problem]], split: str) -> None:
    for problem in splits[split]:
        steps = _read_story(problem.question)
        assert "".join(op for op, _ in steps) == problem.metadata["ops"], problem.question
        assert sum(transfer for _, transfer in steps) == problem.metadata["transfer"], problem.question


def test_examples_read_like_gsm8k(splits: dict[str, list[Problem]]) -> None:
    one_op = [p for p in splits["train"] if p.metadata["n_ops"] == 1]
    assert max(len(p.question) for p in one_op) <= 130  # a lead sentence, a start, a step, the question
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


@pytest.mark.slow
def test_splits_are_disjoint(splits: dict[str, list[Problem]]) -> None:
    questions = {
        split: {p.question for p in splits[split]} for split in ("warmstart", "train", "validation", "test")
    }
    for a, b in itertools.combinations(questions, 2):
        assert not questions[a] & questions[b], (a, b)
    # The split is a function of the question text, so other seeds and sizes do not leak across splits:
    # warm-start data of any seed never holds an RL prompt, a validation or a test question of any seed.
    warm_other = {p.question for p in synthetic.generate("warmstart", n=30000, seed=3)}
    rl_other = {p.question for p in synthetic.generate("train", n=8000, seed=4)}
    held_out = questions["validation"] | questions["test"]
    assert not warm_other & (questions["train"] | rl_other | held_out)
    assert not rl_other & (questions["warmstart"] | held_out)
    assert not {p.question for p in splits["test-svamp"]} & (questions["warmstart"] | questions["train"])
    assert not {p.question for p in splits["test-asdiv"]} & (questions["warmstart"] | questions["train"])


def test_teacher_errs_where_told_and_only_there(splits: dict[str, list[Problem]]) -> None:
    """The teacher picks the opposite operation at the rate its recipe gives, on the templates named, and
    every line it writes is still right arithmetic."""
    errors = {"p.gets": 0.65, "p.gives": 0.65}
    wrong: dict[str, list[bool]] = {}
    for problem in splits["warmstart"][:6000]:
        text = synthetic.teacher_solution(problem, errors, seed=0)
        assert text == synthetic.teacher_solution(problem, errors, seed=0)  # deterministic
        *lines, final = text.split("\n")
        for line, (template, op, b) in zip(lines, problem.metadata["steps"], strict=True):
            match = LINE.match(line)
            a, written, c = int(match[1]), match[2], int(match[4])
            assert int(match[3]) == b and c == (a + b if written == "+" else a - b)
            wrong.setdefault(template, []).append(written != op)
        assert final == f"#### {c}"
    for template, flags in wrong.items():
        rate = sum(flags) / len(flags)
        if template in errors:
            assert abs(rate - errors[template]) < 0.04, (template, rate)
        else:
            assert rate == 0.0, template
    assert set(wrong) == {t.id for t in synthetic.PERSON_TEMPLATES}
    assert set(synthetic.TRANSFER_TEMPLATES) == {"p.gets", "p.gives"}
    # a perfect teacher writes the true solution
    assert all(synthetic.teacher_solution(p, {}) == p.solution for p in splits["warmstart"][:500])
    with pytest.raises(ValueError, match=r"unknown template\(s\) \['p.steals'\]; allowed: p.buys"):
        synthetic.teacher_solution(splits["warmstart"][0], {"p.steals": 0.5})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        synthetic.teacher_solution(splits["warmstart"][0], {"p.gets": 1.5})


def test_out_of_distribution_sets_hold_transfer_steps(splits: dict[str, list[Problem]]) -> None:
    """Both OOD sets contain steps of the kind the teacher gets wrong, so a learned correction can transfer."""
    for split in ("test-svamp", "test-asdiv"):
        share = sum(p.metadata["transfer"] > 0 for p in splits[split]) / len(splits[split])
        assert share >= 0.15, (split, share)
    past = [p for p in splits["test-asdiv"] if p.metadata["variant"] == "past"]
    assert {op for p in past for t, op, _ in p.metadata["steps"] if t in ("t.got", "t.gave")} == {"+", "-"}


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
    for word in synthetic._ITEMS + synthetic._CONTAINERS:
        masked = re.sub(rf"\b{word}\b", "X", masked)
    return masked


def _sentences(text: str) -> list[str]:
    return re.findall(r"[^.?]+[.?]", text)


def test_asdiv_split_uses_unseen_templates(splits: dict[str, list[Problem]]) -> None:
    """Apart from the neutral lead sentences both families may open with, no sentence form of test-asdiv
    is one an RL prompt uses."""
    train_templates = {t for p in splits["train"] for t in p.metadata["template"].split("+")}
    ood_templates = {t for p in splits["test-asdiv"] for t in p.metadata["template"].split("+")}
    assert train_templates & ood_templates == {"lead"}
    assert {p.metadata["variant"] for p in splits["test-asdiv"]} == {"container", "past"}
    leads = {_skeleton(t.format(N="Mia", F="Leo", I="plums")) for t in synthetic._LEAD_SENTENCES}
    train_skeletons = {_skeleton(s) for p in splits["train"][:3000] for s in _sentences(p.question)} - leads
    ood_skeletons = {_skeleton(s) for p in splits["test-asdiv"] for s in _sentences(p.question)} - leads
    assert "N has # X." in train_skeletons and len(ood_skeletons) >= 12
    assert not train_skeletons & ood_skeletons


def test_bad_arguments() -> None:
    with pytest.raises(
        ValueError,
        match="unknown synthetic split 'dev'; allowed: warmstart, warmstart-ood, train, validation",
    ):
        synthetic.generate("dev")
    with pytest.raises(ValueError, match="non-negative"):
        synthetic.generate("train", n=-1)
