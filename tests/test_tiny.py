"""The word and byte tokenizers, their chat template, and the tiny models' cached, deterministic warm start and
builds."""

from __future__ import annotations

import json
import os
import string
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pspo_repro.data.prompts import chat_messages, render_prompt
from pspo_repro.models import loading, tiny
from pspo_repro.study import rundir


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture
def built(tiny_model: Path) -> Path:
    """tiny-test as the session built it (tests/conftest.py), in the session's scratch cache."""
    return tiny_model


def test_names_and_unknown_name():
    assert tiny.names() == ["tiny-general-s", "tiny-general-l", "tiny-math-l", "tiny-test"]
    with pytest.raises(ValueError, match="'nope'.*tiny-general-s, tiny-general-l, tiny-math-l, tiny-test"):
        tiny.ensure("nope")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PSPO_CACHE_DIR", str(tmp_path))
    assert tiny.cache_root() == tmp_path
    monkeypatch.delenv("PSPO_CACHE_DIR")
    assert tiny.cache_root() == Path.home() / ".cache" / "pspo-repro"


def test_byte_tokenizer_gives_one_token_per_ascii_character():
    tok = tiny.build_tokenizer("byte")
    text = string.ascii_letters + string.digits + string.punctuation + " \n  two  spaces , then .\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert len(tok) == 6 + 256  # special tokens, then one token per byte
    assert tok.convert_ids_to_tokens(tok("a b\n")["input_ids"]) == [
        "a",
        "\u0120",
        "b",
        "\u010a",
    ]  # byte-level


def test_word_tokenizer_gives_each_domain_word_one_token_and_digits_one_each(tok, tmp_path):
    from pspo_repro.data import synthetic

    problem = synthetic.generate("test", 1)[0]
    pieces = tok.tokenize(problem.question)
    words = problem.question.replace(".", " ").replace("?", " ").split()
    # a token per word (with its space); a number is its space and a token per digit; one per "." and "?"
    expected = sum(1 + len(w) if w.isdigit() else 1 for w in words)
    assert len(pieces) == expected + problem.question.count(".") + problem.question.count("?")
    assert tok.tokenize("Mia has 34 plums.") == ["Mia", "\u0120has", "\u0120", "3", "4", "\u0120plums", "."]
    assert tok.tokenize("34 + 2 = 36\n#### 36") == [
        "3", "4", "\u0120+", "\u0120", "2", "\u0120=", "\u0120", "3", "6", "\u010a", "####", "\u0120", "3", "6"
    ]  # fmt: skip
    for word in synthetic.vocabulary():
        assert len(tok.tokenize(" " + word)) == 1, word
    # a word the domain does not use falls back to bytes and still round-trips
    assert tok.tokenize(" xylophone") == ["\u0120", *"xylophone"]
    text = "Mia's xylophone cost $3.50, Zoe gives her 2 more."
    assert tok.decode(tok(text)["input_ids"]) == text
    # saved and loaded back the way the trainer loads it, it tokenizes identically
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for p in synthetic.generate("test-asdiv", 50):
        assert loaded(p.question)["input_ids"] == tok(p.question)["input_ids"]
        assert loaded(p.solution)["input_ids"] == tok(p.solution)["input_ids"]


def test_unknown_tokenizer_kind_is_refused():
    with pytest.raises(ValueError, match="'chars'.*word, byte"):
        tiny.build_tokenizer("chars")


def test_builds_are_independent_draws_of_one_recipe():
    base, second = tiny.recipe_of("tiny-math-l"), tiny.recipe_of("tiny-math-l@1")
    assert second.seed == base.seed + 1 and second.init_from == "tiny-general-l@1"
    assert replace(second, seed=base.seed, init_from=base.init_from) == base  # nothing else differs
    assert tiny.recipe_of("tiny-math-l@0").init_from == "tiny-general-l"  # build 0 is the plain name
    assert tiny.folder("tiny-general-s@0") == tiny.folder("tiny-general-s")
    assert tiny.folder("tiny-general-s@1").name.startswith("tiny-general-s@1-")
    assert tiny.is_tiny("tiny-general-s@3") and not tiny.is_tiny("tiny-general-s@x")
    assert not tiny.is_tiny("Qwen/Qwen2.5-0.5B")
    with pytest.raises(ValueError, match="'tiny-general-s@x'.*number"):
        tiny.recipe_of("tiny-general-s@x")


@pytest.mark.parametrize("kind", tiny.TOKENIZERS)
def test_gsm8k_round_trips_including_non_ascii(kind, data_dir):
    tok = tiny.build_tokenizer(kind)
    records = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").open()]
    texts = [r["question"] for r in records[:200]] + [r["answer"] for r in records[:50]]
    assert not all(t.isascii() for t in texts)  # e.g. the first question's curly apostrophe
    for text in texts:
        assert tok.decode(tok(text)["input_ids"]) == text
    if kind == "byte":
        first = records[0]["question"]
        # a non-ASCII character is its bytes
        assert len(tok(first)["input_ids"]) == len(first.encode("utf-8"))


def test_chat_template_skips_the_system_message(tok):
    assert render_prompt(tok, "What is 2 + 3?") == "<|user|>What is 2 + 3?<|end|><|assistant|>"
    assert chat_messages("What is 2 + 3?")[0]["role"] == "system"  # present, but not rendered
    ids = tok(render_prompt(tok, "Hi"))["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("<|user|>"), *tok("Hi")["input_ids"]] + [
        tok.convert_tokens_to_ids("<|end|>"),
        tok.convert_tokens_to_ids("<|assistant|>"),
    ]


def test_assistant_turn_ends_with_eos(tok):
    conversation = [
        {"role": "user", "content": "Tom has 7 apples and buys 5 more. How many now?"},
        {"role": "assistant", "content": "7 + 5 = 12\n#### 12"},
    ]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert text == (
        "<|user|>Tom has 7 apples and buys 5 more. How many now?<|end|><|assistant|>7 + 5 = 12\n#### 12<|endoftext|>"
    )
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == (
        "Tom has 7 apples and buys 5 more. How many now?7 + 5 = 12\n#### 12"
    )
    with pytest.raises(Exception, match="unknown chat role: tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.slow
def test_ensure_builds_a_complete_folder(built):
    for file in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "recipe.json",
    ]:
        assert (built / file).is_file(), file
    record = json.loads((built / "recipe.json").read_text())
    assert built.name == f"tiny-test-{tiny.fingerprint('tiny-test')[:12]}"
    assert built.parent == tiny.cache_root() / "tiny"
    assert record["fingerprint"] == tiny.fingerprint("tiny-test")
    assert record["recipe"]["sft_steps"] == tiny.RECIPES["tiny-test"].sft_steps
    assert 0.0 <= record["validation_greedy_accuracy"] <= 1.0
    assert record["recipe"]["teacher_errors"] == tiny.GENERAL_TEACHER
    # the general teacher errs 65% of the time on 2 of 6 templates: about 70% of its answers are right
    # the general teacher errs on 2 of 6.5 template weights at 0.8 and on the rare one (weight 0.5) always:
    # a step is right with probability 1 - (2 x 0.8 + 0.5) / 6.5 = 0.68, a problem of 1 or 2 steps 0.57
    assert 0.54 < record["teacher_accuracy"] < 0.61
    assert record["final_sft_loss"] < 2.0  # well below uniform over the 648 tokens (ln 648 = 6.5)
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == 1 and config["pad_token_id"] == 0
    generation = json.loads((built / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 1 and generation["pad_token_id"] == 0
    # no temporary folders left behind
    assert [p.name for p in built.parent.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.slow
def test_ensure_does_not_rebuild(built, monkeypatch):
    mtime = (built / "model.safetensors").stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("tiny.ensure rebuilt a model that is in the cache")

    monkeypatch.setattr(tiny, "build", no_build)
    assert tiny.ensure("tiny-test", progress=False) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_fingerprint_follows_the_recipe(monkeypatch):
    original = tiny.fingerprint("tiny-test")
    assert len(original) == 64
    recipe = tiny.RECIPES["tiny-test"]
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", replace(recipe, lr=recipe.lr * 2))
    assert tiny.fingerprint("tiny-test") != original
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", replace(recipe, data_seed=recipe.data_seed + 1))
    assert tiny.fingerprint("tiny-test") != original
    # the teacher is part of the recipe: another error rate is another model
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", replace(recipe, teacher_errors={"p.gives": 0.65}))
    assert tiny.fingerprint("tiny-test") != original
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", recipe)
    assert tiny.fingerprint("tiny-test") == original
    assert tiny.fingerprint("tiny-general-s") != original


def test_the_training_data_digest_is_kept_on_disk_for_fresh_processes(monkeypatch, tmp_path):
    """A fresh process (no in-memory cache) reads the digest kept under the code's digest instead of
    generating the warm-start data again; other arguments are another file."""
    from pspo_repro.data import synthetic

    monkeypatch.setenv("PSPO_CACHE_DIR", str(tmp_path))
    tiny._training_data_digest.cache_clear()
    first = tiny._training_data_digest(0, 20, (("p.gives", 0.5),), 5, 5)
    kept = list((tmp_path / "tiny" / ".data-digests").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(rundir.package_digest())
    assert kept[0].read_text() == first

    def no_generation(*args, **kwargs):
        raise AssertionError("the digest was computed again")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    tiny._training_data_digest.cache_clear()
    assert tiny._training_data_digest(0, 20, (("p.gives", 0.5),), 5, 5) == first
    with pytest.raises(AssertionError, match="computed again"):
        tiny._training_data_digest(0, 21, (("p.gives", 0.5),), 5, 5)
    tiny._training_data_digest.cache_clear()


@pytest.mark.slow
def test_same_recipe_gives_identical_weights(monkeypatch, tmp_path):
    cheap = replace(tiny.RECIPES["tiny-test"], sft_steps=8, train_size=200, eval_n=2, eval_max_new_tokens=4)
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", cheap)
    weights = []
    for folder, seed in [("a", 0), ("b", 0), ("c", 1)]:
        monkeypatch.setitem(tiny.RECIPES, "tiny-test", replace(cheap, seed=seed))
        tiny.build("tiny-test", tmp_path / folder, progress=False)
        weights.append(load_file(tmp_path / folder / "model.safetensors"))
    a, b, c = weights
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # another seed: other weights


@pytest.mark.slow
def test_interrupted_build_leaves_no_final_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PSPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(
        tiny.RECIPES, "tiny-test", replace(tiny.RECIPES["tiny-test"], sft_steps=2, train_size=50)
    )

    def interrupt(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(tiny, "greedy_accuracy", interrupt)  # fails after training, before saving
    with pytest.raises(RuntimeError, match="interrupted"):
        tiny.ensure("tiny-test", progress=False)
    folder = tmp_path / "tiny" / f"tiny-test-{tiny.fingerprint('tiny-test')[:12]}"
    assert not folder.exists()
    # nothing of the build is left; the warm-start data's digest, kept for every later process, may be
    leftovers = [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock")]
    assert leftovers in ([], [".data-digests"])


@pytest.mark.slow
def test_saved_tokenizer_loads_as_built(tok, built, data_dir):
    """AutoTokenizer rebuilds any qwen2 folder's tokenizer as a Qwen2Tokenizer: it must encode the same."""
    loaded = AutoTokenizer.from_pretrained(built)
    assert loaded.chat_template == tiny.CHAT_TEMPLATE
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (0, 1, len(tok))
    records = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").open()][:100]
    texts = [r["question"] for r in records] + [r["answer"] for r in records]
    texts.append(render_prompt(tok, "Tab\there, caf\u00e9,  two spaces\n\nand <|end|> inside"))
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text


@pytest.mark.slow
def test_built_model_generates_left_padded_batches(built):
    source = loading.resolve("tiny-test")
    assert Path(source.path) == built
    tok = loading.load_tokenizer(source)
    assert tok.padding_side == "left" and tok.pad_token == "<|pad|>"
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    assert model.dtype == torch.float32
    assert 10_000 < model.num_parameters() < 100_000

    questions = [
        "Sam has 3 pens and buys 4 more. How many pens does Sam have?",
        "A box holds 12 eggs. How many eggs are in 5 boxes?",
        "Mia had 40 stickers and gave away 15. How many are left?",
    ]
    prompts = [render_prompt(tok, q) for q in questions]
    batch = tok(prompts, return_tensors="pt", padding=True)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    # the shortest prompt is padded on the left; the longest (words the domain lacks are bytes) is not
    assert batch["input_ids"][lengths.index(min(lengths)), 0] == tok.pad_token_id
    assert batch["input_ids"][lengths.index(max(lengths)), 0] == tok.convert_tokens_to_ids("<|user|>")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=40, do_sample=False)
    width = batch["input_ids"].shape[1]
    texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
    for prompt, text in zip(prompts, texts, strict=True):
        single = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            alone = model.generate(**single, max_new_tokens=40, do_sample=False)
        assert tok.decode(alone[0, single["input_ids"].shape[1] :], skip_special_tokens=True) == text
    assert any(ch.isdigit() for text in texts for ch in text)
    # generation stops at eos: whatever follows the first eos in a row is padding
    for row in out[:, width:].tolist():
        if tok.eos_token_id in row:
            assert set(row[row.index(tok.eos_token_id) + 1 :]) <= {tok.pad_token_id}


@pytest.mark.slow
def test_warm_start_teaches_the_answer_format(built):
    """Even the micro model writes ``#### N`` lines after its few warm-start steps."""
    from pspo_repro.data import synthetic

    tok = loading.load_tokenizer(loading.resolve(os.fspath(built)))
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    problems = synthetic.generate("validation", n=16)
    batch = tok([render_prompt(tok, p.question) for p in problems], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=48, do_sample=False)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert sum("####" in t for t in texts) >= 4


@pytest.mark.slow
def test_init_from_continues_the_parent(monkeypatch, built, tmp_path):
    """A model with ``init_from`` starts from the parent's warm-started weights, and its fingerprint
    follows the parent's recipe."""
    parent = tiny.RECIPES["tiny-test"]
    child = replace(parent, init_from="tiny-test", sft_steps=0, data_seed=1, eval_n=2, eval_max_new_tokens=4)
    monkeypatch.setitem(tiny.RECIPES, "tiny-test-child", child)
    record = tiny.build("tiny-test-child", tmp_path / "child", progress=False)
    assert record["final_sft_loss"] is None
    before = load_file(built / "model.safetensors")
    after = load_file(tmp_path / "child" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # zero steps: the parent's weights

    monkeypatch.setitem(tiny.RECIPES, "tiny-test-child", replace(child, sft_steps=3))
    tiny.build("tiny-test-child", tmp_path / "child3", progress=False)
    moved = load_file(tmp_path / "child3" / "model.safetensors")
    assert not all(torch.equal(before[k], moved[k]) for k in before)

    fingerprint = tiny.fingerprint("tiny-test-child")
    monkeypatch.setitem(tiny.RECIPES, "tiny-test", replace(parent, seed=7))
    assert tiny.fingerprint("tiny-test-child") != fingerprint

    monkeypatch.setitem(tiny.RECIPES, "tiny-test-child", replace(child, hidden_size=48))
    with pytest.raises(ValueError, match="hidden_size"):
        tiny.build("tiny-test-child", tmp_path / "bad", progress=False)
