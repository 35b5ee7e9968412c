"""Tests of answer extraction and the strict / flexible / permissive / paper metrics (pspo_repro.evaluation.grading), and of
the paper's shaped reward (pspo_repro.training.rewards)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspo_repro.evaluation import grading, verify_guard
from pspo_repro.evaluation.grading import (
    KINDS,
    Grade,
    binary_reward,
    extract_boxed,
    extract_hash_answer,
    gold_from_solution,
    last_number,
    numbers_equal,
    paper_answer,
    paper_format_bonus,
    paper_value,
    parse_number,
    score,
)
from pspo_repro.training.rewards import paper_reward_value as paper_reward

# ---------------------------------------------------------------- extractors


def test_extract_hash_answer_takes_the_first_line_and_allows_no_space():
    assert extract_hash_answer("work\n#### 18\nmore\n#### 20") == "18"
    assert extract_hash_answer("####18") == "18"
    assert extract_hash_answer("#### $1,000 \n") == "$1,000"
    assert extract_hash_answer("no marker, 18") is None
    assert extract_hash_answer("####\n18") == ""  # the answer must be on the #### line


def test_extract_boxed_takes_the_last_complete_box_with_nested_braces():
    assert extract_boxed(r"so $\boxed{\frac{\sqrt{2}}{2}}$.") == r"\frac{\sqrt{2}}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{1} then \boxed{2") == "1"  # truncated last box: the last complete one
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are not grouping
    assert extract_boxed(r"\boxed 5") == "5"
    assert extract_boxed("no box here") is None


def test_extract_boxed_handles_10000_deep_nesting():
    deep = r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"
    assert extract_boxed(deep) == "{" * 10_000 + "1" + "}" * 10_000
    assert extract_boxed(r"\boxed{" + "{" * 10_000) is None


def test_last_number_returns_the_token_as_written():
    assert last_number("costs $1,000 in total") == "$1,000"
    assert last_number("from 5 down to -3.") == "-3"
    assert last_number("a 3/4 share") == "3/4"
    assert last_number("x18 and y") is None  # digits glued to a word are not a number
    assert last_number("nothing") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18", 18.0),
        ("1,000", 1000.0),
        ("$1,000", 1000.0),
        ("\\$5", 5.0),
        ("50%", 50.0),
        ("-5", -5.0),
        ("−7", -7.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\dfrac{14}{3}", 14 / 3),
        (".5", 0.5),
        ("18.", 18.0),
        ("9 (apples)", 9.0),
        ("18 dollars", 18.0),
        ("\\boxed{42}", 42.0),
        ("1e5", 100000.0),
        ("1,234,567.5", 1234567.5),
    ],
)
def test_parse_number_accepts(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "18x", "5!", "18 + 2", "10^{3}", "1/0", "1e999999", "9" * 400, "(3, 4)", "x = 5", "2,3"],
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_numbers_equal_uses_a_1e_minus_6_tolerance():
    assert numbers_equal("18", "18.0")
    assert numbers_equal("1,000", "$1000")
    assert numbers_equal("1.0000001", "1")
    assert not numbers_equal("1.00001", "1")
    assert not numbers_equal("18", "180")
    assert not numbers_equal("18", "1.8")
    assert not numbers_equal("18", "eighteen")


def test_gold_from_solution():
    assert gold_from_solution("Janet sells <<16-3-4=9>>9 eggs.\n#### 1,080", "numeric") == "1080"
    assert gold_from_solution(r"so $\boxed{\frac{14}{3}}$.", "latex") == r"\frac{14}{3}"
    with pytest.raises(ValueError, match="no '#### <answer>'"):
        gold_from_solution("18", "numeric")
    with pytest.raises(ValueError, match="boxed"):
        gold_from_solution("18", "latex")


# ---------------------------------------------------------------- numeric metrics


def _triple(grade: Grade) -> tuple[bool, bool, bool]:
    return grade.strict, grade.flexible, grade.permissive


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("She makes $18 a day.\n#### 18", "18", (True, True, True)),
        ("#### 18\n#### 20", "18", (True, False, True)),  # strict: first ####; flexible: last number
        ("#### 18\n#### 20", "20", (False, True, True)),
        ("####18", "18", (True, True, True)),
        ("#### $1,000", "1000", (True, True, True)),
        ("The discount is 50%.", "50", (False, True, True)),
        ("It drops to -5 degrees.\n#### -5", "-5", (True, True, True)),
        ("#### 3/4", "0.75", (True, True, True)),
        ("#### 18.0", "18", (True, True, True)),
        ("#### The answer is 18", "18", (False, True, True)),  # strict needs the number right after ####
        ("5 + 13 = 180\n#### 180", "18", (False, False, False)),  # 180 is not 18
        ("#### 1.8", "18", (False, False, False)),
        ("no numbers at all", "18", (False, False, False)),
    ],
)
def test_numeric_metrics(completion, gold, expected):
    assert _triple(score(completion, gold)) == expected


def test_permissive_inflation_when_the_completion_restates_the_question():
    # gold 4 appears only because the (wrong) solution restates the question's numbers
    completion = "She eats 3 eggs and bakes with 4, so 16 - 3 + 4 = 17 are left.\n#### 34"
    grade = score(completion, "4")
    assert _triple(grade) == (False, False, True)
    assert grade.strict_answer == "34"
    assert grade.flexible_answer == "34"
    assert grade.permissive_answer == "4"


def test_grade_records_what_each_metric_extracted():
    grade = score("First 7, then #### $1,000 and later 12", "1000")
    assert grade.as_dict() == {
        "strict": True,
        "flexible": False,
        "permissive": True,
        "strict_answer": "1,000",
        "flexible_answer": "12",
        "permissive_answer": "$1,000",
        "paper": False,  # the #### line is not one number, so the authors read the last number, 12
        "paper_answer": "12",
    }
    assert score("no marker here", "5").strict_answer is None


def test_non_numeric_gold_in_a_numeric_benchmark_is_compared_as_text():
    assert _triple(score("The ratio is 3:4.\n#### 3:4", "3:4")) == (True, True, True)
    assert _triple(score("Compare them.\n#### They are equal.", "They are equal")) == (True, True, True)
    assert _triple(score("So the answer is yes", "Yes")) == (False, True, True)
    assert _triple(score("#### No", "Yes")) == (False, False, False)


# ---------------------------------------------------------------- latex metrics


def test_boxed_fraction_matches_its_gold_and_is_never_read_as_its_denominator():
    completion = r"Dividing, we get $\boxed{\frac{14}{3}}$."
    assert _triple(score(completion, r"\frac{14}{3}", "latex")) == (True, True, True)
    assert _triple(score(completion, "3", "latex")) == (False, False, False)
    assert _triple(score(r"The answer is \frac{14}{3}.", "3", "latex")) == (False, False, False)


def test_latex_equivalence_uses_math_verify():
    # nothing but real equivalence checking can tell these apart from their gold
    assert score(r"$\boxed{\frac{\sqrt{8}}{4}}$", r"\frac{\sqrt{2}}{2}", "latex").strict
    assert score(r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", "latex").strict
    assert score(r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", "latex").strict
    assert not score(r"\boxed{(\frac{\pi}{2}, 3)}", r"\left( 3, \frac{\pi}{2} \right)", "latex").strict
    assert not score(r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{2}}{2}", "latex").strict


def test_latex_flexible_and_permissive_fallbacks():
    # no box: strict fails, flexible reads the last math segment
    grade = score(r"So $x = \frac{14}{3}$.", r"\frac{14}{3}", "latex")
    assert _triple(grade) == (False, True, True)
    assert grade.strict_answer is None
    assert grade.flexible_answer == r"x = \frac{14}{3}"
    # the right answer appears earlier, a wrong one is boxed last
    grade = score(r"First $\frac{14}{3}$, then $\boxed{5}$.", r"\frac{14}{3}", "latex")
    assert _triple(grade) == (False, False, True)
    assert grade.permissive_answer == r"\frac{14}{3}"
    # a #### answer counts for flexible, not for the boxed-format strict metric
    assert _triple(score("#### 12", "12", "latex")) == (False, True, True)


def test_unknown_kind_and_metric_are_rejected():
    with pytest.raises(ValueError, match=r"'text'.*numeric, latex"):
        score("1", "1", kind="text")
    with pytest.raises(ValueError, match=r"'exact'.*strict, flexible, permissive"):
        binary_reward("1", "1", metric="exact")
    assert KINDS == ("numeric", "latex")


# ---------------------------------------------------------------- rewards


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("9 * 2 = 18\n#### 18", 1.0),  # 1 + 0.05 clipped to 1
        ("She makes 18 dollars.", 1.0),  # no ####: the last number
        ("The answer is 18 #### 17", 0.05),  # the #### line is one number: wrong, +0.05
        ("#### 17\nActually it is 18.", 0.05),  # the #### line wins over the last number
        ("#### 18 dollars", 1.0),  # not one number: the last number, 18
        ("#### 17 dollars, no, 18", 1.0),
        ("It is 17.", 0.0),
        ("I do not know.", 0.0),  # -0.2 for no number, clipped to 0
        ("####", 0.0),  # no digit after ####: no bonus, and no number: 0
        ("#### eighteen", 0.0),
    ],
)
def test_paper_reward_values(completion, expected):
    assert paper_reward(completion, "18") == expected


@pytest.mark.parametrize(
    ("completion", "bonus"),
    [
        ("#### 42", True),  # a digit after ####, and one more character on the line
        ("####42", True),
        ("#### 42 apples", True),
        ("#### 5 apples", True),
        ("#### 5.", True),
        ("#### 5\n", False),  # a lone single digit: nothing follows it on its line
        ("#### 5", False),
        ("#### -5", False),  # a sign is not a digit
        ("#### -42", False),
        ("#### $5", False),
        ("#### $42", False),
        ("####\n42", True),  # whitespace, newlines included, may separate #### from the digit
        ("#### approximately 42", False),
        ("no marker 42", False),
    ],
)
def test_paper_format_bonus_condition(completion, bonus):
    assert paper_format_bonus(completion) is bonus
    # the bonus is the only difference between a wrong answer's reward and 0
    assert paper_reward(completion, "1000") == (0.05 if bonus else 0.0)


def test_paper_answer_is_the_authors_extraction():
    assert paper_answer("The answer is 18 #### 17") == "17"
    assert paper_answer("#### 42 apples") == "42"  # not one number: the LAST number anywhere
    assert paper_answer("#### 42 apples\nThat used 3 bags.") == "3"
    assert paper_answer("#### approximately 17 or 18") == "18"
    assert paper_answer("#### 5 + 3") == "3"  # the authors' sympy branch never ran (see the docstring)
    assert paper_answer("####\n42") == "42"  # \s* crosses the newline
    assert paper_answer("#### 1,234.5") == "1234.5"
    assert paper_answer("#### 50%") == "0.5"
    assert paper_answer("#### 3/4") == "0.75"
    assert paper_answer("costs $18.") == "18"
    assert paper_answer("from 5 down to -3") == "-3"
    assert paper_answer("18 then 19") == "19"
    assert paper_answer("none") is None
    assert paper_value(r"\boxed{\frac{14}{3}}") == 3.0  # why MATH needs the strict and flexible metrics


def test_the_authors_sympy_branch_cannot_run():
    """Their code called sympify(text, transformations=...): sympify takes no such argument, so the
    TypeError was caught and the expression branch never ran. This reproduction relies on that."""
    from sympy import sympify

    with pytest.raises(TypeError, match="transformations"):
        sympify("5 + 3", transformations=())


@pytest.mark.parametrize(
    ("completion", "strict", "flexible", "paper"),
    [
        ("#### 42 apples", True, True, True),
        ("#### 42 apples and 2 pears", True, False, False),  # paper: the last number, 2
        ("#### 42\nCheck: 40 + 2 = 42 took 2 steps.", True, False, True),  # paper: the whole line, 42
        ("####\n42\nThat took 3 steps.", False, False, True),  # strict: nothing on the #### line
        ("#### 7\nSo 42.", False, True, False),
        ("The total is 42.\n#### 42.0", True, True, True),
        ("#### 4.2e1", False, False, True),  # float() reads it; strict's number is 4.2
    ],
)
def test_paper_metric_against_strict_and_flexible(completion, strict, flexible, paper):
    grade = score(completion, "42")
    assert (grade.strict, grade.flexible, grade.paper) == (strict, flexible, paper)
    assert (paper_reward(completion, "42") > 0.5) is paper  # correct means reward > 0.5


def test_paper_metric_reads_the_gold_as_the_authors_did():
    assert score("#### 3", r"\frac{14}{3}", "latex").paper  # the gold is read as its last number, 3
    grade = score(r"\boxed{\frac{28}{6}}", r"\frac{14}{3}", "latex")
    assert grade.strict and not grade.paper  # equivalent, but read as 6 against 3
    assert not score("#### Yes", "Yes").paper  # a gold with no number is never matched


def test_paper_reward_for_non_numeric_gold_has_no_number_penalty():
    assert paper_reward("#### Yes", "Yes") == 1.0  # no -0.2 although no number appears
    assert paper_reward("#### No", "Yes") == 0.0  # and no bonus: no digit after ####


def test_paper_reward_for_latex_answers():
    assert paper_reward(r"so $\boxed{\frac{14}{3}}$", r"\frac{14}{3}", "latex") == 1.0
    assert paper_reward(r"so $\boxed{\frac{14}{3}}$", "3", "latex") == 0.0
    assert paper_reward("#### 12", "12", "latex") == 1.0


def test_binary_reward_follows_the_chosen_metric():
    completion = "#### 18\n#### 20"
    assert binary_reward(completion, "20") == 0.0
    assert binary_reward(completion, "20", metric="flexible") == 1.0
    assert binary_reward(completion, "20", metric="permissive") == 1.0
    assert binary_reward(r"\boxed{\frac{28}{6}}", r"\frac{14}{3}", "latex") == 1.0


# ---------------------------------------------------------------- robustness

ADVERSARIAL = [
    "9" * 100_000,
    "1e999999",
    "#### 1e999999",
    "#### " + "9" * 5_000,
    "{" * 10_000 + "}" * 10_000,
    r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    r"\boxed{" * 5_000,
    r"\frac{" * 10_000,
    "$" * 50_000,
    r"\(" * 30_000,
    "1,000" * 20_000 + "1",
    ",000" * 30_000 + "1",
    "####" * 25_000 + "5",
    "a" * 1_000_000,
    r"$\boxed{2^{2^{2^{100}}}}$",
    r"\boxed{9^{9^{9}}}",
    r"\boxed{100!!}",
    r"\boxed{\binom{1000000}{500000}}",
    r"\boxed{(x+1)^{100000}}",
    r"\boxed{10^{10^{10}}}",
    r"\boxed{" + "9" * 5_000 + "}",
    r"\boxed{\sum_{k=1}^{10^{8}} \sin(k)}",
    r"\boxed{\int_0^1 e^{x^{9}}\sin(x^{7}) dx}",
    r"\boxed{\Gamma(10^{7})}",
]


def _grade_all(text: str) -> None:
    for kind in KINDS:
        for gold in ("5", r"\frac{14}{3}"):
            grade = score(text, gold, kind)
            assert isinstance(grade.strict, bool) and isinstance(grade.permissive, bool)
            assert 0.0 <= paper_reward(text, gold, kind) <= 1.0


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_are_graded(text):
    """Every grading and reward of a hostile text returns a valid value (benchmarks/bench_worst_cases.py
    times them against an ordinary completion)."""
    _grade_all(text)


def test_grading_works_from_worker_threads():
    """math-verify's signal timeouts only work on the main thread; grading must not depend on them."""
    cases = [
        (r"\boxed{\frac{\sqrt{8}}{4}}", r"\frac{\sqrt{2}}{2}", True),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{2}}{2}", False),
        (r"\boxed{2^{2^{2^{100}}}}", "5", False),
        (r"\boxed{\sum_{k=1}^{10^{8}} \sin(k)}", "5", False),
    ]
    grading._latex_equal.cache_clear()  # make the threads do the math-verify work themselves
    verify_guard.mv_parse.cache_clear()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: score(case[0], case[1], "latex").strict, cases))
    assert results == [expected for _, _, expected in cases]


def test_worker_thread_deadline_stops_runaway_python_code():
    """The trace-based deadline that bounds math-verify off the main thread (where signals are unusable)
    stops a loop that would run 20 s, and not before its budget (how soon after it is a benchmark)."""
    outcome: dict[str, object] = {}

    def spin() -> None:
        if sys.gettrace() is not None:  # a debugger or coverage owns tracing: the deadline stands aside
            outcome["tracer"] = True
            return

        def step(i: int) -> int:
            return i + 1

        start = time.perf_counter()
        try:
            with verify_guard.deadline(0.2):
                i = 0
                while time.perf_counter() - start < 20:  # stands in for a sympy computation that never ends
                    i = step(i)
        except verify_guard.DeadlineExceeded:
            outcome["stopped_after"] = time.perf_counter() - start

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if outcome.get("tracer"):
        pytest.skip("another tracer is active in this thread (coverage or a debugger)")
    assert "stopped_after" in outcome, "the deadline never stopped the loop"
    assert outcome["stopped_after"] >= 0.2


_PIECES = st.sampled_from(
    [
        "{",
        "}",
        r"\boxed{",
        r"\frac{",
        "$",
        "####",
        "9",
        ",000",
        "^{",
        "!",
        "e999",
        "-",
        "/",
        ".",
        " ",
        "\n",
        "x",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300), gold=st.sampled_from(["18", "-2.5", "3/4", "Yes", ""]))
def test_numeric_score_never_raises(text, gold):
    grade = score(text, gold, "numeric")
    assert all(isinstance(v, bool) for v in (grade.strict, grade.flexible, grade.permissive))
    assert paper_reward(text, gold) in (0.0, 0.05, 1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=200).map("".join)),
    gold=st.sampled_from([r"\frac{14}{3}", "5", r"\left( 3, \frac{\pi}{2} \right)", "x^2+1"]),
)
def test_latex_score_never_raises(text, gold):
    grade = score(text, gold, "latex")
    assert all(isinstance(v, bool) for v in (grade.strict, grade.flexible, grade.permissive))
    assert 0.0 <= paper_reward(text, gold, "latex") <= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(_PIECES, min_size=1, max_size=50),
    repeat=st.integers(min_value=1, max_value=400),
)
def test_repeated_structures_finish_within_the_deadline(pieces, repeat):
    _grade_all("".join(pieces) * repeat)


# ---------------------------------------------------------------- real benchmark answers


def _load(benchmark: str, split: str, data_dir):
    from pspo_repro.data.loaders import load

    return load(benchmark, split, data_dir=data_dir)


def _failures(pairs, kind: str) -> dict[str, list[str]]:
    """Per metric, the ids of (id, completion, gold) triples graded incorrect."""
    failed: dict[str, list[str]] = {m: [] for m in grading.METRICS}
    for pid, completion, gold in pairs:
        grade = score(completion, gold, kind)
        for metric in grading.METRICS:
            if not getattr(grade, metric):
                failed[metric].append(pid)
    return failed


def _report(name: str, total: int, failed: dict[str, list[str]]) -> None:
    counts = ", ".join(f"{m} {total - len(ids)}/{total}" for m, ids in failed.items())
    print(f"{name}: {counts}")


def test_gsm8k_reference_solutions_grade_correct(data_dir):
    problems = _load("gsm8k", "test", data_dir)
    assert len(problems) == 1319
    failed = _failures(((p.id, p.solution, p.answer) for p in problems), "numeric")
    _report("gsm8k test", len(problems), failed)
    assert failed == {"strict": [], "flexible": [], "permissive": [], "paper": []}
    assert all(gold_from_solution(p.solution, "numeric") == p.answer for p in problems)
    assert all(paper_reward(p.solution, p.answer) == 1.0 for p in problems)


def test_math500_solutions_grade_correct(data_dir):
    problems = _load("math500", "test", data_dir)
    assert len(problems) == 500
    # the gold is the dataset's own answer field; the last box of each solution, extracted here, agrees
    assert [gold_from_solution(p.solution, "latex") for p in problems] == [p.answer for p in problems]
    failed = _failures(((p.id, p.solution, p.answer) for p in problems), "latex")
    _report("math500", len(problems), failed)
    paper_failed = failed.pop("paper")
    assert failed == {"strict": [], "flexible": [], "permissive": []}
    # the authors' number extraction misreads 71 of the 500 reference solutions (fractions, roots, intervals...)
    assert len(paper_failed) == 71


@pytest.mark.slow
def test_math500_answers_pass_math_verify_itself(data_dir):
    """The fast path decides the test above; this checks that math-verify parses and accepts every
    gold against its solution's box too, and does not call different golds equal."""
    problems = _load("math500", "test", data_dir)
    rejected = [p.id for p in problems if not verify_guard.equivalent(extract_boxed(p.solution), p.answer)]
    assert rejected == []
    neighbours = zip(problems, problems[1:], strict=False)
    equal_pairs = [
        (a.answer, b.answer)
        for a, b in neighbours
        if grading._norm_latex(a.answer) != grading._norm_latex(b.answer)
        and verify_guard.equivalent(b.answer, a.answer)
    ]
    # math-verify reads an assignment "x=5" as its value 5: the only distinct neighbouring golds it equates
    assert equal_pairs == [("5", "x=5")]


def test_svamp_and_asdiv_answers_grade_correct_in_the_required_format(data_dir):
    for benchmark in ("svamp", "asdiv"):
        problems = _load(benchmark, "test", data_dir)
        pairs = [(p.id, f"Working it out step by step.\n#### {p.answer}", p.answer) for p in problems]
        failed = _failures(pairs, "numeric")
        _report(benchmark, len(problems), failed)
        # the paper's grading needs a number in the gold: ASDiv's "Yes", "Purple", "Mrs. Hilt" never match
        no_number = [p.id for p in problems if not any(ch.isdigit() for ch in p.answer)]
        assert failed == {"strict": [], "flexible": [], "permissive": [], "paper": no_number}
    assert len(_load("svamp", "test", data_dir)) == 1000


def test_math_test_solutions_all_have_a_gold(data_dir):
    problems = _load("math", "test", data_dir)
    assert len(problems) == 5000
    golds = {p.id: gold_from_solution(p.solution, "latex") for p in problems}
    assert all(golds.values())
    # MATH-500 states the answers of 500 of these problems in a field of its own: an independent check
    math500 = _load("math500", "test", data_dir)
    assert [golds[p.id] for p in math500] == [p.answer for p in math500]
