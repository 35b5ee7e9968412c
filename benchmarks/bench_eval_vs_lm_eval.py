"""Our evaluator against lm-evaluation-harness: generation speed, and GSM8K answer decisions.

1. Speed. The same model, the same GSM8K test questions (default: the first 200), the same prompt (our
   rendered chat prompt is lm-eval's context string), greedy, the same ``max_new_tokens`` and batch
   size: our ``hf`` backend (the whole ``evaluate()`` path, grading and record writing included) against
   lm-eval's HuggingFace backend (``HFLM.generate_until``, generation only). lm-eval runs twice: with
   torch's default thread count, and with the thread count our backend chose, so that the evaluator
   itself is compared. Greedy completions of both are compared too (they should be identical).
2. Decisions. Completions go through lm-eval's own GSM8K filters (``strict-match`` and
   ``flexible-extract``, built from the installed ``gsm8k.yaml``) and its ``exact_match`` metric with the
   yaml's settings; every decision that differs from our strict/flexible grading is printed with the
   rule that explains it. Completion sources: the model's completions; SmolLM2 completions from
   ``benchmarks/smollm2_accuracy.py`` when its records exist; GSM8K reference solutions with
   perturbations (formatting variants of the final answer), which exercise the differences a tiny
   model's uniform completions do not.

Needs lm-eval in the environment (``pip install lm-eval``; not a project dependency).

Usage: python benchmarks/bench_eval_vs_lm_eval.py [--model NAME] [--n 200] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pspo_repro.data import loaders  # noqa: E402
from pspo_repro.data.prompts import render_prompt  # noqa: E402
from pspo_repro.evaluation import evaluate as ev  # noqa: E402
from pspo_repro.evaluation import grading  # noqa: E402
from pspo_repro.models import generation, loading, tiny  # noqa: E402
from pspo_repro.study import rundir  # noqa: E402


def default_model() -> str:
    """tiny-general-s when it is already built (building it takes long), else tiny-test."""
    folder = tiny._folder("tiny-general-s")
    return "tiny-general-s" if (folder / "recipe.json").is_file() else "tiny-test"


# ---------------------------------------------------------------- speed


def run_ours(model: str, n: int, batch_size: int, max_new_tokens: int, data_dir: Path) -> tuple[float, dict]:
    """Seconds to generate, grade and record ``n`` problems, and the completions by id."""
    with tempfile.TemporaryDirectory() as out:
        summary = ev.evaluate(
            model,
            ["gsm8k"],
            out,
            limit=n,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            data_dir=data_dir,
            progress=False,
        )
        records = rundir.read_jsonl(Path(out) / "eval" / "gsm8k.jsonl")
    return summary["benchmarks"]["gsm8k"]["generation_seconds"], {
        r["id"]: r["completions"][0] for r in records
    }


def run_lm_eval(
    model: str, problems: list, batch_size: int, max_new_tokens: int, threads: int | None
) -> tuple[float, dict]:
    """Seconds for lm-eval's ``HFLM.generate_until`` on the same prompts, and its completions by id."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    source = loading.resolve(model)
    tok = loading.load_tokenizer(source)
    hf_model = loading.load_model(source)
    prompts = [render_prompt(tok, p.question, p.kind) for p in problems]
    # max_length: lm-eval otherwise left-truncates contexts to (model positions - max_new_tokens), and
    # GSM8K prompts are longer than that for character-level tiny models; ours never truncates prompts.
    longest = max(len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"])
    lm = HFLM(
        pretrained=hf_model,
        tokenizer=tok,
        batch_size=batch_size,
        device="cpu",
        max_length=longest + max_new_tokens,
    )
    # "until" empty: lm-eval adds the model's eos string, our backend stops on the eos token.
    gen_kwargs = {"until": [], "max_gen_toks": max_new_tokens, "do_sample": False, "temperature": 0.0}
    requests = [
        Instance(
            "generate_until",
            doc={},
            arguments=(prompt, dict(gen_kwargs)),
            idx=i,
        )
        for i, prompt in enumerate(prompts)
    ]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        texts = lm.generate_until(requests, disable_tqdm=True)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return seconds, {p.id: t for p, t in zip(problems, texts, strict=True)}


# ---------------------------------------------------------------- decisions


def lm_eval_gsm8k_judge():
    """A function completion, gold solution -> {filter name: correct?} using lm-eval's own gsm8k.yaml."""
    import lm_eval
    import yaml
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import build_filter_ensemble

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    ensembles = [
        build_filter_ensemble(
            f["name"],
            [(step["function"], {k: v for k, v in step.items() if k != "function"}) for step in f["filter"]],
        )
        for f in task["filter_list"]
    ]
    metric = next(m for m in task["metric_list"] if m["metric"] == "exact_match")
    metric_kwargs = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}

    def judge(completions: list[str], solutions: list[str]) -> dict[str, list[tuple[bool, str]]]:
        instances = [
            Instance("generate_until", doc={}, arguments=("", {}), idx=i, resps=[c])
            for i, c in enumerate(completions)
        ]
        result = {}
        for ensemble in ensembles:
            ensemble.apply(instances)
            result[ensemble.name] = [
                (
                    bool(
                        exact_match_hf_evaluate([inst.filtered_resps[ensemble.name]], [sol], **metric_kwargs)[
                            "exact_match"
                        ]
                    ),
                    inst.filtered_resps[ensemble.name],
                )
                for inst, sol in zip(instances, solutions, strict=True)
            ]
        return result

    return judge


STRICT_FORMAT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval's strict-match regex (gsm8k.yaml)
FLEXIBLE_FORMAT = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval's flexible-extract regex


def lm_eval_normalised(text: str) -> str:
    """lm-eval's exact_match preprocessing with gsm8k.yaml's settings (ignores, then lower case)."""
    for pattern in (",", "\\$", "(?s).*#### ", "\\.$"):
        text = re.sub(pattern, "", text)
    return text.lower()


def explain(metric: str, completion: str, gold: str, lm_extracted: str, grade: grading.Grade) -> str | None:
    """The deliberate difference behind a differing decision, or None when none applies."""
    ours = getattr(grade, metric)
    lm_value_text = lm_eval_normalised(lm_extracted) if lm_extracted != "[invalid]" else None
    if ours and lm_value_text is not None and grading.numbers_equal(lm_value_text, gold):
        return "same number, other string (e.g. '18.00' vs '18'): ours compares numbers with tolerance, lm-eval strings"
    if metric == "strict":
        first = completion.find("####")
        lm_format_at_first = first >= 0 and STRICT_FORMAT.match(completion, first) is not None
        if ours and not lm_format_at_first:
            return "format: lm-eval needs '#### ' + digit ('####18', '#### $18', '####  18' fail); ours accepts them"
        if not ours and not lm_format_at_first and completion.count("####") > 1:
            return "ours reads the first '####' line only; lm-eval takes the first '#### N' anywhere"
        return None
    # flexible: the two last-number rules read different spans
    matches = list(FLEXIBLE_FORMAT.finditer(completion))
    if not matches:
        return None
    last = matches[-1]
    before = completion[last.start() - 1] if last.start() > 0 else " "
    span = last.group(0)
    if not any(ch.isdigit() for ch in span):
        return "lm-eval's flexible regex matches digit-free runs such as '...' or '$.' as the last number; ours needs digits"
    if before.isalpha() or before == "_":
        return "lm-eval reads digits glued to letters (e.g. 'x2', 'step2') as the last number; ours does not"
    if before == "/" or (last.end() < len(completion) and completion[last.end()] == "/"):
        return "ours reads 'a/b' as one number (a fraction); lm-eval reads its parts"
    ours_last = grading.last_number(completion)
    if (
        ours_last is not None
        and lm_eval_normalised(span) != lm_eval_normalised(ours_last)
        and re.search(r"\d[.,]{2,}|[.,]{2,}\d|\d[.,]\D", span + " ")
    ):
        return "lm-eval's span includes trailing/adjacent punctuation ('12.,', '3..') that ours leaves out"
    return None


def compare_decisions(
    label: str, completions: list[str], golds: list[str], solutions: list[str], judge, show: int | None = None
) -> tuple[int, int]:
    """Print differing decisions (all, or ``show`` examples per reason); returns (differing, unexplained)."""
    theirs = judge(completions, solutions)
    differing = unexplained = 0
    reasons: Counter = Counter()
    for metric, filter_name in (("strict", "strict-match"), ("flexible", "flexible-extract")):
        for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
            grade = grading.score(completion, gold, "numeric")
            ours = getattr(grade, metric)
            lm_ok, extracted = theirs[filter_name][i]
            if ours == lm_ok:
                continue
            differing += 1
            why = explain(metric, completion, gold, extracted, grade) or "UNEXPLAINED"
            reasons[why] += 1
            unexplained += why == "UNEXPLAINED"
            if show is None or reasons[why] <= show or why == "UNEXPLAINED":
                tail = completion[-100:].replace("\n", "\\n")
                print(
                    f"  [{label}] {metric}: ours={ours} lm-eval={lm_ok} gold={gold!r} "
                    f"lm-eval read {extracted!r}, ours {getattr(grade, metric + '_answer')!r}: ...{tail}\n"
                    f"      -> {why}"
                )
    print(
        f"[{label}] {len(completions)} completions x 2 filters: {differing} differing decisions, {unexplained} unexplained"
    )
    for why, count in reasons.most_common():
        print(f"    {count:5d}  {why}")
    return differing, unexplained


def perturbed_references(problems: list) -> tuple[list[str], list[str], list[str]]:
    """GSM8K reference solutions with the final answer written in ways models write it."""
    variants = [
        lambda body, n: f"{body}\n#### {n}",
        lambda body, n: f"{body}\n####{n}",
        lambda body, n: f"{body}\n#### ${n}",
        lambda body, n: f"{body}\n#### {n}.00",
        lambda body, n: f"{body}\n#### {n}.",
        lambda body, n: f"{body}\nThe answer is {n}.",
        lambda body, n: f"{body}\n#### {n} dollars",
        lambda body, n: f"{body}\n#### {int(n) + 1 if n.lstrip('-').isdigit() else n + '1'}",
        lambda body, n: f"{body}\n#### {n}\nI hope this helps with step 2.",
        lambda body, n: f"{body}\n#### {n}\n#### 0",
        lambda body, n: f"{body}\n**Answer:** {n}",
        lambda body, n: f"{body}\nSo the answer is {n}...",
        lambda body, n: f"{body}\nAnswer: {n} (see step2)",
        lambda body, n: f"{body}\nAnswer: {n}, about 1/3 of the total",
        lambda body, n: f"{body}\n#### {int(n):,}" if n.isdigit() else f"{body}\n#### {n}",
    ]
    completions, golds, solutions = [], [], []
    for p in problems:
        body = p.solution.rsplit("####", 1)[0].rstrip()
        for variant in variants:
            completions.append(variant(body, p.answer))
            golds.append(p.answer)
            solutions.append(p.solution)
    return completions, golds, solutions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="model spec (default: tiny-general-s if built, else tiny-test)"
    )
    parser.add_argument("--n", type=int, default=200, help="GSM8K test problems")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--smollm2-records", type=Path, default=REPO / "results" / "smollm2" / "eval" / "gsm8k.jsonl"
    )
    parser.add_argument("--skip-speed", action="store_true", help="only compare decisions")
    parser.add_argument(
        "--same-threads-only",
        action="store_true",
        help="skip lm-eval with torch's default threads (very slow on a busy machine)",
    )
    args = parser.parse_args()

    model = args.model or default_model()
    problems = loaders.load("gsm8k", data_dir=args.data_dir, limit=args.n)
    unexplained_total = 0
    if not args.skip_speed:
        print(
            f"model {model}, {len(problems)} GSM8K problems, batch {args.batch_size}, {args.max_new_tokens} new tokens, greedy"
        )
        ours_s, ours_text = run_ours(model, args.n, args.batch_size, args.max_new_tokens, args.data_dir)
        source = loading.resolve(model)
        n_params = sum(p.numel() for p in loading.load_model(source).parameters())
        threads = generation.cpu_threads(n_params)
        lm_same_s, lm_text = run_lm_eval(model, problems, args.batch_size, args.max_new_tokens, threads)
        n = len(problems)
        print(
            f"ours (evaluate, hf backend, {threads} thread(s)): {ours_s:7.1f} s  {n / ours_s:7.2f} completions/s"
        )
        print(
            f"lm-eval HFLM, {threads} thread(s):                  {lm_same_s:7.1f} s  {n / lm_same_s:7.2f} completions/s"
        )
        print(f"speed ratio (lm-eval seconds / ours), same threads: {lm_same_s / ours_s:.2f}x")
        if not args.same_threads_only:
            import torch

            lm_default_s, _ = run_lm_eval(model, problems, args.batch_size, args.max_new_tokens, None)
            print(
                f"lm-eval HFLM, torch default ({torch.get_num_threads()} threads): {lm_default_s:7.1f} s  "
                f"{n / lm_default_s:7.2f} completions/s; ratio {lm_default_s / ours_s:.2f}x"
            )
        same = sum(ours_text[p.id].strip() == lm_text[p.id].strip() for p in problems)
        print(f"identical greedy completions: {same}/{n}")
        for p in problems:
            if ours_text[p.id].strip() != lm_text[p.id].strip():
                print(f"  differs on {p.id}: ours {ours_text[p.id][:80]!r} vs lm-eval {lm_text[p.id][:80]!r}")
        comps = [ours_text[p.id] for p in problems]
        _, u = compare_decisions(
            model,
            comps,
            [p.answer for p in problems],
            [p.solution for p in problems],
            judge := lm_eval_gsm8k_judge(),
        )
        unexplained_total += u
    else:
        judge = lm_eval_gsm8k_judge()

    if args.smollm2_records.is_file():
        by_id = {p.id: p for p in loaders.load("gsm8k", data_dir=args.data_dir)}
        records = [r for r in rundir.read_jsonl(args.smollm2_records) if r["id"] in by_id]
        comps = [c for r in records for c in r["completions"]]
        golds = [r["gold"] for r in records for _ in r["completions"]]
        sols = [by_id[r["id"]].solution for r in records for _ in r["completions"]]
        _, u = compare_decisions("smollm2", comps, golds, sols, judge)
        unexplained_total += u
    else:
        print(f"(no SmolLM2 records at {args.smollm2_records}: run benchmarks/smollm2_accuracy.py first)")

    comps, golds, sols = perturbed_references(problems)
    _, u = compare_decisions("perturbed references", comps, golds, sols, judge, show=2)
    unexplained_total += u
    print(f"unexplained differing decisions, all sources: {unexplained_total}")
    return 0 if unexplained_total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
