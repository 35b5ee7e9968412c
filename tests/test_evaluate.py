"""The evaluator: statistics (pspo_repro.evaluation.stats), records and summary, resume after interruption, the
backends' stop tokens (pspo_repro.evaluation.backends), and clear errors."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest

from pspo_repro.data import loaders, prompts
from pspo_repro.evaluation import backends, grading, stats
from pspo_repro.evaluation import evaluate as ev
from pspo_repro.models import generation, loading, tiny
from pspo_repro.study import rundir

# --------------------------------------------------------------------------- statistics (no model)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding at least one correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert stats.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_forms_and_bad_input():
    assert stats.pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the sample accuracy
    assert stats.pass_at_k(16, 4, 16) == 1.0
    assert stats.pass_at_k(16, 0, 8) == 0.0
    assert stats.pass_at_k(16, 1, 8) == pytest.approx(0.5)  # the one correct sample is in half the subsets
    with pytest.raises(ValueError, match="k=5"):
        stats.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5"):
        stats.pass_at_k(4, 5, 1)


def test_wilson_interval_known_values():
    # Reference values: statsmodels proportion_confint(method="wilson") / Wilson (1927).
    assert stats.wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    # Defining property: the bounds are the p at which the score statistic |p_hat - p| / se(p) equals z.
    successes, n = 81, 263
    p_hat = successes / n
    lo, hi = stats.wilson_interval(successes, n)
    for bound in (lo, hi):
        assert abs(p_hat - bound) / math.sqrt(bound * (1 - bound) / n) == pytest.approx(1.959964, abs=1e-6)
    assert lo < p_hat < hi
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes=3, n=2"):
        stats.wilson_interval(3, 2)


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_order():
    same = lambda a, b: ev.answers_equivalent(a, b, "numeric")  # noqa: E731
    assert stats.majority_vote(["7", "12", "12.0", "$12", None, None, None], same) == 1
    assert stats.majority_vote(["7", "12", "7", "12"], same) == 0  # tie: the group seen first wins
    assert stats.majority_vote([None, None], same) is None
    latex = lambda a, b: ev.answers_equivalent(a, b, "latex")  # noqa: E731
    assert stats.majority_vote(["3", "\\frac{1}{2}", "0.5", "\\dfrac12"], latex) == 1


def test_parse_benchmarks():
    assert ev.parse_benchmarks("gsm8k, svamp,gsm8k") == ["gsm8k", "svamp"]
    assert ev.parse_benchmarks("all") == [b for b in loaders.BENCHMARKS if not b.startswith("synthetic")]
    assert ev.parse_benchmarks("synthetic-all") == ["synthetic", "synthetic-svamp", "synthetic-asdiv"]
    assert ev.parse_benchmarks("paper") == ["gsm8k", "svamp", "asdiv", "math500"]
    assert ev.parse_benchmarks("MATH-500") == ["math500"]
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; known benchmarks: gsm8k, math"):
        ev.parse_benchmarks("gsm8k,gsm9k")
    with pytest.raises(ValueError, match="no benchmark"):
        ev.parse_benchmarks(" , ")


def test_default_budgets_cover_every_benchmark():
    assert set(ev.DEFAULT_MAX_NEW_TOKENS) == set(loaders.BENCHMARKS)
    assert ev.DEFAULT_MAX_NEW_TOKENS["gsm8k"] == 128  # the paper's budget
    assert ev.DEFAULT_MAX_NEW_TOKENS["math500"] >= 512  # hazard 3: MATH needs far more than 128


def _record(completions: list[str], gold: str, kind: str = "numeric", benchmark: str = "gsm8k") -> dict:
    record = {
        "id": "x",
        "benchmark": benchmark,
        "kind": kind,
        "gold": gold,
        "completions": completions,
        "num_tokens": [len(c) for c in completions],
        "truncated": [False] * len(completions),
        "metadata": {},
    }
    record["grades"] = ev.grade_record(record)
    return record


def test_paper_metric_differs_from_strict_and_flexible_in_a_summary():
    # "#### 42 apples and 2 pears": strict reads 42; flexible and the paper's grading read the last number, 2
    # "####\n42\nin 3 steps": strict finds nothing on the #### line; the paper reads 42 across the newline
    records = [_record(["#### 42 apples and 2 pears"], "42"), _record(["####\n42\nin 3 steps"], "42")]
    metrics = ev.summarize_benchmark(records)["metrics"]
    assert {m: metrics[m]["correct"] for m in ev.METRICS} == {
        "strict": 1,
        "flexible": 0,
        "permissive": 2,
        "paper": 1,
    }
    assert records[0]["grades"][0]["paper_answer"] == "2" and records[1]["grades"][0]["paper_answer"] == "42"


def test_records_from_before_the_paper_metric_are_graded_again_on_resume(tmp_path):
    """Records written before the paper metric and the system prompt setting existed are kept: they were
    made with the default system prompt, and their completions are graded again."""
    record = _record(["####\n42\nin 3 steps"], "42")
    settings = {"seed": 0, "system_prompt": "default"}
    old = {
        **record,
        "settings": {"seed": 0},
        "grades": [{k: v for k, v in g.items() if not k.startswith("paper")} for g in record["grades"]],
    }
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(old) + "\n")
    done = ev._existing_records(path, settings, overwrite=False)
    assert done["x"]["grades"][0]["paper"] is True
    assert ev.summarize_benchmark(list(done.values()))["metrics"]["paper"]["correct"] == 1
    with pytest.raises(ValueError, match="system_prompt: 'default' there, 'authors' now"):
        ev._existing_records(path, {**settings, "system_prompt": "authors"}, overwrite=False)


def test_summary_of_sampled_records():
    records = [
        # strict: 2 of 4 right ("12", "12.0"; the last has no ####); majority "12" beats "7": right
        _record(["#### 12", "#### 7", "#### 12.0", "The answer is 12"], "12"),
        # majority "7" is wrong although one sample is right
        _record(["#### 7", "#### 7", "#### 12", "I think 7"], "12"),
        # nothing right; the strict vote is a tie between "1" and "2"
        _record(["#### 1", "no idea", "#### 2", "3"], "12"),
    ]
    summary = ev.summarize_benchmark(records)
    assert summary["n_problems"] == 3 and summary["n_samples"] == 4
    strict = summary["metrics"]["strict"]
    assert strict["accuracy"] == pytest.approx(1 / 3) and strict["correct"] == 1  # first samples
    assert strict["ci95"] == pytest.approx(list(stats.wilson_interval(1, 3)))
    counts = [2, 1, 0]
    for k in (1, 2, 4):
        expected = sum(brute_force_pass_at_k(4, c, k) for c in counts) / 3
        assert strict["pass_at_k"][str(k)] == pytest.approx(expected)
    assert set(strict["pass_at_k"]) == {"1", "2", "4"}  # k <= n only
    assert strict["mean_sample_accuracy"] == pytest.approx(3 / 12)
    assert strict["majority_vote"] == pytest.approx(1 / 3)
    flexible = summary["metrics"]["flexible"]  # "The answer is 12" counts as 12 too: 3 votes vs 1
    assert flexible["pass_at_k"]["1"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert flexible["majority_vote"] == pytest.approx(1 / 3)
    assert "majority_vote" not in summary["metrics"]["permissive"]  # nothing to vote over
    paper = summary["metrics"]["paper"]  # the paper's grading reads "The answer is 12" and "I think 7" too
    assert paper["pass_at_k"]["1"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert paper["accuracy"] == pytest.approx(1 / 3) and paper["majority_vote"] == pytest.approx(1 / 3)
    table = ev.summary_table({"benchmarks": {"gsm8k": {**summary, "max_new_tokens": 128}}})
    assert "gsm8k" in table and " 33.3% [" in table and "majority vote 33.3%" in table
    assert table.splitlines()[0].split("|")[1:5] == [f" {m:>19} " for m in ev.METRICS]
    assert ev.METRICS == ("strict", "flexible", "permissive", "paper")
    assert f"pass@2 {100 * strict['pass_at_k']['2']:.1f}%" in table
    assert summary["mean_completion_tokens"] == pytest.approx(
        sum(len(c) for r in records for c in r["completions"]) / 12
    )


# --------------------------------------------------------------------------- end to end (micro model)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A model folder: tiny-test's architecture and character tokenizer with random weights.

    Accuracy is irrelevant to these tests, and this takes a second where warm-starting tiny-test takes
    a minute or more on a busy CPU (that path is covered by the slow test at the end).
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = tmp_path_factory.mktemp("micro-model")
    tok = tiny.build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=1.0,  # large random weights: varied characters and the odd eos, not one token
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_records_are_well_formed_on_every_benchmark(model, data_dir, tmp_path):
    budget = 24  # small, so MATH stays fast; truncation is then common and must be flagged
    summary = ev.evaluate(
        model,
        "all,synthetic-all",
        tmp_path,
        limit=2,
        max_new_tokens=budget,
        data_dir=data_dir,
        progress=False,
    )
    categories = {"svamp": "type", "asdiv": "solution_type", "math": "subject", "math500": "level"}
    for name in loaders.BENCHMARKS:
        problems = loaders.load(name, data_dir=data_dir, limit=2)
        records = _lines(tmp_path / "eval" / f"{name}.jsonl")
        assert sorted(r["id"] for r in records) == sorted(p.id for p in problems)
        by_id = {p.id: p for p in problems}
        for r in records:
            p = by_id[r["id"]]
            assert r["gold"] == p.answer and r["kind"] == p.kind and r["benchmark"] == name
            assert r["prompt"].endswith("<|assistant|>") and p.question in r["prompt"]
            assert (
                len(r["completions"]) == len(r["num_tokens"]) == len(r["truncated"]) == len(r["grades"]) == 1
            )
            assert 0 <= r["num_tokens"][0] <= budget
            assert r["truncated"][0] == (r["num_tokens"][0] == budget)
            assert r["settings"]["max_new_tokens"] == budget and r["settings"]["temperature"] == 0.0
            if name in categories:
                assert r["metadata"][categories[name]] == p.metadata[categories[name]]
            # the stored grades are exactly what the graders say about the stored completion
            recomputed = grading.score(r["completions"][0], r["gold"], r["kind"]).as_dict()
            assert r["grades"][0] == recomputed
            assert set(recomputed) >= {"strict", "flexible", "permissive", "strict_answer", "flexible_answer"}
        entry = summary["benchmarks"][name]
        assert entry["n_problems"] == 2 and entry["max_new_tokens"] == budget
        for metric in ev.METRICS:
            correct = sum(
                getattr(grading.score(r["completions"][0], r["gold"], r["kind"]), metric) for r in records
            )
            assert entry["metrics"][metric]["correct"] == correct
            assert entry["metrics"][metric]["ci95"] == pytest.approx(list(stats.wilson_interval(correct, 2)))
        assert entry["truncated_fraction"] == sum(r["truncated"][0] for r in records) / 2
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["settings"]["limit"] == 2 and on_disk["settings"]["model"] == model
    assert set(on_disk["benchmarks"]["math500"]["categories"]) == {"subject", "level"}


@pytest.mark.slow
def test_default_budget_and_batching_do_not_change_greedy_completions(model, data_dir, tmp_path):
    one = ev.evaluate(model, ["synthetic"], tmp_path / "a", limit=6, batch_size=1, progress=False)
    six = ev.evaluate(model, ["synthetic"], tmp_path / "b", limit=6, batch_size=6, progress=False)
    assert one["benchmarks"]["synthetic"]["max_new_tokens"] == 64
    a = {r["id"]: r["completions"] for r in _lines(tmp_path / "a" / "eval" / "synthetic.jsonl")}
    b = {r["id"]: r["completions"] for r in _lines(tmp_path / "b" / "eval" / "synthetic.jsonl")}
    assert a == b  # left padding and length sorting leave greedy outputs unchanged
    assert six["benchmarks"]["synthetic"]["metrics"] == one["benchmarks"]["synthetic"]["metrics"]


def test_sampling_gives_pass_at_k_and_is_reproducible(model, tmp_path):
    kwargs = dict(limit=3, temperature=1.0, n_samples=4, max_new_tokens=16, seed=7, progress=False)
    summary = ev.evaluate(model, ["synthetic"], tmp_path / "a", **kwargs)
    ev.evaluate(model, ["synthetic"], tmp_path / "b", **kwargs)
    records = _lines(tmp_path / "a" / "eval" / "synthetic.jsonl")
    assert [r["completions"] for r in records] == [
        r["completions"] for r in _lines(tmp_path / "b" / "eval" / "synthetic.jsonl")
    ]
    assert all(len(r["completions"]) == 4 for r in records)
    assert any(len(set(r["completions"])) > 1 for r in records)  # temperature 1 does sample
    strict = summary["benchmarks"]["synthetic"]["metrics"]["strict"]
    counts = [sum(g["strict"] for g in r["grades"]) for r in records]
    for k in (1, 2, 4):
        assert strict["pass_at_k"][str(k)] == pytest.approx(sum(stats.pass_at_k(4, c, k) for c in counts) / 3)
    assert "majority_vote" in strict
    assert summary["settings"]["n_samples"] == 4 and summary["settings"]["temperature"] == 1.0


@pytest.mark.slow
def test_resume_after_interruption_neither_duplicates_nor_drops(model, tmp_path):
    first = ev.evaluate(model, ["synthetic"], tmp_path, limit=4, max_new_tokens=32, progress=False)
    path = tmp_path / "eval" / "synthetic.jsonl"
    full = path.read_text()
    lines = full.splitlines(keepends=True)
    assert len(lines) == 4
    # interrupted while writing the third record: two whole lines and half a line on disk
    path.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    resumed = ev.evaluate(model, ["synthetic"], tmp_path, limit=4, max_new_tokens=32, progress=False)
    assert resumed["benchmarks"]["synthetic"]["generated_problems"] == 2
    after = path.read_text().splitlines(keepends=True)
    assert after[:2] == lines[:2]  # recorded problems are kept as they were
    assert sorted(json.loads(x)["id"] for x in after) == sorted(json.loads(x)["id"] for x in lines)

    def without_time(texts: list[str]) -> list[dict]:
        return sorted(({**json.loads(x), "generation_seconds": None} for x in texts), key=lambda r: r["id"])

    # greedy: the regenerated records are the same records (all but the time each took)
    assert without_time(after) == without_time(lines)
    assert resumed["benchmarks"]["synthetic"]["metrics"] == first["benchmarks"]["synthetic"]["metrics"]
    # a finished benchmark is not redone; a larger limit only adds the new problems
    again = ev.evaluate(model, ["synthetic"], tmp_path, limit=4, max_new_tokens=32, progress=False)
    assert again["benchmarks"]["synthetic"]["generated_problems"] == 0 and path.read_text() == "".join(after)
    # a summary rebuilt from the records keeps what generating them cost: the sum of their shares
    shares = [json.loads(x)["generation_seconds"] for x in after]
    assert all(s > 0 for s in shares)
    assert again["benchmarks"]["synthetic"]["generation_seconds"] == pytest.approx(sum(shares), abs=1e-3)
    more = ev.evaluate(model, ["synthetic"], tmp_path, limit=6, max_new_tokens=32, progress=False)
    assert more["benchmarks"]["synthetic"]["generated_problems"] == 2
    assert more["benchmarks"]["synthetic"]["n_problems"] == 6 and len(_lines(path)) == 6


def test_other_settings_are_refused_unless_overwrite(model, tmp_path):
    ev.evaluate(model, ["synthetic"], tmp_path, limit=2, max_new_tokens=8, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens: 8 there, 9 now\).*overwrite"):
        ev.evaluate(model, ["synthetic"], tmp_path, limit=2, max_new_tokens=9, progress=False)
    summary = ev.evaluate(
        model, ["synthetic"], tmp_path, limit=2, max_new_tokens=9, overwrite=True, progress=False
    )
    records = _lines(tmp_path / "eval" / "synthetic.jsonl")
    assert len(records) == 2 and {r["settings"]["max_new_tokens"] for r in records} == {9}
    assert summary["benchmarks"]["synthetic"]["generated_problems"] == 2


def test_a_corrupt_complete_line_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        rundir.read_jsonl(path)
    path.write_text('{"id": "a"}\n{"id": "b", "compl')  # a cut-short last line is ignored
    assert rundir.read_jsonl(path) == [{"id": "a"}]


def test_an_append_after_a_crash_cuts_the_torn_line_first(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "completions": ["a long cut-short wri')
    rundir.append_jsonl(path, {"id": "c"})
    assert path.read_text() == '{"id": "a"}\n{"id": "c"}\n'
    # the torn line longer than the block read from the end; a file that is one torn line
    path.write_text('{"id": "a"}\n' + "x" * 50)
    rundir._cut_torn_line(path, block=8)
    assert path.read_text() == '{"id": "a"}\n'
    path.write_text("x" * 50)
    rundir.append_jsonl(path, {"id": "d"})
    assert rundir.read_jsonl(path) == [{"id": "d"}]


# --------------------------------------------------------------------------- clear errors


def test_unknown_benchmark_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'.*gsm8k, math, math500, svamp, asdiv"):
        ev.evaluate("tiny-test", ["gsm9k"], tmp_path, progress=False)
    assert not (tmp_path / "eval").exists()


def test_missing_model_path(tmp_path, data_dir):
    missing = tmp_path / "runs" / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ev.evaluate(str(missing), ["gsm8k"], tmp_path / "out", limit=1, data_dir=data_dir, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-data"):
        ev.evaluate("tiny-test", ["gsm8k"], tmp_path, data_dir=tmp_path / "no-such-data", progress=False)


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="needs temperature > 0"):
        ev.evaluate("tiny-test", ["synthetic"], tmp_path, n_samples=4, progress=False)
    with pytest.raises(ValueError, match="unknown backend 'tgi'; allowed: hf, vllm"):
        ev.evaluate("tiny-test", ["synthetic"], tmp_path, backend="tgi", progress=False)
    with pytest.raises(ValueError, match="top_p"):
        ev.evaluate("tiny-test", ["synthetic"], tmp_path, temperature=1.0, top_p=0.0, progress=False)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_says_how_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"pip install 'pspo-repro\[vllm\]'"):
        ev.evaluate("tiny-test", ["synthetic"], tmp_path, backend="vllm", limit=1, progress=False)
    with pytest.raises(ImportError, match=r"pip install 'pspo-repro\[vllm\]'"):
        backends.VLLMBackend(loading.ModelSource(str(tmp_path)))


@pytest.mark.slow
def test_a_tiny_model_by_name(tmp_path, monkeypatch):
    """The named path: tiny-test is warm-started into a scratch cache, then evaluated."""
    monkeypatch.setenv("PSPO_CACHE_DIR", str(tmp_path / "cache"))
    summary = ev.evaluate("tiny-test", ["synthetic"], tmp_path / "out", limit=4, progress=False)
    records = _lines(tmp_path / "out" / "eval" / "synthetic.jsonl")
    assert len(records) == 4 and {r["settings"]["model"] for r in records} == {"tiny-test"}
    assert records[0]["prompt"].startswith("<|user|>")  # the tiny chat template, no system message
    assert summary["benchmarks"]["synthetic"]["n_problems"] == 4


def test_evaluation_stops_where_trl_training_rollouts_stop(tiny_model, tmp_path):
    """The stop tokens are TRL GRPOTrainer's own (the tokenizer's eos and the generation config's eos ids),
    read from a real trainer; a ChatML end of turn that neither names does not stop a completion."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    declared = tokenizer.convert_tokens_to_ids("#")  # an eos the model declares besides the tokenizer's
    model.generation_config.eos_token_id = [declared]

    def zero(completions: list, **_) -> list[float]:
        return [0.0] * len(completions)

    config = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=1,
        use_cpu=True,
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=zero,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
        processing_class=tokenizer,
    )
    stops = generation.stop_token_ids(tokenizer, model.generation_config)
    assert stops == sorted(trainer.eos_token_ids) == sorted({tokenizer.eos_token_id, declared})
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in stops


def test_validation_evaluation_and_the_build_check_share_one_greedy_generation(model):
    """Validation and the tiny models' build check (greedy_completions) produce exactly the completions the
    hf evaluation backend produces, whatever the batching, and leave the model's mode as it was."""
    from transformers import AutoModelForCausalLM

    problems = loaders.load("synthetic", "validation", limit=6)
    hf = backends.HFBackend(loading.resolve(model), batch_size=4, device="cpu")
    texts = [prompts.render_prompt(hf.tokenizer, p.question, p.kind) for p in problems]
    evaluated = [g.texts[0] for g in hf.generate(texts, 1, 0.0, 1.0, 24, 0)]
    trainee = AutoModelForCausalLM.from_pretrained(model).train()
    validated = generation.greedy_completions(trainee, hf.tokenizer, texts, 24, batch_size=5)
    assert validated == evaluated and trainee.training
    assert len({len(t) for t in evaluated}) > 1  # the completions differ, so the comparison means something
    correct = sum(grading.score(c, p.answer, p.kind).strict for c, p in zip(validated, problems, strict=True))
    assert tiny.greedy_accuracy(trainee, hf.tokenizer, problems, 24, batch_size=2) == correct / len(problems)


# --------------------------------------------------------------------------- precision (validation = evaluation)


def test_validation_and_evaluation_run_on_the_same_precision():
    """Training keeps float32 master weights under bf16 autocast on a GPU, and validation runs on that model;
    evaluation loads the checkpoint's float32 weights under the same autocast (float32 alone on a CPU, or
    when the run turned bf16 off). vLLM, which has no autocast, is given bf16 explicitly."""
    import torch

    from pspo_repro.models import precision

    on_gpu = precision.for_device("cuda")
    assert (on_gpu.weights, on_gpu.autocast) == ("float32", "bfloat16")
    assert on_gpu.weights_dtype is torch.float32  # never bf16 weights: the checkpoint's float32 ones
    assert precision.for_device("cuda:1") == on_gpu
    assert precision.for_device("cpu") == precision.Precision("float32", None)
    assert precision.for_device("cuda", bf16=False) == precision.Precision("float32", None)
    assert (
        on_gpu.vllm_dtype == "bfloat16" and precision.for_device("cuda", bf16=False).vllm_dtype == "float32"
    )
    assert on_gpu.record() == {"weights": "float32", "autocast": "bfloat16"}
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        precision.for_device("mps")


def test_the_vllm_engine_gets_its_dtype_explicitly(tmp_path):
    """vLLM's dtype 'auto' would follow each checkpoint's config (and pick float16 for a float32 checkpoint on
    a GPU without bf16); the engine's arguments name the dtype. Built without importing vLLM."""
    from pspo_repro.models import precision

    source = loading.ModelSource(str(tmp_path))
    kwargs = backends.vllm_llm_kwargs(source, seed=3, precision=precision.for_device("cuda"))
    assert kwargs == {"model": str(tmp_path), "tokenizer": str(tmp_path), "seed": 3, "dtype": "bfloat16"}
    gguf = loading.ModelSource(str(tmp_path), "m.gguf")
    fp32 = backends.vllm_llm_kwargs(gguf, seed=0, precision=precision.for_device("cuda", bf16=False))
    assert fp32["model"] == fp32["tokenizer"] == str(tmp_path / "m.gguf") and fp32["dtype"] == "float32"


def test_the_evaluation_summary_records_its_precision(model, tmp_path):
    summary = ev.evaluate(model, ["synthetic"], tmp_path, limit=2, progress=False)
    expected = {"backend": "hf", "device": "cpu", "weights": "float32", "autocast": None}
    assert summary["settings"]["precision"] == expected
    assert summary["benchmarks"]["synthetic"]["precision"] == expected
    assert rundir.read_json(tmp_path / "eval" / rundir.SUMMARY)["settings"]["precision"] == expected
