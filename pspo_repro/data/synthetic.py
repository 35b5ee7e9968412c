"""Synthetic arithmetic word problems: a GSM8K-shaped domain small enough for CPU-scale RL runs.

Each problem is a short story, a start value (20 to 40) changed by one or two operations, and its solution
is a chain of calculations ending in ``#### N``::

    Mia has 34 plums. Leo gives her 2 more plums. She eats 3 of them. How many plums does Mia have now?
    34 + 2 = 36
    36 - 3 = 33
    #### 33

Half the stories open with a sentence that says nothing about the count ("Mia likes plums."), so that
where the numbers sit varies. The numbers never say which operation a step is (:func:`operands`): either
neither operation carries or borrows, or (in about 30% of steps) both do. What a model must get right is
the *choice* of operation. Seven operation templates say it: four add (``p.buys``, ``p.finds``,
``p.gets`` "F gives her b more", and the rare ``p.wins``) and three subtract (``p.loses``, ``p.eats``,
``p.gives`` "she gives b to F"). The two ``gives`` directions are the *transfer* templates, the ones a
warm-start teacher can be made to get wrong (:func:`teacher_solution`): the analogue of pretraining data
that contains wrong reasoning, which RL with a correct reward can fix. Every teacher gets the rare
``p.wins`` wrong, which RL seldom corrects: it keeps the models off the ceiling.

Splits. A question's split is fixed by a hash of its text, so splits never share a question whatever the
seeds or sizes: ``test`` 5%, ``validation`` 5%, ``train`` (the RL prompts) 30%, ``warmstart`` (the tiny
models' supervised data) 60%. Two out-of-distribution test sets mirror the paper's cross-dataset benchmarks,
and both contain the transfer templates, so that the transfer of a learned correction can be measured:

- ``test-svamp`` (benchmark ``synthetic-svamp``): the ``test`` problems perturbed in SVAMP's spirit, the
  question moved first or an irrelevant number sentence added; same gold answers.
- ``test-asdiv`` (benchmark ``synthetic-asdiv``): other sentence structures: stories told in the past tense
  (the same operations in new words, ``gave`` in both directions among them) and container stories (things
  put in and taken out, no transfer).

The tiny models can read those forms because the warm start also holds them, rarely: ``warmstart-ood``
problems (retold and perturbed stories, disjoint from both test sets) solved by the same teacher, who is
wrong on a past-tense template where it is wrong on the in-family one it retells (``PAST_ANALOGUE``), and
plain stories (:func:`corpus`). RL trains on in-family prompts only, so a gain on the out-of-distribution
problems that use a transfer template is the learned correction transferring.

Every problem's ``metadata`` holds its ``steps`` (template, operation, operand), its ``start`` value,
``transfer`` (how many of its steps are transfer templates) and ``carries``. Everything is deterministic
given (split, seed); the first k problems do not depend on ``n``.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pspo_repro.data.problem import Problem

SPLITS: dict[str, int] = {
    "warmstart": 20000,
    "warmstart-ood": 4000,
    "train": 4000,
    "validation": 512,
    "test": 1024,
    "test-svamp": 1024,
    "test-asdiv": 1024,
}
BENCHMARK_OF_SPLIT: dict[str, str] = {
    "warmstart": "synthetic",
    "warmstart-ood": "synthetic",
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
# The share of steps whose operand carries or borrows (where one exists): arithmetic a tiny model gets wrong
# now and then whatever operation it picks, so that no model reaches the ceiling by choosing well alone.
CARRY_FRACTION = 0.3

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
    weight: float = 1.0  # how often a step uses it, relative to the others of its family


# In-family (train, validation, test): present tense, one person and a friend.
PERSON_TEMPLATES: tuple[Template, ...] = (
    Template("p.buys", "+", "{S} buys {b} more {I}."),
    Template("p.finds", "+", "{S} finds {b} more {I}."),
    Template("p.gets", "+", "{F} gives {O} {b} more {I}.", transfer=True),
    Template("p.loses", "-", "{S} loses {b} {I}."),
    Template("p.eats", "-", "{S} eats {b} of them."),
    Template("p.gives", "-", "{S} gives {b} {I} to {F}.", transfer=True),
    # rare, and every teacher gets it wrong (RARE_TEMPLATE): RL seldom samples its right operation, so it
    # keeps every model below the ceiling
    Template("p.wins", "+", "{S} wins {b} more {I}.", weight=0.5),
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
    Template("t.won", "+", "Then {s} won {b} more.", weight=0.5),
)
_PAST_STARTS = (("t.had", "At first {N} had {a} {I}."), ("t.kept", "{N} kept {a} {I} at home."))
_PAST_QUESTION = ("t.q", "How many {I} did {N} have in the end?")
# The in-family template each past-tense one retells: a teacher wrong on one is wrong on the other, so the
# out-of-distribution problems that use a transfer template carry the error RL corrects in-family.
PAST_ANALOGUE = {
    "t.bought": "p.buys",
    "t.picked": "p.finds",
    "t.got": "p.gets",
    "t.dropped": "p.loses",
    "t.ate": "p.eats",
    "t.gave": "p.gives",
    "t.won": "p.wins",
}
RARE_TEMPLATE = "p.wins"
CONTAINER_TEMPLATES: tuple[Template, ...] = (
    Template("c.adds", "+", "{N} adds {b} {I} to the {C}."),
    Template("c.puts", "+", "{N} puts in {b} more."),
    Template("c.takes", "-", "{N} takes out {b} {I}."),
    Template("c.removed", "-", "Then {b} {I} are removed."),
)
_CONTAINER_STARTS = (("c.there", "There are {a} {I} in a {C}."), ("c.holds", "A {C} holds {a} {I}."))
_CONTAINER_QUESTION = ("c.q", "How many {I} are in the {C} at the end?")
# Sentences that say nothing about the count; a story opens with one half of the time, so that where its
# numbers sit varies and a model must read the story rather than count positions.
_LEAD_SENTENCES = (
    "{N} likes {I}.",
    "{N} and {F} are friends.",
    "{N} is at home.",
    "It is a sunny day.",
    "{N} goes to the market.",
)
LEAD_FRACTION = 0.5


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
    carries: int = 0  # steps whose arithmetic carries or borrows
    values: list[int] = field(default_factory=list)  # the count after each step
    feasible: bool = True
    context: dict[str, str] = field(default_factory=dict)  # the names, item, pronouns and container it uses

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


def operands(value: int, carry: bool = False) -> list[int]:
    """The operands that may follow ``value``. Easy ones (``carry`` False) neither carry when added nor borrow
    when subtracted, so only the ones digit changes; hard ones (``carry`` True) do both, so the tens digit
    changes whichever operation is applied. Either way the numbers give away nothing about which operation
    is right: that is the template's to say."""
    ones = value % 10
    if carry:
        return [b for b in OPERANDS if b > ones and ones + b >= 10]
    return [b for b in OPERANDS if b <= ones and ones + b <= 9]


def _tell(
    rng: random.Random,
    n_ops: int,
    starts: tuple[tuple[str, str], ...],
    templates: tuple[Template, ...],
    question: tuple[str, str],
    ctx: dict[str, str],
) -> _Story:
    story = _Story(start=rng.choice(START_VALUES), context=ctx)
    if rng.random() < LEAD_FRACTION:
        leads = [s for s in _LEAD_SENTENCES if "{F}" not in s or "F" in ctx]
        story.sentences.append(rng.choice(leads).format(**ctx))
        story.templates.append("lead")
    start_id, start_text = rng.choice(starts)
    story.sentences.append(start_text.format(a=story.start, **ctx))
    story.templates.append(start_id)
    value = story.start
    for _ in range(n_ops):
        template = rng.choices(templates, weights=[t.weight for t in templates])[0]
        carry = rng.random() < CARRY_FRACTION and bool(operands(value, carry=True))
        choices = operands(value, carry)
        if not choices:  # a ones digit of 0 or 9: the story cannot go on; the caller draws another
            story.feasible = False
            break
        b = rng.choice(choices)
        value = value + b if template.op == "+" else value - b
        story.sentences.append(template.text.format(b=b, **ctx))
        story.templates.append(template.id)
        story.steps.append((template.id, template.op, b))
        story.values.append(value)
        story.transfer += template.transfer
        story.carries += carry
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
            "carries": story.carries,
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


def _svamp_variants(stories: list[_Story], seed: int, split: str = "test-svamp") -> list[Problem]:
    rng = random.Random(f"pspo-synthetic-v2:{seed}:{split}")
    base_split = "test" if split == "test-svamp" else "warmstart"
    problems = []
    for index, story in enumerate(stories):
        base_id = f"{base_split}-s{seed}-{index:05d}"
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
        problems.append(_problem(story, split, seed, index, question, variant, base_id=base_id))
    return problems


def _unseen_template_problems(n: int, seed: int, split: str = "test-asdiv") -> list[Problem]:
    """Past-tense and container stories; the test set and the warm start's share split them by question hash."""
    rng = random.Random(f"pspo-synthetic-v2:{seed}:{split}")
    buckets = range(0, 50) if split == "test-asdiv" else range(50, 100)
    seen: set[str] = set()
    problems = []
    while len(problems) < n:
        n_ops = rng.randint(1, MAX_OPS)
        variant = rng.choice(("past", "container"))
        make = _past_story if variant == "past" else _container_story
        for _ in range(10_000):
            story = make(rng, n_ops)
            if _fits(story) and story.text not in seen and _bucket(story.text) in buckets:
                break
        else:
            raise RuntimeError(f"could not generate synthetic {variant!r} problems with {n_ops} operations")
        seen.add(story.text)
        problems.append(_problem(story, split, seed, len(problems), story.text, variant))
    return problems


def corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` plain stories in the out-of-distribution sentence forms (past tense, containers), each step
    followed by its calculation and sometimes a bystander's count, never asked as a question: the analogue of
    general pretraining text, so that the models know those forms' words. In-family forms are left out so
    that the only source of the in-family choices stays the warm-start teacher."""
    rng = random.Random(f"pspo-synthetic-v2:{seed}:corpus")
    makers = (_past_story, _container_story)
    texts = []
    while len(texts) < n:
        story = rng.choice(makers)(rng, rng.randint(1, MAX_OPS))
        if not story.feasible:
            continue
        opening = len(story.sentences) - len(story.steps)  # a lead sentence, then the start
        units = [" ".join(story.sentences[:opening])]
        value = story.start
        for sentence, (_, op, b), result in zip(
            story.sentences[opening:], story.steps, story.values, strict=True
        ):
            units.append(f"{sentence} {value} {op} {b} = {result}.")  # each step with its calculation
            value = result
        if story.names and rng.random() < 0.3:  # someone else's count, as test-svamp adds one
            other = rng.choice([name for name in _ALL_NAMES if name not in story.names])
            units.insert(
                rng.randint(1, len(units)), f"{other} has {rng.choice(START_VALUES)} {story.context['I']}."
            )
        texts.append(" ".join(units))
    return texts


def vocabulary() -> list[str]:
    """Every word the domain's texts use (problems, perturbations and corpus), sorted: the tiny models'
    tokenizer gives each one token."""
    texts = [t.text for t in (*PERSON_TEMPLATES, *PAST_TEMPLATES, *CONTAINER_TEMPLATES)]
    texts += [text for _, text in (*_PERSON_STARTS, *_PAST_STARTS, *_CONTAINER_STARTS)]
    texts += [_PERSON_QUESTION[1], _PAST_QUESTION[1], _CONTAINER_QUESTION[1], *_LEAD_SENTENCES]
    texts += [*_ALL_NAMES, *_ITEMS, *_CONTAINERS, *(w for p in _PRONOUNS.values() for w in p.values())]
    words = {w for text in texts for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w\}", " ", text))}
    return sorted(words)


def generate(split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
    """``n`` problems (default ``SPLITS[split]``) of a synthetic split, deterministic in (split, seed)."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; allowed: {', '.join(SPLITS)}")
    if n is None:
        n = SPLITS[split]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
    # Rejection sampling by question hash takes seconds per split, and every run of a study asks for the
    # same splits: a process generates each once and hands out copies (metadata is a mutable dict).
    return [replace(p, metadata=dict(p.metadata)) for p in _generate(split, n, seed)]


@functools.lru_cache(maxsize=32)
def _generate(split: str, n: int, seed: int) -> tuple[Problem, ...]:
    if split == "test-svamp":
        return tuple(_svamp_variants(_stories("test", n, seed), seed))
    if split == "test-asdiv":
        return tuple(_unseen_template_problems(n, seed))
    if split == "warmstart-ood":
        # the test sets' forms, rare in the warm start as other wordings are in pretraining: half retold
        # stories (past tense, containers), half perturbed in-family ones (question first, a bystander)
        # (interleaved, so that the first k problems do not depend on n)
        retold = _unseen_template_problems(n - n // 2, seed, split)
        perturbed = _svamp_variants(_stories("warmstart", n // 2, seed + 1_000_003), seed, split)
        mixed = [p for pair in itertools.zip_longest(retold, perturbed) for p in pair if p is not None]
        return tuple(replace(p, id=f"{split}-s{seed}-{i:05d}") for i, p in enumerate(mixed))
    return tuple(
        _problem(story, split, seed, i, story.text, "base")
        for i, story in enumerate(_stories(split, n, seed))
    )


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
        wrong = rng.random() < errors.get(PAST_ANALOGUE.get(template, template), 0.0)
        ops.append((("-" if op == "+" else "+") if wrong else op, b))
    return solution_text(problem.metadata["start"], ops)
