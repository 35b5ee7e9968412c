"""Synthetic arithmetic word problems: a GSM8K-shaped domain small enough for CPU-scale RL runs.

Each problem is a short story, a start value (20 to 40) changed by one or two operations, and its solution
is a chain of calculations ending in ``#### N``::

    Mia has 34 plums. Leo gives her 2 more plums. She eats 3 of them. How many plums does Mia have now?
    34 + 2 = 36
    36 - 3 = 33
    #### 33

The arithmetic is deliberately easy: operands never carry nor borrow, whichever operation is applied
(:func:`operands`), so only the ones digit changes and the numbers say nothing about the operation. What a
model must get right is the *choice* of operation. Six
operation templates say it: three add (``p.buys``, ``p.finds``, ``p.gets`` "F gives her b more") and three
subtract (``p.loses``, ``p.eats``, ``p.gives`` "she gives b to F"). The two ``gives`` directions are the
*transfer* templates, the ones a warm-start teacher can be made to get wrong (:func:`teacher_solution`):
the analogue of pretraining data that contains wrong reasoning, which RL with a correct reward can fix.

Splits. A question's split is fixed by a hash of its text, so splits never share a question whatever the
seeds or sizes: ``test`` 5%, ``validation`` 5%, ``train`` (the RL prompts) 30%, ``warmstart`` (the tiny
models' supervised data) 60%. Two out-of-distribution test sets mirror the paper's cross-dataset benchmarks,
and both contain the transfer templates, so that the transfer of a learned correction can be measured:

- ``test-svamp`` (benchmark ``synthetic-svamp``): the ``test`` problems perturbed in SVAMP's spirit, the
  question moved first or an irrelevant number sentence added; same gold answers.
- ``test-asdiv`` (benchmark ``synthetic-asdiv``): sentence structures never used in training: stories told
  in the past tense (the same six operations in new words, ``gave`` in both directions among them) and
  container stories (things put in and taken out, no transfer).

Every problem's ``metadata`` holds its ``steps`` (template, operation, operand), its ``start`` value and
``transfer`` (how many of its steps are transfer templates). Everything is deterministic given (split,
seed); the first k problems do not depend on ``n``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pspo_repro.data.problem import Problem

SPLITS: dict[str, int] = {
    "warmstart": 20000,
    "train": 4000,
    "validation": 512,
    "test": 512,
    "test-svamp": 512,
    "test-asdiv": 512,
}
BENCHMARK_OF_SPLIT: dict[str, str] = {
    "warmstart": "synthetic",
    "train": "synthetic",
    "validation": "synthetic",
    "test": "synthetic",
    "test-svamp": "synthetic-svamp",
    "test-asdiv": "synthetic-asdiv",
}
# Character-level models read these, so stories and solutions stay short.
MAX_QUESTION_CHARS = 150
MAX_PERTURBED_QUESTION_CHARS = 180  # test-svamp adds a sentence to a test question
MAX_SOLUTION_CHARS = 40
START_VALUES = range(20, 41)
OPERANDS = range(1, 10)
MAX_OPS = 2

# Percentages of the question-hash space held by each in-family split.
_HASH_BUCKETS = {
    "test": range(0, 5),
    "validation": range(5, 10),
    "train": range(10, 40),
    "warmstart": range(40, 100),
}

_NAMES = {
    "f": ("Mia", "Ava", "Zoe", "Ivy", "Eva", "Amy", "Lily", "Emma", "Ruby", "Nora"),
    "m": ("Leo", "Sam", "Max", "Ben", "Tom", "Jack", "Noah", "Owen", "Finn", "Luke"),
}
_ALL_NAMES = _NAMES["f"] + _NAMES["m"]
_PRONOUNS = {
    "f": {"S": "She", "s": "she", "O": "her"},
    "m": {"S": "He", "s": "he", "O": "him"},
}
# Things one can buy, find, lose, give and eat.
_ITEMS = (
    "apples", "plums", "pears", "grapes", "nuts", "cookies",
    "candies", "muffins", "cherries", "lemons", "peaches", "figs",
)  # fmt: skip
_CONTAINERS = ("box", "jar", "bag", "basket", "bin", "crate")


@dataclass(frozen=True)
class Template:
    """One operation sentence: its id, the operation it means, its text, and whether it is a transfer
    between two people (the kind of step a warm-start teacher can be made to get wrong)."""

    id: str
    op: str
    text: str
    transfer: bool = False


# In-family (train, validation, test): present tense, one person and a friend.
PERSON_TEMPLATES: tuple[Template, ...] = (
    Template("p.buys", "+", "{S} buys {b} more {I}."),
    Template("p.finds", "+", "{S} finds {b} more {I}."),
    Template("p.gets", "+", "{F} gives {O} {b} more {I}.", transfer=True),
    Template("p.loses", "-", "{S} loses {b} {I}."),
    Template("p.eats", "-", "{S} eats {b} of them."),
    Template("p.gives", "-", "{S} gives {b} {I} to {F}.", transfer=True),
)
TRANSFER_TEMPLATES: tuple[str, ...] = tuple(t.id for t in PERSON_TEMPLATES if t.transfer)
_PERSON_STARTS = (("p.has", "{N} has {a} {I}."), ("p.starts", "{N} starts with {a} {I}."))
_PERSON_QUESTION = ("p.q", "How many {I} does {N} have now?")

# Out-of-distribution (test-asdiv): sentence structures that never occur in the person family.
PAST_TEMPLATES: tuple[Template, ...] = (
    Template("t.bought", "+", "Later {s} bought {b} more."),
    Template("t.picked", "+", "Then {s} picked {b} more."),
    Template("t.got", "+", "Then {F} gave {O} another {b}.", transfer=True),
    Template("t.dropped", "-", "Later {s} dropped {b} of the {I}."),
    Template("t.ate", "-", "Then {s} ate {b} of them."),
    Template("t.gave", "-", "Then {s} gave {F} {b} of the {I}.", transfer=True),
)
_PAST_STARTS = (("t.had", "At first {N} had {a} {I}."), ("t.kept", "{N} kept {a} {I} at home."))
_PAST_QUESTION = ("t.q", "How many {I} did {N} have in the end?")
CONTAINER_TEMPLATES: tuple[Template, ...] = (
    Template("c.adds", "+", "{N} adds {b} {I} to the {C}."),
    Template("c.puts", "+", "{N} puts in {b} more."),
    Template("c.takes", "-", "{N} takes out {b} {I}."),
    Template("c.removed", "-", "Then {b} {I} are removed."),
)
_CONTAINER_STARTS = (("c.there", "There are {a} {I} in a {C}."), ("c.holds", "A {C} holds {a} {I}."))
_CONTAINER_QUESTION = ("c.q", "How many {I} are in the {C} at the end?")


@dataclass
class _Story:
    """A problem under construction: sentences, the question, and the operations in order."""

    start: int
    sentences: list[str] = field(default_factory=list)
    question: str = ""
    steps: list[tuple[str, str, int]] = field(default_factory=list)  # (template id, op, operand)
    templates: list[str] = field(default_factory=list)  # every sentence's template id, question last
    names: set[str] = field(default_factory=set)
    transfer: int = 0
    feasible: bool = True

    @property
    def text(self) -> str:
        return " ".join([*self.sentences, self.question])

    @property
    def answer(self) -> int:
        return solve(self.start, [(op, b) for _, op, b in self.steps])[1]

    @property
    def solution(self) -> str:
        return solution_text(self.start, [(op, b) for _, op, b in self.steps])


def solve(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], int]:
    """The calculation lines of applying ``ops`` to ``start``, and the result."""
    lines, value = [], start
    for op, b in ops:
        result = value + b if op == "+" else value - b
        lines.append(f"{value} {op} {b} = {result}")
        value = result
    return lines, value


def solution_text(start: int, ops: list[tuple[str, int]]) -> str:
    """A worked solution: one line per calculation, then ``#### N``."""
    lines, value = solve(start, ops)
    return "\n".join([*lines, f"#### {value}"])


def operands(value: int) -> list[int]:
    """The operands that may follow ``value``: those that neither carry when added nor borrow when
    subtracted, so that only the ones digit changes whichever operation is applied. The arithmetic stays
    easy, and the numbers give away nothing about which operation is right: that is the template's to say."""
    ones = value % 10
    return [b for b in OPERANDS if b <= ones and ones + b <= 9]


def _tell(
    rng: random.Random,
    n_ops: int,
    starts: tuple[tuple[str, str], ...],
    templates: tuple[Template, ...],
    question: tuple[str, str],
    ctx: dict[str, str],
) -> _Story:
    story = _Story(start=rng.choice(START_VALUES))
    start_id, start_text = rng.choice(starts)
    story.sentences.append(start_text.format(a=story.start, **ctx))
    story.templates.append(start_id)
    value = story.start
    for _ in range(n_ops):
        template = rng.choice(templates)
        choices = operands(value)
        if not choices:  # a ones digit of 0 or 9: the story cannot go on; the caller draws another
            story.feasible = False
            break
        b = rng.choice(choices)
        value = value + b if template.op == "+" else value - b
        story.sentences.append(template.text.format(b=b, **ctx))
        story.templates.append(template.id)
        story.steps.append((template.id, template.op, b))
        story.transfer += template.transfer
    story.question = question[1].format(**ctx)
    story.templates.append(question[0])
    return story


def _people(rng: random.Random) -> tuple[dict[str, str], set[str]]:
    gender = rng.choice("fm")
    name = rng.choice(_NAMES[gender])
    friend = rng.choice(_NAMES["m" if gender == "f" else "f"])  # other gender: pronouns stay unambiguous
    return {"N": name, "F": friend, "I": rng.choice(_ITEMS), **_PRONOUNS[gender]}, {name, friend}


def _person_story(rng: random.Random, n_ops: int) -> _Story:
    ctx, names = _people(rng)
    story = _tell(rng, n_ops, _PERSON_STARTS, PERSON_TEMPLATES, _PERSON_QUESTION, ctx)
    story.names = names
    return story


def _past_story(rng: random.Random, n_ops: int) -> _Story:
    ctx, names = _people(rng)
    story = _tell(rng, n_ops, _PAST_STARTS, PAST_TEMPLATES, _PAST_QUESTION, ctx)
    story.names = names
    return story


def _container_story(rng: random.Random, n_ops: int) -> _Story:
    ctx = {"I": rng.choice(_ITEMS), "C": rng.choice(_CONTAINERS), "N": rng.choice(_ALL_NAMES)}
    story = _tell(rng, n_ops, _CONTAINER_STARTS, CONTAINER_TEMPLATES, _CONTAINER_QUESTION, ctx)
    story.names = {ctx["N"]}
    return story


def _fits(story: _Story) -> bool:
    return (
        story.feasible and len(story.text) <= MAX_QUESTION_CHARS and len(story.solution) <= MAX_SOLUTION_CHARS
    )


def _bucket(question: str) -> int:
    return zlib.crc32(question.encode("ascii")) % 100


def _problem(
    story: _Story, split: str, seed: int, index: int, question: str, variant: str, **extra
) -> Problem:
    return Problem(
        id=f"{split}-s{seed}-{index:05d}",
        question=question,
        answer=str(story.answer),
        benchmark=BENCHMARK_OF_SPLIT[split],
        kind="numeric",
        solution=story.solution,
        metadata={
            "template": "+".join(story.templates),
            "n_ops": len(story.steps),
            "ops": "".join(op for _, op, _ in story.steps),
            "start": story.start,
            "steps": [list(step) for step in story.steps],
            "transfer": story.transfer,
            "variant": variant,
            **extra,
        },
    )


def _stories(split: str, n: int, seed: int) -> list[_Story]:
    """``n`` distinct in-family stories whose question hashes into ``split``'s bucket.

    The number of operations is drawn first and kept while candidates are rejected, so one- and
    two-operation problems stay equally common."""
    rng = random.Random(f"pspo-synthetic-v2:{seed}:{split}")
    buckets = _HASH_BUCKETS[split]
    seen: set[str] = set()
    stories = []
    attempts = 0
    while len(stories) < n:
        n_ops = rng.randint(1, MAX_OPS)
        while True:
            attempts += 1
            if attempts > 100 * n + 10_000:
                raise RuntimeError(f"could not generate {n} distinct synthetic {split!r} problems")
            story = _person_story(rng, n_ops)
            text = story.text
            if _fits(story) and _bucket(text) in buckets and text not in seen:
                break
        seen.add(text)
        stories.append(story)
    return stories


def _svamp_variants(stories: list[_Story], seed: int) -> list[Problem]:
    rng = random.Random(f"pspo-synthetic-v2:{seed}:test-svamp")
    problems = []
    for index, story in enumerate(stories):
        base_id = f"test-s{seed}-{index:05d}"
        if rng.random() < 0.5:
            question = " ".join([story.question, *story.sentences])
            variant = "question-first"
        else:
            # An irrelevant person holding the same kind of item: it looks relevant, changes nothing.
            other = rng.choice([name for name in _ALL_NAMES if name not in story.names])
            items = story.question.split()[2]  # "How many <items> ..."
            distractor = f"{other} has {rng.choice(START_VALUES)} {items}."
            question = " ".join([*story.sentences, distractor, story.question])
            variant = "distractor"
        problems.append(_problem(story, "test-svamp", seed, index, question, variant, base_id=base_id))
    return problems


def _unseen_template_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(f"pspo-synthetic-v2:{seed}:test-asdiv")
    seen: set[str] = set()
    problems = []
    while len(problems) < n:
        n_ops = rng.randint(1, MAX_OPS)
        variant = rng.choice(("past", "container"))
        make = _past_story if variant == "past" else _container_story
        for _ in range(10_000):
            story = make(rng, n_ops)
            if _fits(story) and story.text not in seen:
                break
        else:
            raise RuntimeError(f"could not generate synthetic {variant!r} problems with {n_ops} operations")
        seen.add(story.text)
        problems.append(_problem(story, "test-asdiv", seed, len(problems), story.text, variant))
    return problems


def generate(split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
    """``n`` problems (default ``SPLITS[split]``) of a synthetic split, deterministic in (split, seed)."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; allowed: {', '.join(SPLITS)}")
    if n is None:
        n = SPLITS[split]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
    if split == "test-svamp":
        return _svamp_variants(_stories("test", n, seed), seed)
    if split == "test-asdiv":
        return _unseen_template_problems(n, seed)
    return [
        _problem(story, split, seed, i, story.text, "base")
        for i, story in enumerate(_stories(split, n, seed))
    ]


def teacher_solution(problem: Problem, errors: Mapping[str, float], seed: int = 0) -> str:
    """The solution a systematically erring teacher writes for ``problem``.

    ``errors`` maps a template id to the probability that the teacher applies the opposite operation at a
    step told by that template (a wrong choice; the arithmetic of every line stays right). The draw is
    deterministic in (seed, problem id, step), so a warm start's data is a function of its recipe."""
    unknown = sorted(set(errors) - {t.id for t in PERSON_TEMPLATES})
    if unknown:
        raise ValueError(
            f"teacher errors name unknown template(s) {unknown}; allowed: "
            f"{', '.join(t.id for t in PERSON_TEMPLATES)}"
        )
    bad = {k: v for k, v in errors.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ValueError(f"teacher error rates must be in [0, 1], got {bad}")
    rng = random.Random(f"pspo-teacher:{seed}:{problem.id}")
    ops = []
    for template, op, b in problem.metadata["steps"]:
        wrong = rng.random() < errors.get(template, 0.0)
        ops.append((("-" if op == "+" else "+") if wrong else op, b))
    return solution_text(problem.metadata["start"], ops)
