"""The claims audit: written from a real small study, verdicts by rule, the same file when regenerated,
sections without their runs skipped with the runs named; and the audit profile's runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pspo_repro.analysis import audit, report
from pspo_repro.study import profiles, runner
from pspo_repro.training.settings import TrainSettings

PROFILE = {
    "name": "audit-test",
    "seeds": [0, 1],
    "train": {
        "dataset": "synthetic",
        "learning_rate": 1.0e-3,
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "max_steps": 4,
        "batch_size": 16,
        "grad_accum": 1,
        "steps_per_generation": 2,
        "num_iterations": 2,
        "num_generations": 4,
        "max_completion_length": 24,
        "eval_every": 4,
        "validation_limit": 16,
        "eval_batch_size": 16,
        "probe_every": 3,
    },
    "models": ["tiny-test"],
    "objectives": {
        "clip": {"eps": 0.2},
        "clip-eps0": {"objective": "clip", "eps": 0.0},
        "pspo": {"alpha": 0.1},
        "pspo-a0.4": {"objective": "pspo", "alpha": 0.4},
        "noclip": {},
        "clip-shuffled": {"objective": "clip", "eps": 0.2, "shuffle_advantages": True},
        "noclip-sgd": {"objective": "noclip", "optimizer": "sgd", "learning_rate": 0.5},
        "pspo-sgd": {"objective": "pspo", "alpha": 0.1, "optimizer": "sgd", "learning_rate": 0.5},
        "pspo-a0.9-sgd": {"objective": "pspo", "alpha": 0.9, "optimizer": "sgd", "learning_rate": 0.5},
    },
    "eval": {"benchmarks": ["synthetic"], "limit": 16, "batch_size": 16},
}


@pytest.fixture(scope="module")
def audited(tiny_model, tmp_path_factory):
    """A real study of 18 four-step runs on tiny-test, audited once (identities measured)."""
    root = tmp_path_factory.mktemp("audit")
    profile = root / "audit-test.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    result = runner.run_study(str(profile), root / "runs", root / "results", workers=2, progress=False)
    assert not result.failed
    path = audit.run_audit(str(profile), root / "runs", root / "results", identity_steps=4)
    return root, profile, path


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.splitlines()[0]: p for p in parts}


def verdict(section: str) -> str | None:
    found = re.search(r"\*\*Verdict: (.+?)\.\*\*", section)
    return found.group(1) if found else None


@pytest.mark.slow
def test_every_claim_has_a_section_with_a_verdict_or_its_missing_runs(audited):
    root, _, path = audited
    assert path == root / "results" / "audit-test" / "audit.md"
    found = sections(path.read_text())
    # the headline comes first: PSPO against the clip, decomposed (here: against the clip alone)
    headline = found.pop("Headline: PSPO against the clip, decomposed")
    assert "| tiny-test | the clip at the intended eps |" in headline
    assert len(found) == len(audit.SECTIONS) == 15
    for title, body in found.items():
        assert verdict(body) in audit.VERDICTS or "Not tested: runs missing" in body, title
        assert "Reproduce: `pspo-repro study --profile" in body
    # the identities hold on the study's own training batches
    assert verdict(found["PSPO is a rescaled unclipped surrogate"]) == audit.SUPPORTED
    # the pi~ identity holds (a fact beside the verdict, which is on how far pi_theta moves)
    assert "The identity for pi~ (a fact, not the verdict): it holds" in found["Soft trust region"]
    # the staleness-0 ratio is measured beside the identities, in both precisions (its verdict depends on
    # the machine's kernels)
    assert verdict(found["The ratio at staleness 0"]) in audit.VERDICTS
    # PSPO's weight (1 - alpha) r is never 0: the gradient-preservation rule can only say supported or
    # inconclusive (when no clip binds), never not supported
    assert verdict(found["Gradient preservation"]) in (audit.SUPPORTED, audit.INCONCLUSIVE)
    # runs under SGD at two alphas and noclip: the SGD section is tested
    assert verdict(found["Does alpha matter under SGD?"]) in audit.VERDICTS
    # no sigmoid or topr run: those sections name what is missing
    assert "needs finished sigmoid runs" in found["Sigmoid saturation"]
    assert "needs finished topr runs" in found["TOPR under group-relative advantages"]
    assert (path.parent / "audit-zero-gradient.png").stat().st_size > 1000


@pytest.mark.slow
def test_numbers_come_from_the_run_folders(audited):
    root, _, path = audited
    runs = audit.load_runs(root / "runs" / "audit-test")
    clip_max = max(p["zero_weight_frac"] or 0.0 for r in runs if r.objective == "clip" for p in r.probes)
    text = sections(path.read_text())["Gradient preservation"]
    assert f"clip {100 * clip_max:.3f}%" in text
    ident = json.loads((path.parent / "identities.json").read_text())
    assert set(ident) == {"tiny-test/clip/seed0", "tiny-test/pspo/seed0"}
    worst = max(m["grad_rel_diff_max"] for m in ident.values())
    assert 0 < worst < 1e-4
    # each run's first generation (8 prompts x 4 rollouts in micro-batches of 16), scored at staleness 0
    for m in ident.values():
        zero = m["staleness_zero"]
        assert (zero["completions"], zero["micro_batch"], zero["device"]) == (32, 16, "cpu")
        assert {(r["precision"], r["pairing"]) for r in zero["records"]} >= {
            ("float32", "old 16 / train 16 shuffled"),
            ("bf16", "old all / train 8"),
        }
    assert f"Largest relative difference: {worst:.2e}." in path.read_text()


@pytest.mark.slow
def test_regenerating_from_the_same_results_gives_the_same_file(audited):
    root, profile, path = audited
    first = path.read_bytes()
    again = audit.run_audit(str(profile), root / "runs", root / "results", measure=False)
    assert again.read_bytes() == first


@pytest.mark.slow
def test_the_report_audits_a_study_made_from_a_profile_file(audited, tmp_path):
    """The report gives its notebooks the study's name, not the file: the audit notebook finds the study's
    profile by that name (the one the study wrote beside its tables) and writes the same audit as
    `pspo-repro audit --profile FILE`, up to the profile's spelling."""
    root, profile, path = audited
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    (results / "audit-test" / "audit.md").unlink()
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(report.NOTEBOOKS_DIR / "audit.ipynb", notebooks)
    executed = report.run_report(
        str(profile), root / "runs", results, tmp_path / "figures", notebooks, workers=1
    )
    assert [(e.name, e.error) for e in executed] == [("audit", None)]
    expected = path.read_text().replace(str(profile), "audit-test")
    assert (results / "audit-test" / "audit.md").read_text() == expected


def test_an_unknown_profile_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown profile 'no-such-study': .*packaged profiles \['audit'"):
        audit.run_audit("no-such-study", tmp_path / "runs", tmp_path / "results", measure=False)


@pytest.mark.slow
def test_the_verdict_follows_the_data(audited, tmp_path):
    """Edit one probe record of a PSPO run so that it zeroes a gradient: the rule turns the verdict."""
    root, profile, _ = audited
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    probes = runs / "audit-test" / "tiny-test" / "pspo" / "seed0" / "probes.jsonl"
    records = [json.loads(line) for line in probes.read_text().splitlines()]
    records[-1]["zero_weight_frac"] = 0.25
    probes.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = audit.write_audit(
        runs / "audit-test", tmp_path / "results", "audit-test", "synthetic", None, plot=False
    )
    found = sections(out.read_text())
    assert verdict(found["Gradient preservation"]) == audit.NOT_SUPPORTED
    assert "PSPO 25.000%" in found["Gradient preservation"]
    assert "no identity measurements" in found["Soft trust region"]


def test_an_empty_study_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        audit.write_audit(tmp_path, tmp_path / "out", "x", "synthetic", None)


def test_audit_profile_adds_its_arms_to_the_cpu_study_on_one_model():
    profile = profiles.load_profile("audit")
    assert profile["name"] == "cpu"  # the cpu study's folder: its runs are reused
    audit_runs = {(r.model, r.label, r.seed): r.settings for r in profiles.expand(profile)}
    cpu_runs = {(r.model, r.label, r.seed): r.settings for r in profiles.expand(profiles.load_profile("cpu"))}
    assert len(audit_runs) == 22 * 2 * 2  # arms x builds x seeds
    shared = set(audit_runs) & set(cpu_runs)
    assert shared == {k for k in cpu_runs if k[0].startswith("tiny-general-l@")}  # every cpu run on the model
    assert all(audit_runs[k] == cpu_runs[k] for k in shared)  # ... with the same settings, so it is reused
    assert {model for model, _, _ in audit_runs} == {"tiny-general-l@0", "tiny-general-l@1"}
    assert {label for _, label, _ in set(audit_runs) - shared} == {
        "sigmoid",
        "topr",
        "noclip-onpolicy",
        "clip-stress",
        "pspo-stress",
        "noclip-stress",
        "pspo-a0",
        "pspo-a0.4",
        "pspo-a0.9",
        "noclip-sgd",
        "pspo-a0-sgd",
        "pspo-sgd",
        "pspo-a0.4-sgd",
        "pspo-a0.9-sgd",
        "clip-eps0.1",
        "clip-stress-eps0",
        "clip-stress-eps0.1",
    }
    s = audit_runs[("tiny-general-l@1", "pspo-a0.9-sgd", 1)]
    assert (s.objective, s.alpha, s.optimizer, s.learning_rate) == ("pspo", 0.9, "sgd", 0.2)
    assert (s.steps_per_generation, s.num_iterations, s.max_steps) == (2, 2, 20)
    stress = audit_runs[("tiny-general-l@0", "clip-stress-eps0", 0)]
    assert (stress.epsilon, stress.learning_rate, stress.num_iterations, stress.max_steps) == (
        0.0,
        6e-4,
        4,
        32,
    )


def test_audit_command_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    profile = tmp_path / "audit-test.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    args = ["audit", "--profile", str(profile), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--no-measure"])
    assert result.exit_code == 2
    assert "no finished runs" in result.output
    assert not (tmp_path / "audit-test" / "audit.md").exists()


def write_run(
    study: Path,
    label: str,
    seed: int,
    probes: list[dict],
    correct: list[int] | None = None,
    done: dict | None = None,
    **settings,
) -> Path:
    """A finished run folder written by hand (settings, probes, DONE): no training; ``correct``, the greedy
    answers' grades on the synthetic test problems (none: not evaluated); the label is the objective unless
    ``settings`` says otherwise."""
    values = {"model": "tiny-test", "label": label, "objective": label, "seed": seed, **settings}
    folder = study / values["model"] / label / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TrainSettings.from_dict(values).to_dict()))
    (folder / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    (folder / "DONE").write_text(json.dumps(done or {}))
    if correct is not None:
        (folder / "eval").mkdir()
        grades = [dict.fromkeys(("strict", "flexible", "permissive", "paper"), bool(c)) for c in correct]
        records = [{"id": f"p{i:04d}", "grades": [g]} for i, g in enumerate(grades)]
        (folder / "eval" / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {m: {"accuracy": sum(correct) / len(correct)} for m in ("strict", "flexible", "permissive")}
        summary = {"benchmarks": {"synthetic": {"metrics": metrics}}}
        (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    return folder


def answers(accuracy: float, seed: int, n: int = 200) -> list[int]:
    """``n`` graded answers, about ``accuracy`` of them right (a seeded draw)."""
    import random

    rng = random.Random(seed)
    return [int(rng.random() < accuracy) for _ in range(n)]


def test_the_noise_floor_compares_each_arm_with_its_own_spread(tmp_path):
    """Two builds, two seeds: PSPO far above the clip differs after Holm (supported); the same accuracies
    leave no pair different, every MDD under 5 points on 2000 problems (not supported)."""
    study = tmp_path / "study"
    for build in (0, 1):
        for seed in (0, 1):
            model = f"tiny-test@{build}"
            k = 10 * build + seed
            write_run(study, "clip", seed, [], answers(0.3, k), model=model, epsilon=0.2)
            write_run(study, "pspo", seed, [], answers(0.7, k + 100), model=model)
            write_run(study, "clip-shuffled", seed, [], answers(0.3, k + 200), model=model,
                      objective="clip", shuffle_advantages=True)  # fmt: skip
    found = sections(audit.write_audit(study, tmp_path / "a", "x", "synthetic", None, plot=False).read_text())
    text = found["Noise floor"]
    assert verdict(text) == audit.SUPPORTED, text
    assert "| clip - pspo |" in text and "clip - clip-shuffled (control)" in text
    assert "Holm over all 3" in text

    same = tmp_path / "same"
    for build in (0, 1):
        for seed in (0, 1):
            model = f"tiny-test@{build}"
            grades = answers(0.5, 10 * build + seed, n=2000)
            write_run(same, "clip", seed, [], grades, model=model, epsilon=0.2)
            write_run(same, "pspo", seed, [], grades, model=model)
    found = sections(audit.write_audit(same, tmp_path / "b", "x", "synthetic", None, plot=False).read_text())
    text = found["Noise floor"]
    assert verdict(text) == audit.NOT_SUPPORTED, text
    assert "largest MDD" in text


def token_probes(zero: float, pos: float, **seq: float) -> list[dict]:
    """Two probe records: a fresh step (nothing zeroed) and a stale one zeroing ``zero`` of the tokens with
    A != 0 and ``pos`` of those with A > 0 (``seq``: the stale step's sequence-level fields)."""
    fresh = {
        "staleness": 0,
        "zero_weight_frac": 0.0,
        "zero_weight_frac_pos": 0.0,
        "zero_weight_frac_neg": 0.0,
    }
    stale = {
        "staleness": 1,
        "zero_weight_frac": zero,
        "zero_weight_frac_pos": pos,
        "zero_weight_frac_neg": zero,
    }
    if seq:
        fresh.update(n_sequences=8, seq_zero_weight_frac=0.0, seq_partial_zero_frac=0.0)
        stale.update(n_sequences=8, **seq)
    return [{"step": 1, **fresh}, {"step": 2, **stale}]


def test_the_audit_of_a_study_without_the_fields_objectives_names_their_runs(tmp_path):
    """A study of the clip and PSPO only: the CISPO, GSPO and clip-higher sections say which runs they need,
    and the command still writes the whole audit (no identities measured, no evaluation)."""
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    for seed in (0, 1):
        write_run(tmp_path / "runs" / "audit-test", "clip", seed, token_probes(0.05, 0.06), epsilon=0.2)
        write_run(tmp_path / "runs" / "audit-test", "pspo", seed, token_probes(0.0, 0.0))
    profile = tmp_path / "audit-test.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    args = ["audit", "--profile", str(profile), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--no-measure"])
    assert result.exit_code == 0, result.output
    found = sections((tmp_path / "audit-test" / "audit.md").read_text())
    assert len(found) == len(audit.SECTIONS)
    assert (
        "needs finished cispo runs with probes beside clip runs of the same arm: the cpu profile's phase grid"
        in found["CISPO keeps every gradient"]
    )
    assert (
        "needs finished gspo runs with probes: the cpu profile's phase grid"
        in found["GSPO keeps or drops whole sequences"]
    )
    assert "(no clip-higher run)" in found["Clip-higher spares positive-advantage tokens"]
    for title in (
        "CISPO keeps every gradient",
        "GSPO keeps or drops whole sequences",
        "Clip-higher spares positive-advantage tokens",
    ):
        assert "Not tested: runs missing" in found[title] and verdict(found[title]) is None


def test_the_fields_objectives_are_decided_from_their_runs_probes(tmp_path):
    """CISPO never zeroing beside a binding clip, GSPO dropping only whole sequences, clip-higher zeroing
    fewer positive tokens than the clip on every seed: each section reads its runs and says supported; GSPO
    probes recorded before the partial count leave that section inconclusive."""
    study = tmp_path / "study"
    for seed in (0, 1, 2):
        write_run(study, "clip", seed, token_probes(0.05, 0.06 + 0.002 * seed), epsilon=0.2)
        write_run(
            study,
            "clip-higher",
            seed,
            token_probes(0.04, 0.02 + 0.001 * seed),
            objective="clip",
            epsilon=0.2,
            epsilon_high=0.28,
        )
        write_run(study, "cispo", seed, token_probes(0.0, 0.0), epsilon_high=5.0)
        gspo = token_probes(0.1, 0.1, seq_zero_weight_frac=0.125, seq_partial_zero_frac=0.0)
        write_run(study, "gspo", seed, gspo, epsilon=3e-4, epsilon_high=4e-4, loss_type="grpo")
    found = sections(
        audit.write_audit(study, tmp_path / "out", "x", "synthetic", None, plot=False).read_text()
    )
    assert verdict(found["CISPO keeps every gradient"]) == audit.SUPPORTED
    assert "CISPO 0.000%, clip in the same arms 5.000%" in found["CISPO keeps every gradient"]
    assert verdict(found["GSPO keeps or drops whole sequences"]) == audit.SUPPORTED
    assert verdict(found["Clip-higher spares positive-advantage tokens"]) == audit.SUPPORTED
    assert "| 0.2 / 0.28 | 3 |" in found["Clip-higher spares positive-advantage tokens"]

    probes = study / "tiny-test" / "gspo" / "seed1" / "probes.jsonl"
    records = [json.loads(line) for line in probes.read_text().splitlines()]
    probes.write_text(
        "".join(
            json.dumps({k: v for k, v in r.items() if k != "seq_partial_zero_frac"}) + "\n" for r in records
        )
    )
    found = sections(
        audit.write_audit(study, tmp_path / "out", "x", "synthetic", None, plot=False).read_text()
    )
    assert verdict(found["GSPO keeps or drops whole sequences"]) == audit.INCONCLUSIVE
    assert "(1 runs not recorded)" in found["GSPO keeps or drops whole sequences"]


def test_topr_is_judged_only_where_something_collapses(tmp_path):
    """TOPR holding beside a clip that holds too: inconclusive; beside a clip that collapses (DONE's lowest
    validation 20 points under step 0): not supported, unless the control collapses there too (inconclusive,
    and the text says why); TOPR collapsing itself, read from the validation history of a run whose DONE
    lacks the lowest: supported."""

    def done(first: float, lowest: float) -> dict:
        return {"validation_first": {"strict": first}, "validation_lowest": {"strict": lowest}}

    def audit_of(study: Path) -> str:
        out = audit.write_audit(study, study.parent / f"{study.name}-out", "x", "synthetic", None, plot=False)
        return sections(out.read_text())["TOPR under group-relative advantages"]

    held, collapsed = tmp_path / "held", tmp_path / "collapsed"
    for seed in (0, 1):
        for study, clip_lowest in ((held, 0.45), (collapsed, 0.3)):
            write_run(study, "topr", seed, [], done=done(0.5, 0.48))
            write_run(study, "clip", seed, [], done=done(0.5, clip_lowest), epsilon=0.2)
    text = audit_of(held)
    assert verdict(text) == audit.INCONCLUSIVE and "TOPR never ran where another objective collapses" in text
    assert "Every collapse" not in text
    text = audit_of(collapsed)
    assert verdict(text) == audit.NOT_SUPPORTED and "| clip |" in text
    # the clip collapses beside a control that collapses too: inconclusive, and said so
    shared = tmp_path / "shared"
    for seed in (0, 1):
        write_run(shared, "topr", seed, [], done=done(0.5, 0.48))
        write_run(shared, "clip", seed, [], done=done(0.5, 0.3), epsilon=0.2)
        write_run(
            shared, "clip-shuffled", seed, [], done=done(0.5, 0.3), objective="clip", epsilon=0.2,
            shuffle_advantages=True,
        )  # fmt: skip
    text = audit_of(shared)
    assert verdict(text) == audit.INCONCLUSIVE and "| clip |" in text
    assert "Every collapse in TOPR's arms is in an arm whose control collapses too" in text
    assert "TOPR never ran where another objective collapses" not in text

    folder = held / "tiny-test" / "topr" / "seed1"
    (folder / "DONE").write_text(json.dumps({"validation_first": {"strict": 0.5}}))
    (folder / "validation.jsonl").write_text(
        "".join(json.dumps({"step": s, "strict": v}) + "\n" for s, v in ((0, 0.5), (2, 0.2), (4, 0.45)))
    )
    assert verdict(audit_of(held)) == audit.SUPPORTED


def test_sigmoid_saturation_is_judged_by_how_far_the_ratios_went(tmp_path):
    """Ratios near 1: inconclusive; a ratio of 2.5 (|r - 1| past the reach of 0.987 at tau 1) with its weight
    well above 1%: not supported; a ratio of 0.005 with its weight under 1%: supported."""

    def verdict_for(name: str, ratio: float, w: float) -> str:
        study = tmp_path / name
        samples = [[1.1, 0.5, 1.05], [0.9, -0.5, 0.9], [ratio, 0.5, w]]
        write_run(study, "sigmoid", 0, [{"step": 1, "samples": samples}])
        out = audit.write_audit(study, tmp_path / f"{name}-out", "x", "synthetic", None, plot=False)
        return verdict(sections(out.read_text())["Sigmoid saturation"])

    assert verdict_for("near", 1.2, 1.1) == audit.INCONCLUSIVE
    assert verdict_for("far", 2.5, 1.49) == audit.NOT_SUPPORTED
    assert verdict_for("saturated", 0.005, 0.004) == audit.SUPPORTED


def test_the_clip_baseline_shares_a_gap_only_where_pspo_beats_eps_0(tmp_path):
    """PSPO below the eps-0 clip: no gap to share, whatever the clips do; PSPO far above it: the intended
    eps's share of that gap."""

    def section(name: str, pspo: float) -> str:
        study = tmp_path / name
        for build in (0, 1):
            for seed in (0, 1):
                model, k = f"tiny-test@{build}", 10 * build + seed
                write_run(study, "clip", seed, [], answers(0.5, k), model=model, epsilon=0.2)
                write_run(study, "clip-eps0", seed, [], answers(0.3, k + 100), model=model,
                          objective="clip", epsilon=0.0)  # fmt: skip
                write_run(study, "pspo", seed, [], answers(pspo, k + 200), model=model)
        out = audit.write_audit(study, tmp_path / f"{name}-out", "x", "synthetic", None, plot=False)
        return sections(out.read_text())["The clip baseline"]

    text = section("below", 0.2)
    assert verdict(text) == audit.SUPPORTED, text
    assert "| no gap to share (PSPO does not beat eps 0) |" in text
    text = section("above", 0.7)
    assert "| no gap to share" not in text and "% of +" in text


def test_the_soft_trust_region_is_judged_on_the_trained_policy(tmp_path):
    """PSPO's policy moving further from pi_old than the clip's on every seed: not supported, without
    identities (said so); the same movement under both: inconclusive or supported, never not supported."""

    def probes(kl: float) -> list[dict]:
        fresh, stale = token_probes(0.0, 0.0)
        return [{**fresh, "kl_old_theta": 0.0}, {**stale, "kl_old_theta": kl}]

    def section(name: str, pspo: float) -> str:
        study = tmp_path / name
        for seed in range(4):
            write_run(study, "clip", seed, probes(0.010 + 0.0001 * seed), epsilon=0.2)
            write_run(study, "pspo", seed, probes(pspo + 0.0001 * seed))
        out = audit.write_audit(study, tmp_path / f"{name}-out", "x", "synthetic", None, plot=False)
        return sections(out.read_text())["Soft trust region"]

    text = section("further", 0.02)
    assert verdict(text) == audit.NOT_SUPPORTED, text
    assert "no identity measurements" in text
    assert verdict(section("same", 0.010)) == audit.SUPPORTED


def test_alpha_under_adam_counts_the_seeds_that_answer_alike(tmp_path):
    """PSPO and noclip answering every test problem alike on one seed and not on the other: the count is in
    the section (no checkpoints to compare: inconclusive)."""
    study = tmp_path / "study"
    for seed in (0, 1):
        done = {"checkpoint_step": 4}
        write_run(study, "noclip", seed, [], answers(0.5, seed), done=done)
        write_run(study, "pspo", seed, [], answers(0.5, seed + 10 * seed), done=done)
    out = audit.write_audit(study, tmp_path / "out", "x", "synthetic", None, plot=False)
    text = sections(out.read_text())["Does alpha matter under Adam?"]
    assert verdict(text) == audit.INCONCLUSIVE
    assert "| 1 of 2 |" in text and "1 of 2 (build, seed) pairs of PSPO and noclip" in text


def test_identity_steps_are_few_even_when_a_run_counts_epochs():
    """The identities are measured on a few optimizer steps of each run: one reuse cycle, at least 4 and never
    more than 32 or the run's own length; the paper's runs count epochs (max_steps -1, 2,622 steps) and are
    measured on 4."""
    from pspo_repro.analysis.audit import measurement

    paper = {(r.model, r.label): r.settings for r in profiles.expand(profiles.load_profile("paper"))}
    measured = {key: s for key, s in paper.items() if key[1] in audit.IDENTITY_LABELS}
    assert len(measured) == 6  # pspo and clip on each of the three models
    for s in measured.values():
        assert s.max_steps == -1
        assert measurement.identity_steps(s) == 4
    cpu = {(r.model, r.label): r.settings for r in profiles.expand(profiles.load_profile("audit"))}
    assert measurement.identity_steps(cpu[("tiny-general-l@0", "pspo")]) == 4  # one cycle of 4
    assert measurement.identity_steps(cpu[("tiny-general-l@0", "pspo-stress")]) == 16  # one cycle of 16
    short = cpu[("tiny-general-l@0", "pspo")]
    assert measurement.identity_steps(type(short).from_dict({**short.to_dict(), "max_steps": 3})) == 3
    on_policy = {**short.to_dict(), "steps_per_generation": 1, "num_iterations": 1}
    assert measurement.identity_steps(type(short).from_dict(on_policy)) == 4  # at least 4
    long_cycle = {**short.to_dict(), "steps_per_generation": 64, "num_iterations": 4, "max_steps": -1}
    assert measurement.identity_steps(type(short).from_dict(long_cycle)) == 32


def test_the_identity_measurement_sees_one_of_the_visible_gpus(monkeypatch):
    """transformers counts every visible GPU and TRL then refuses to train in one process: the measurement's
    process is given exactly one of the devices this process sees."""
    import torch

    from pspo_repro.analysis.audit import measurement

    assert measurement.measurement_environment({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == {
        "CUDA_VISIBLE_DEVICES": "4"
    }
    assert measurement.measurement_environment({"CUDA_VISIBLE_DEVICES": " GPU-1a2b, GPU-3c4d"}) == {
        "CUDA_VISIBLE_DEVICES": "GPU-1a2b"
    }
    assert measurement.measurement_environment({"CUDA_VISIBLE_DEVICES": ""}) == {"CUDA_VISIBLE_DEVICES": ""}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert measurement.measurement_environment({}) == {"CUDA_VISIBLE_DEVICES": "0"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert measurement.measurement_environment({}) == {}


@pytest.mark.slow
def test_identities_measured_in_a_process_on_one_device_and_nothing_in_results(
    audited, tmp_path, monkeypatch
):
    """As on a machine with GPUs 4-7 visible: each run's identities are measured in a fresh process that sees
    GPU 4 only, with the default number of steps (here the runs' own 4), and nothing but identities.json
    (and the audit) is written into the results folder, not even for a while."""
    import threading

    root, profile, _ = audited
    runs, results = tmp_path / "runs", tmp_path / "results"
    shutil.copytree(root / "runs", runs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    seen: set[str] = set()
    done = threading.Event()

    def scan() -> None:
        # a file renamed or removed mid-walk makes rglob raise; the next scan sees the folder as it is then
        try:
            seen.update(p.relative_to(results).as_posix() for p in results.rglob("*"))
            seen.update(p.relative_to(runs).as_posix() for p in runs.rglob("*") if "checkpoint-" in p.name)
        except FileNotFoundError:
            pass

    def watch() -> None:
        while not done.is_set():
            scan()
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        path = audit.run_audit(str(profile), runs, results, isolate=True, plot=False)
    finally:
        done.set()
        watcher.join()
    scan()
    files = {"audit.md", "identities.json"}
    # an atomic write's temporary file (.<name>.<random>) counts as the file it becomes
    written = {next((f"audit-test/{f}" for f in files if p.startswith(f"audit-test/.{f}.")), p) for p in seen}
    assert written == {"audit-test", *(f"audit-test/{f}" for f in files)}
    ident = json.loads((path.parent / "identities.json").read_text())
    assert set(ident) == {"tiny-test/clip/seed0", "tiny-test/pspo/seed0"}
    for m in ident.values():
        assert (m["steps"], m["precision"], m["device"]) == (4, "float32", "cpu")
        assert m["cuda_visible_devices"] == "4"
        assert m["batches"] == 4
        assert m["staleness_zero"]["device"] == "cpu"
    assert verdict(sections(path.read_text())["PSPO is a rescaled unclipped surrogate"]) == audit.SUPPORTED


@pytest.mark.slow
def test_a_failed_measurement_process_is_a_clear_error(tmp_path):
    """The measurement's process raises (here: a model that does not exist): the error names the run and
    carries the process's own error and traceback."""
    from pspo_repro.analysis.audit import measurement
    from pspo_repro.training.settings import TrainSettings

    settings = TrainSettings.from_dict({"model": str(tmp_path / "no-model"), "dataset": "synthetic"})
    with pytest.raises(RuntimeError, match=r"identity measurement of m/pspo/seed0 failed: FileNotFoundError"):
        measurement.measure_run_in_process(settings, 2, tmp_path / "work", "m/pspo/seed0")
    with pytest.raises(ValueError, match="identity steps must be >= 1, got 0"):
        measurement.measure_identities(tmp_path, steps=0)
    with pytest.raises(ValueError, match="identity workers must be >= 1, got 0"):
        measurement.measure_identities(tmp_path, workers=0)


def test_identities_are_measured_on_one_process_per_core_at_most_one_per_run():
    from pspo_repro.analysis.audit import measurement

    assert measurement.cpu_workers(6, cores=2) == 2
    assert measurement.cpu_workers(3, cores=16) == 3
    assert measurement.cpu_workers(1, cores=2) == 1
    assert measurement.cpu_workers(0, cores=2) == 1


def test_kept_identities_count_only_for_the_runs_they_measured(tmp_path):
    """The audit reuses identities.json only while the study's chosen runs are the ones measured, as they were."""
    from pspo_repro.analysis.audit import measurement

    study = tmp_path / "study"
    for build in (1, 0):
        for seed in (1, 0):
            write_run(study, "pspo", seed, token_probes(0.0, 0.0), model=f"tiny-general-l@{build}")
    chosen = measurement.identity_runs(audit.load_runs(study))
    assert [r.name for r in chosen] == [
        "tiny-general-l@0/pspo/seed0"
    ]  # one build: the identities are algebra
    folder = study / "tiny-general-l@0" / "pspo" / "seed0"
    kept = {"tiny-general-l@0/pspo/seed0": {"run_digest": measurement.run_digest(folder)}}
    assert measurement.measured_the_study(kept, study)
    assert not measurement.measured_the_study({"tiny-general-l@0/pspo/seed0": {}}, study)  # no digest kept
    assert not measurement.measured_the_study(
        {**kept, "other/pspo/seed0": kept["tiny-general-l@0/pspo/seed0"]}, study
    )
    (folder / "train_log.jsonl").write_text('{"step": 1, "reward": 0.5}\n')  # the run retrained
    assert not measurement.measured_the_study(kept, study)
