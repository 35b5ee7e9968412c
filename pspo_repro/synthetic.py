"""Synthetic arithmetic word problems: a GSM8K-shaped domain small enough for CPU-scale RL runs.

Each problem is a short story (1 to 3 operations: +, -, *, exact /, on small non-negative integers)
whose solution is a chain of calculations ending in ``#### N``, e.g.

    Mia has 7 pens. She buys 5 more pens. How many pens does Mia have now?
    7 + 5 = 12
    #### 12

Splits. ``train``/``validation``/``test`` share one template family ("person" stories). A question's
split is fixed by a hash of its text (5% test, 5% validation, the rest train), so the three never share
a question, whatever the seeds or sizes. Two out-of-distribution test sets mirror the paper's
cross-dataset benchmarks:

- ``test-svamp`` (benchmark ``synthetic-svamp``): the ``test`` problems perturbed in SVAMP's spirit,
  the question moved first or an irrelevant number sentence added; same gold answers.
- ``test-asdiv`` (benchmark ``synthetic-asdiv``): story templates never used in training ("container"
  and "comparison" stories with other verbs and sentence structures), same arithmetic.

Everything is deterministic given (split, seed); the first k problems do not depend on ``n``.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

from pspo_repro.data import Problem

SPLITS: dict[str, int] = {
    "train": 20000,
    "validation": 512,
    "test": 512,
    "test-svamp": 512,
    "test-asdiv": 512,
}
BENCHMARK_OF_SPLIT: dict[str, str] = {
    "train": "synthetic",
    "validation": "synthetic",
    "test": "synthetic",
    "test-svamp": "synthetic-svamp",
    "test-asdiv": "synthetic-asdiv",
}
# Character-level models read these, so stories and solutions stay short.
MAX_QUESTION_CHARS = 160
MAX_PERTURBED_QUESTION_CHARS = 200  # test-svamp adds a sentence to a test question
MAX_SOLUTION_CHARS = 48
MAX_VALUE = 999
OPS = ("+", "-", "*", "/")

# Percentages of the question-hash space held out for each evaluation split.
_HASH_BUCKETS = {"test": range(0, 5), "validation": range(5, 10), "train": range(10, 100)}

_NAMES = {
    "f": ("Mia", "Ava", "Zoe", "Ivy", "Eva", "Amy", "Lily", "Emma", "Ruby", "Nora"),
    "m": ("Leo", "Sam", "Max", "Ben", "Tom", "Jack", "Noah", "Owen", "Finn", "Luke"),
}
_ALL_NAMES = _NAMES["f"] + _NAMES["m"]
_PRONOUNS = {
    "f": {"S": "She", "s": "she", "O": "her", "P": "her"},
    "m": {"S": "He", "s": "he", "O": "him", "P": "his"},
}
_ITEMS = (
    "apples", "pens", "cards", "books", "coins", "eggs", "cups", "toys",
    "shells", "marbles", "stickers", "beads", "rocks", "stamps", "cookies", "pencils",
)  # fmt: skip
_GROUPS = ("bags", "boxes", "packs", "jars", "piles")
_CONTAINERS = ("box", "jar", "bag", "basket", "bin", "crate")

# Operation templates: (template id, fixed operand or None, text). {b} is the operand.
_PERSON_OPS: dict[str, tuple[tuple[str, int | None, str], ...]] = {
    "+": (
        ("p.buys", None, "{S} buys {b} more {I}."),
        ("p.finds", None, "{S} finds {b} more {I}."),
        ("p.gets", None, "{F} gives {O} {b} more {I}."),
    ),
    "-": (
        ("p.gives", None, "{S} gives {b} {I} to {F}."),
        ("p.loses", None, "{S} loses {b} {I}."),
        ("p.sells", None, "{S} sells {b} of them."),
    ),
    "*": (
        ("p.doubles", 2, "{S} doubles {P} {I}."),
        ("p.triples", 3, "{S} triples {P} {I}."),
        ("p.times", None, "Now {s} has {b} times as many {I}."),
    ),
    "/": (
        ("p.half", 2, "{S} gives away half of them."),
        ("p.splits", None, "{S} splits them into {b} equal piles and keeps one."),
    ),
}
# Out-of-distribution families: no sentence structure here occurs in the person family.
_CONTAINER_OPS: dict[str, tuple[tuple[str, int | None, str], ...]] = {
    "+": (("c.adds", None, "{N} adds {b} {I} to the {C}."), ("c.puts", None, "{N} puts in {b} more.")),
    "-": (("c.takes", None, "{N} takes out {b} {I}."), ("c.removed", None, "Then {b} {I} are removed.")),
    "*": (("c.grows", None, "The count of {I} grows {b}-fold."),),
    "/": (("c.shares", None, "The {I} are shared equally by {b} kids."),),  # last operation only
}
_COMPARE_OPS: dict[str, tuple[tuple[str, int | None, str], ...]] = {
    "+": (("k.more", None, "{B} has {b} more than {A}."),),
    "-": (("k.fewer", None, "{B} has {b} fewer than {A}."),),
    "*": (("k.times", None, "{B} has {b} times as many as {A}."),),
    "/": (
        ("k.half", 2, "{B} has half as many as {A}."),
        ("k.third", 3, "{B} has a third as many as {A}."),
        ("k.quarter", 4, "{B} has a quarter as many as {A}."),
    ),
}


@dataclass
class _Story:
    """A problem under construction: body sentences, question sentence and the calculation chain."""

    sentences: list[str] = field(default_factory=list)
    question: str = ""
    lines: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    ops: str = ""
    value: int = 0
    names: set[str] = field(default_factory=set)

    def apply(self, op: str, operand: int) -> None:
        result = _compute(self.value, op, operand)
        self.lines.append(f"{self.value} {op} {operand} = {result}")
        self.ops += op
        self.value = result

    @property
    def text(self) -> str:
        return " ".join([*self.sentences, self.question])

    @property
    def solution(self) -> str:
        return "\n".join([*self.lines, f"#### {self.value}"])


def _compute(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if a % b:
        raise ValueError(f"{a} / {b} is not exact")
    return a // b


def _operands(value: int, op: str) -> list[int] | range:
    """Operands that keep every result a non-negative integer <= MAX_VALUE (division exact,
    subtraction leaving at least 1)."""
    if op == "+":
        return range(1, min(40, MAX_VALUE - value) + 1)
    if op == "-":
        return range(1, min(60, value - 1) + 1)
    if op == "*":
        return range(2, min(9, MAX_VALUE // max(value, 1)) + 1)
    return [d for d in range(2, 10) if value % d == 0]


def _pick_op(
    rng: random.Random, value: int, table: dict[str, tuple[tuple[str, int | None, str], ...]], allowed: str
) -> tuple[str, str, int, str]:
    """A feasible (op, template id, operand, text), op chosen uniformly among the feasible ones."""
    choices = {}
    for op in allowed:
        operands = _operands(value, op)
        templates = [t for t in table[op] if (t[1] in operands if t[1] is not None else len(operands) > 0)]
        if templates:
            choices[op] = (operands, templates)
    op = rng.choice(sorted(choices))
    operands, templates = choices[op]
    template_id, fixed, text = rng.choice(templates)
    return op, template_id, fixed if fixed is not None else rng.choice(operands), text


def _person_story(rng: random.Random, n_ops: int) -> _Story:
    gender = rng.choice("fm")
    name = rng.choice(_NAMES[gender])
    friend = rng.choice(_NAMES["m" if gender == "f" else "f"])  # other gender: pronouns stay unambiguous
    ctx = {"N": name, "F": friend, "I": rng.choice(_ITEMS), **_PRONOUNS[gender]}
    story = _Story(names={name, friend})
    if rng.random() < 0.2:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        story.sentences.append(f"{name} has {a} {rng.choice(_GROUPS)} of {b} {ctx['I']}.")
        story.templates.append("p.groups")
        story.value = a
        story.apply("*", b)
    else:
        story.value = rng.randint(2, 60)
        template_id, text = rng.choice(
            (("p.has", "{N} has {a} {I}."), ("p.starts", "{N} starts with {a} {I}."))
        )
        story.sentences.append(text.format(a=story.value, **ctx))
        story.templates.append(template_id)
    while len(story.lines) < n_ops:
        op, template_id, operand, text = _pick_op(rng, story.value, _PERSON_OPS, OPS)
        story.sentences.append(text.format(b=operand, **ctx))
        story.templates.append(template_id)
        story.apply(op, operand)
    if len(story.sentences) == 1:
        question = ("p.q.all", "How many {I} does {N} have in all?")
    elif story.ops[-1] in "-/":
        question = rng.choice(
            (("p.q.now", "How many {I} does {N} have now?"), ("p.q.left", "How many {I} does {N} have left?"))
        )
    else:
        question = ("p.q.now", "How many {I} does {N} have now?")
    story.question = question[1].format(**ctx)
    story.templates.append(question[0])
    return story


def _container_story(rng: random.Random, n_ops: int) -> _Story:
    ctx = {"I": rng.choice(_ITEMS), "C": rng.choice(_CONTAINERS)}
    story = _Story()
    if rng.random() < 0.2:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        story.sentences.append(f"A {ctx['C']} holds {a} rows of {b} {ctx['I']}.")
        story.templates.append("c.rows")
        story.value = a
        story.apply("*", b)
    else:
        story.value = rng.randint(2, 60)
        story.sentences.append(f"There are {story.value} {ctx['I']} in a {ctx['C']}.")
        story.templates.append("c.there")
    while len(story.lines) < n_ops:
        last = len(story.lines) == n_ops - 1
        name = rng.choice(_ALL_NAMES)
        story.names.add(name)
        op, template_id, operand, text = _pick_op(rng, story.value, _CONTAINER_OPS, OPS if last else "+-*")
        story.sentences.append(text.format(b=operand, N=name, **ctx))
        story.templates.append(template_id)
        story.apply(op, operand)
    if story.ops[-1] == "/":
        question = ("c.q.each", "How many {I} does each kid get?")
    else:
        question = rng.choice(
            (
                ("c.q.box", "How many {I} are in the {C} now?"),
                ("c.q.end", "How many {I} are in the {C} at the end?"),
            )
        )
    story.question = question[1].format(**ctx)
    story.templates.append(question[0])
    return story


def _compare_story(rng: random.Random, n_ops: int) -> _Story:
    people = rng.sample(_ALL_NAMES, n_ops + 1)
    items = rng.choice(_ITEMS)
    story = _Story(names=set(people), value=rng.randint(2, 60))
    template_id, text = rng.choice(
        (("k.owns", "{A} owns {a} {I}."), ("k.collected", "{A} collected {a} {I}."))
    )
    story.sentences.append(text.format(A=people[0], a=story.value, I=items))
    story.templates.append(template_id)
    for i in range(n_ops):
        op, template_id, operand, text = _pick_op(rng, story.value, _COMPARE_OPS, OPS)
        story.sentences.append(text.format(A=people[i], B=people[i + 1], b=operand))
        story.templates.append(template_id)
        story.apply(op, operand)
    story.question = f"How many {items} does {people[-1]} have?"
    story.templates.append("k.q")
    return story


def _fits(story: _Story) -> bool:
    return len(story.text) <= MAX_QUESTION_CHARS and len(story.solution) <= MAX_SOLUTION_CHARS


def _bucket(question: str) -> int:
    return zlib.crc32(question.encode("ascii")) % 100


def _problem(
    story: _Story, split: str, seed: int, index: int, question: str, variant: str, **extra
) -> Problem:
    return Problem(
        id=f"{split}-s{seed}-{index:05d}",
        question=question,
        answer=str(story.value),
        benchmark=BENCHMARK_OF_SPLIT[split],
        kind="numeric",
        solution=story.solution,
        metadata={
            "template": "+".join(story.templates),
            "n_ops": len(story.lines),
            "ops": story.ops,
            "variant": variant,
            **extra,
        },
    )


def _stories(split: str, n: int, seed: int) -> list[_Story]:
    """``n`` distinct in-family stories whose question hashes into ``split``'s bucket.

    The number of operations is drawn first and kept while candidates are rejected, so 1, 2 and
    3-operation problems stay equally common despite the length limits."""
    rng = random.Random(f"pspo-synthetic:{seed}:{split}")
    buckets = _HASH_BUCKETS[split]
    seen: set[str] = set()
    stories = []
    attempts = 0
    while len(stories) < n:
        n_ops = rng.randint(1, 3)
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
    rng = random.Random(f"pspo-synthetic:{seed}:test-svamp")
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
            distractor = f"{other} has {rng.randint(2, 60)} {items}."
            question = " ".join([*story.sentences, distractor, story.question])
            variant = "distractor"
        problems.append(_problem(story, "test-svamp", seed, index, question, variant, base_id=base_id))
    return problems


def _unseen_template_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(f"pspo-synthetic:{seed}:test-asdiv")
    seen: set[str] = set()
    problems = []
    while len(problems) < n:
        n_ops = rng.randint(1, 3)
        variant = rng.choice(("container", "compare"))
        make = _container_story if variant == "container" else _compare_story
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
