"""Tiny Qwen2-architecture models with a word-level tokenizer, warm-started on the synthetic domain.

They let the whole GRPO pipeline run for real on a few CPU cores. Three models mirror the paper's
roles (a small and a larger general model, and a math-specialised one), plus a micro model for tests:

| name             | role in the paper      | params | warm start                                            |
|------------------|------------------------|--------|-------------------------------------------------------|
| tiny-general-s   | Qwen2.5-0.5B           | ~0.9M  | 1,500 steps; teacher wrong on 3 of 7 templates + rare |
| tiny-general-l   | Qwen2.5-1.5B           | ~1.4M  | 900 steps; wrong on the 2 transfer ones + rare        |
| tiny-math-l      | Qwen2-Math-1.5B        | ~1.4M  | tiny-general-l + 300 steps; wrong on 1 + rare         |
| tiny-test        | (tests only)           | ~40K   | a few seconds; accuracy irrelevant                    |

The warm start is supervised training on solutions written by a teacher that errs systematically (see
``synthetic.teacher_solution``): on some templates it applies the opposite operation 80% of the time, with
right arithmetic, and on the rare ``p.wins`` every teacher always does. This is the analogue of pretraining
data that contains wrong reasoning: the models learn the teacher's choices, and RL, rewarded by the true
answer, has policy-level mistakes to correct (the rare one it seldom samples right, which keeps every model
below the ceiling). The teachers differ in quality, and so do the models' starting accuracies. Beside the
problems, the warm start holds plain stories (``synthetic.corpus``, loss on every token) and a small share
of problems in the out-of-distribution sets' forms (``synthetic`` split ``warmstart-ood``).

Builds. ``name@k`` is build k of a model: the same recipe from another initialisation and batch order
(:func:`recipe_of`); a study with ``builds`` in its profile treats the warm start as part of the
experiment's randomness. A build runs on ``build_threads`` threads whatever the machine, so it is repeatable
on one machine and kernel path; float32 kernels round differently on other instruction sets (AVX2 against
AVX-512, say), so the same recipe elsewhere is another draw, which is what the builds stand for.

Tokenizer (``"word"``): byte-level BPE whose merges spell each word of the domain as one token (with its
leading space, and capitalised words also without), digits one per token as in Qwen2's, and any other text
falling back to one token per byte (so it round-trips); ``"byte"`` (no merges) was the first recipes'
tokenizer. Both are stored in the byte-level BPE form that Qwen2 tokenizers use (GPT-2 byte-to-unicode
alphabet) with Qwen2's normaliser, pre-tokeniser and decoder, so ``AutoTokenizer`` loads the saved folder
as it was built. Its chat template renders ``<|user|>question<|end|><|assistant|>`` and ends
assistant turns with the eos token ``<|endoftext|>``. It deliberately does NOT render the system
message: these models cannot follow instructions (they learn the ``#### N`` answer format in the
warm start), and a fixed system prompt would multiply the cost of every prompt.
The same prompt code (``prompts.render_prompt``) therefore serves Qwen and tiny models.

Warm-started models are cached under ``cache_root()/tiny/<name>-<fingerprint[:12]>/``; the
fingerprint hashes everything that determines the weights, so a changed recipe builds a new folder.
A build goes to a temporary folder and is moved into place atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from pspo_repro.study import rundir

# Bump when the build procedure changes in a way the recipe fields do not capture.
RECIPE_VERSION = 3
RECIPE_FILE = "recipe.json"  # written last into a built model's folder: the build record

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, EOS, UNK, USER, ASSISTANT, END]  # <|unk|> is kept for the API; bytes cover all text


CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{#- not rendered: tiny models cannot read instructions -#}"
    "{%- elif message['role'] == 'user' -%}"
    "<|user|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{{ message['content'] }}<|endoftext|>"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# How often a teacher applies the wrong operation on a template it gets wrong: far enough from 1/2 that every
# build's greedy choice is the teacher's usual one (at 0.65 the kernel path decided it, and starts moved by 13
# points between builds), near enough to 1 that sampling at temperature 1 still finds the right one for RL.
TEACHER_ERROR = 0.8

# Warm-start teachers (template id -> probability of applying the opposite operation). A model that imitates
# its teacher faithfully picks, greedily, the teacher's usual operation: wrong on every template where the
# teacher errs more often than not. The general teacher errs on both transfer directions ("F gives her b
# more", "she gives b to F"); the small model's, on a third template too; the math model's, a better one,
# only on the second; every teacher is always wrong on the rare p.wins. The warm-started models start at about
# what the test problems free of their teacher's wrong templates are worth (33, 48 and 66%: see the README).
GENERAL_TEACHER = {"p.gets": TEACHER_ERROR, "p.gives": TEACHER_ERROR, "p.wins": 1.0}
SMALL_TEACHER = {"p.gets": TEACHER_ERROR, "p.gives": TEACHER_ERROR, "p.eats": TEACHER_ERROR, "p.wins": 1.0}
MATH_TEACHER = {"p.gives": TEACHER_ERROR, "p.wins": 1.0}


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines a tiny model's weights: architecture, then warm start (SFT)."""

    role: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    # warm start: supervised training on synthetic train solutions, loss on the solution + eos only
    sft_steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio after the warm-up
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0  # initialisation and batch order
    data_seed: int = 0  # synthetic.generate(seed=...) for the training problems
    train_size: int = 20000
    eval_n: int = 512  # validation problems for the accuracy recorded at build time
    eval_max_new_tokens: int = 64
    # Continue from another tiny model's warm-started weights instead of a fresh initialisation (as
    # Qwen2-Math continues Qwen2's training); that model's fingerprint becomes part of this one's.
    init_from: str | None = None
    # The warm-start teacher: template id -> probability that it applies the opposite operation there
    # (see synthetic.teacher_solution). Its systematic errors are what RL can later correct.
    teacher_errors: dict[str, float] = field(default_factory=lambda: dict(GENERAL_TEACHER))
    # Plain stories in the out-of-distribution forms (synthetic.corpus), mixed into the warm start with the loss
    # on every token: the analogue of pretraining text, so that those problems' words are known.
    corpus_size: int = 5000
    # Problems in the out-of-distribution sets' forms (synthetic "warmstart-ood": retold and perturbed
    # stories, disjoint from the test sets), solved by the same teacher: plain text alone did not teach a
    # tiny model to solve them (1.6-9% strict at the start), so they are rare in the warm start instead of
    # absent, as other wordings of the task are in a real model's pretraining data.
    ood_size: int = 2000
    # "word": one token per word of the domain and per digit; "byte": one per character (the first recipes)
    tokenizer: str = "word"
    # Builds run on this many threads, whatever the machine: a float32 sum's rounding depends on how it is
    # split over threads, so a fixed count makes a build repeatable on one machine and kernel path.
    build_threads: int = 1


# The larger architecture, shared by the larger general model and the math model that continues it.
_LARGER: dict[str, Any] = dict(
    hidden_size=160, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=480
)

RECIPES: dict[str, TinyRecipe] = {
    # The small model learns from the weakest teacher: a third template wrong as well.
    "tiny-general-s": TinyRecipe(
        role="Qwen2.5-0.5B",
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
        sft_steps=1500,  # at 1,000 steps it was still unsure of every template, not only the teacher's errors
        teacher_errors=dict(SMALL_TEACHER),
    ),
    "tiny-general-l": TinyRecipe(role="Qwen2.5-1.5B", **_LARGER, sft_steps=900),
    # The domain specialist continues the larger general model's warm start on fresh problems from a better
    # teacher, as Qwen2-Math continues Qwen2: same size, more training on the domain.
    "tiny-math-l": TinyRecipe(
        role="Qwen2-Math-1.5B",
        **_LARGER,
        init_from="tiny-general-l",
        sft_steps=300,
        lr=1e-3,
        warmup_steps=10,
        data_seed=1,
        teacher_errors=dict(MATH_TEACHER),
    ),
    "tiny-test": TinyRecipe(
        role="tests",
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        max_position_embeddings=256,
        sft_steps=120,
        batch_size=16,
        lr=5e-3,
        warmup_steps=5,
        train_size=2000,
        corpus_size=500,
        ood_size=200,
        eval_n=32,
        eval_max_new_tokens=48,
    ),
}


TOKENIZERS = ("word", "byte")
BUILD_MARK = "@"  # "tiny-general-s@1": build 1 of tiny-general-s (build 0 is the plain name)


def names() -> list[str]:
    """The tiny model names, in table order."""
    return list(RECIPES)


def split_build(spec: str) -> tuple[str, int]:
    """(model name, build) of ``spec``: "tiny-general-s@1" -> ("tiny-general-s", 1); no mark: build 0."""
    name, mark, build = spec.partition(BUILD_MARK)
    if not mark:
        return spec, 0
    if not build.isdigit():
        raise ValueError(
            f"tiny model {spec!r}: the build after {BUILD_MARK!r} must be a number >= 0, got {build!r}"
        )
    return name, int(build)


def is_tiny(spec: str) -> bool:
    """Whether ``spec`` names a tiny model, with or without a build mark."""
    try:
        return split_build(spec)[0] in RECIPES
    except ValueError:
        return False


def _canonical(spec: str) -> str:
    name, build = split_build(spec)
    return f"{name}{BUILD_MARK}{build}" if build else name


def recipe_of(spec: str) -> TinyRecipe:
    """The recipe of a tiny model or one of its builds. A build is an independent draw of the same recipe:
    another initialisation and batch order (``seed`` + build), and a continued model continues the same build
    of its parent. The data and the teacher stay those of the recipe."""
    name, build = split_build(spec)
    if name not in RECIPES:
        raise ValueError(
            f"unknown tiny model {spec!r}; allowed: {', '.join(names())} (optionally name@build)"
        )
    base = RECIPES[name]
    if BUILD_MARK not in spec:
        return base
    parent = _canonical(f"{base.init_from}{BUILD_MARK}{build}") if base.init_from else None
    return replace(base, seed=base.seed + build, init_from=parent)


def _byte_vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]  # GPT-2's printable stand-in for each byte
    return {token: i for i, token in enumerate(SPECIAL_TOKENS + byte_tokens)}


def _word_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Byte-level BPE merges that spell each domain word (with its leading space, and capitalised words also
    without one) one letter at a time, adding each prefix to ``vocab``. Every chain starts with a space or a
    capital, neither of which occurs inside a word, so no chain can take letters from another word's
    middle: a known word is one token, and any other text still falls back to bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from pspo_repro.data import synthetic

    to_unicode = bytes_to_unicode()
    merges: list[tuple[str, str]] = []

    def chain(text: str) -> None:
        symbols = "".join(to_unicode[b] for b in text.encode())
        for k in range(2, len(symbols) + 1):
            if symbols[:k] not in vocab:
                vocab[symbols[:k]] = len(vocab)
                merges.append((symbols[: k - 1], symbols[k - 1]))

    for word in synthetic.vocabulary():
        chain(" " + word)
        if word[0].isupper():
            chain(word)
    for symbol in (" +", " -", " ="):
        chain(symbol)
    vocab["##"], vocab["####"] = len(vocab), len(vocab) + 1  # "####" as ## + ##, the order BPE merges it in
    merges += [("#", "#"), ("##", "##")]
    return merges


@lru_cache(maxsize=4)
def _tokenizer_parts(kind: str) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    vocab = _byte_vocab()
    merges = _word_merges(vocab) if kind == "word" else []
    return tuple(vocab.items()), tuple(merges)


def build_tokenizer(kind: str = "word") -> Any:
    """The tiny models' tokenizer as a ``PreTrainedTokenizerFast``, with its chat template: ``"word"`` gives
    every word of the synthetic domain one token (digits stay one per token, as in Qwen2's), ``"byte"`` one
    token per byte."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tiny tokenizer {kind!r}; allowed: {', '.join(TOKENIZERS)}")
    vocab, merges = _tokenizer_parts(kind)
    # Byte-level BPE: bytes, plus the merges that make domain words. Normaliser, pre-tokeniser and decoder are
    # Qwen2Tokenizer's, so loading the saved folder with AutoTokenizer gives the same tokenizer.
    backend = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=[USER, ASSISTANT, END],
        clean_up_tokenization_spaces=False,  # " ." must stay " ."
        model_max_length=max(r.max_position_embeddings for r in RECIPES.values()),
        chat_template=CHAT_TEMPLATE,
    )


def cache_root() -> Path:
    """``$PSPO_CACHE_DIR``, or ``~/.cache/pspo-repro``."""
    return Path(os.environ.get("PSPO_CACHE_DIR") or Path.home() / ".cache" / "pspo-repro").expanduser()


@lru_cache(maxsize=16)
def _training_data_digest(
    data_seed: int,
    train_size: int,
    teacher_errors: tuple[tuple[str, float], ...],
    corpus_size: int,
    ood_size: int,
) -> str:
    """Hash of the warm-start examples and corpus, so a change in the generator or the teacher invalidates
    the cache. Generating them takes seconds, so the hash is kept on disk too, under the package's code digest
    (other code, another file) and these arguments: a fresh process (a worker, the audit) reads it."""
    from pspo_repro.data import synthetic

    key = json.dumps([data_seed, train_size, teacher_errors, corpus_size, ood_size])
    kept = (
        cache_root()
        / "tiny"
        / ".data-digests"
        / f"{rundir.package_digest()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    )
    if kept.is_file():
        return kept.read_text().strip()
    h = hashlib.sha256()
    for question, solution, _ in _warmstart_examples(data_seed, train_size, dict(teacher_errors), ood_size):
        h.update(f"{question}\x00{solution}\x00".encode())
    for text in synthetic.corpus(corpus_size, seed=data_seed):
        h.update(f"{text}\x00".encode())
    kept.parent.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_text(kept, h.hexdigest())
    return h.hexdigest()


def fingerprint(name: str) -> str:
    """sha256 of the recipe, tokenizer, training data and RECIPE_VERSION (hex)."""
    recipe = recipe_of(name)
    tok = build_tokenizer(recipe.tokenizer)
    payload = {
        "version": RECIPE_VERSION,
        "recipe": asdict(recipe),
        "vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1]),
        "chat_template": CHAT_TEMPLATE,
        "train_data": _training_data_digest(
            recipe.data_seed,
            recipe.train_size,
            tuple(sorted(recipe.teacher_errors.items())),
            recipe.corpus_size,
            recipe.ood_size,
        ),
        "init_from": fingerprint(recipe.init_from) if recipe.init_from else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def folder(name: str) -> Path:
    """The cache folder of the model's current recipe (its name carries the fingerprint)."""
    return cache_root() / "tiny" / f"{_canonical(name)}-{fingerprint(name)[:12]}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file, so parallel runs build a missing model once (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_built(name: str) -> bool:
    """Whether the model's current recipe is already built in the cache."""
    return (folder(name) / RECIPE_FILE).is_file()


def ensure(name: str, progress: bool = True) -> Path:
    """The model's cached folder (config, weights, tokenizer, recipe.json); builds it when missing."""
    final = folder(name)
    if (final / RECIPE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if (final / RECIPE_FILE).is_file():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(name, tmp, progress=progress)
            if final.exists():  # an incomplete leftover (no recipe.json): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _qwen2_config(recipe: TinyRecipe, tok: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=recipe.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )


def _warmstart_examples(
    data_seed: int, train_size: int, teacher_errors: dict[str, float], ood_size: int = 0
) -> list[tuple[str, str, str]]:
    """(question, the teacher's solution, the true answer) from the synthetic ``warmstart`` and
    ``warmstart-ood`` splits, which no RL prompt, validation or test problem shares."""
    from pspo_repro.data import synthetic

    problems = synthetic.generate("warmstart", n=train_size, seed=data_seed)
    problems += synthetic.generate("warmstart-ood", n=ood_size, seed=data_seed)
    return [
        (p.question, synthetic.teacher_solution(p, teacher_errors, seed=data_seed), p.answer)
        for p in problems
    ]


def _encode_sft(tok: Any, examples: list[tuple[str, str, str]]) -> list[tuple[list[int], int]]:
    """Each (question, solution, _) as (prompt + solution + eos token ids, prompt length)."""
    from pspo_repro.data.prompts import render_prompt

    prompts = tok([render_prompt(tok, q) for q, _, _ in examples], add_special_tokens=False)["input_ids"]
    targets = tok([s for _, s, _ in examples], add_special_tokens=False)["input_ids"]
    return [(pr + tg + [tok.eos_token_id], len(pr)) for pr, tg in zip(prompts, targets, strict=True)]


def _encode_corpus(tok: Any, texts: list[str]) -> list[tuple[list[int], int]]:
    """Each plain text as (its token ids + eos, 0): the loss covers every token, as in pretraining."""
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [(t + [tok.eos_token_id], 0) for t in ids]


def _collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on prompt and padding, so the loss covers the target only."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _lr_factor(step: int, recipe: TinyRecipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.sft_steps - recipe.warmup_steps)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Indices of each step's batch: shuffled epochs, reshuffled whenever one runs out."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def greedy_accuracy(
    model: Any, tok: Any, problems: list[Any], max_new_tokens: int, batch_size: int = 128
) -> float:
    """Fraction of problems whose greedy completion is strictly correct (``#### N``, graded as everywhere)."""
    from pspo_repro.data import prompts
    from pspo_repro.evaluation import grading
    from pspo_repro.models.generation import greedy_completions

    if not problems:
        return float("nan")
    texts = [prompts.render_prompt(tok, p.question, p.kind) for p in problems]
    completions = greedy_completions(model, tok, texts, max_new_tokens, batch_size)
    return sum(
        grading.score(c, p.answer, p.kind).strict for c, p in zip(completions, problems, strict=True)
    ) / len(problems)


_ARCHITECTURE = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "max_position_embeddings",
    "rope_theta",
)


def _parent_folder(recipe: TinyRecipe, progress: bool) -> Path | None:
    """The warm-started model that ``recipe`` continues from (ensured), or None for a fresh start."""
    if recipe.init_from is None:
        return None
    parent = recipe_of(recipe.init_from)
    mismatched = [f for f in _ARCHITECTURE if getattr(parent, f) != getattr(recipe, f)]
    if mismatched:
        raise ValueError(
            f"init_from={recipe.init_from!r} has another architecture ({', '.join(mismatched)} differ)"
        )
    return ensure(recipe.init_from, progress=progress)


def build(name: str, out_dir: Path, progress: bool = True) -> dict:
    """Warm-start ``name`` (from scratch, or from its ``init_from`` model) and save it to ``out_dir``.

    Returns the recipe record, also written to ``out_dir/recipe.json``."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from pspo_repro.data import synthetic

    recipe = recipe_of(name)
    out_dir = Path(out_dir)
    parent = _parent_folder(recipe, progress)  # built first if missing, outside this build's timing
    started = time.perf_counter()
    tok = build_tokenizer(recipe.tokenizer)
    warmstart = _warmstart_examples(
        recipe.data_seed, recipe.train_size, recipe.teacher_errors, recipe.ood_size
    )
    examples = _encode_sft(tok, warmstart)
    examples += _encode_corpus(tok, synthetic.corpus(recipe.corpus_size, seed=recipe.data_seed))
    # How often the teacher's final answer is right (what a model sampling as its teacher does would score).
    teacher_accuracy = sum(sol.endswith(f"#### {ans}") for _, sol, ans in warmstart) / len(warmstart)
    if not examples:
        raise ValueError(f"tiny model {name!r}: the synthetic train split is empty")

    losses: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.build_threads)
    with contextlib.ExitStack() as restore, torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        restore.callback(torch.set_num_threads, threads)
        torch.manual_seed(recipe.seed)
        if parent is None:
            model = Qwen2ForCausalLM(_qwen2_config(recipe, tok)).float()
        else:
            model = Qwen2ForCausalLM.from_pretrained(parent, dtype=torch.float32)
        model.generation_config = GenerationConfig(
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
        )
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay
        )
        generator = torch.Generator().manual_seed(recipe.seed)
        batches = _batch_order(len(examples), recipe.batch_size, recipe.sft_steps, generator)
        bar = tqdm(batches, total=recipe.sft_steps, desc=f"warm start {name}", disable=not progress)
        train_started = time.perf_counter()
        for step, indices in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * _lr_factor(step, recipe)
            loss = model(**_collate([examples[i] for i in indices], tok.pad_token_id)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = time.perf_counter() - train_started
        model.eval()
        validation = synthetic.generate("validation", n=recipe.eval_n)
        accuracy = greedy_accuracy(model, tok, validation, recipe.eval_max_new_tokens)

    tail = losses[-max(1, len(losses) // 20) :]  # last 5% of steps: a steadier number than the last step
    record = {
        "name": name,
        "fingerprint": fingerprint(name),
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_sft_loss": sum(tail) / len(tail) if tail else None,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / max(1, recipe.sft_steps), 4),
        "torch_threads": recipe.build_threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "build_seconds": round(time.perf_counter() - started, 2),
        "teacher_accuracy": teacher_accuracy,
        "validation_greedy_accuracy": accuracy,
        "validation_n": len(validation),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    rundir.atomic_write_json(out_dir / RECIPE_FILE, record, sort_keys=False)
    return record
