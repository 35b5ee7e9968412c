"""Comparisons between arms: Holm's adjustment by hand, the hierarchical bootstrap on constructed arms whose
true difference is known (large, none, seed spread, build spread, paired problems), bad input, and the loader
on run folders built here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pspo_repro.analysis import inference
from pspo_repro.analysis.inference import (
    Arm,
    arm_from_runs,
    bootstrap_difference,
    compare,
    compare_family,
    holm,
)
from pspo_repro.study import rundir

N = 1000


def make_arm(name: str, correct: int, offsets: dict[int, tuple[int, ...]], order_seed: int) -> Arm:
    """Runs correct on the first ``correct + k`` problems of one fixed random order, k = the seed's offset:
    the arm's mean accuracy is exactly ``correct + mean(k)`` per thousand, and k sets the seed spread."""
    order = np.random.default_rng(order_seed).permutation(N)
    runs = {}
    for build, ks in offsets.items():
        for seed, k in enumerate(ks):
            x = np.zeros(N, dtype=bool)
            x[order[: correct + k]] = True
            runs[(build, seed)] = x
    return Arm(name, runs)


NOISE = {0: (-15, 0, 15), 1: (-10, 0, 10)}  # 2 builds x 3 seeds, seed spread of 1-1.5 points


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 * 2 capped, 0.6 raised to it
    assert holm([0.02]) == [0.02]
    assert holm([]) == []
    with pytest.raises(ValueError, match="1.5"):
        holm([0.1, 1.5])


def test_large_difference_is_found():
    a = make_arm("a", 700, NOISE, order_seed=1)
    b = make_arm("b", 500, NOISE, order_seed=2)
    (c,) = compare_family([(a, b)])
    assert c.verdict == "a > b"
    assert c.effect == pytest.approx(20.0, abs=1.0)
    assert c.ci_low > 0 and c.ci_low < 20 < c.ci_high
    assert c.p_adjusted < 0.01 and c.p_adjusted == c.p  # a family of one: Holm changes nothing
    assert (c.n_a, c.n_b, c.builds) == (6, 6, (0, 1))
    assert c.sd_a == pytest.approx(100 * np.std([-0.015, 0, 0.015, -0.01, 0, 0.01], ddof=1))
    assert "+20.0 points" in c.describe() and "a > b" in c.describe()
    assert compare(b, a).verdict == "a < b"


def test_identical_arms_are_inconclusive_with_a_finite_mdd():
    a = make_arm("a", 600, NOISE, order_seed=1)
    c = compare(a, Arm("b", a.runs))
    assert c.effect == 0.0 and c.p == 1.0
    assert c.verdict == "no detectable difference"
    assert 0 < c.mdd < math.inf
    assert c.mdd == pytest.approx((1.959964 + 0.841621) * c.se, rel=1e-5)
    assert f"{c.mdd:.1f} points" in c.describe()


def test_family_sets_mdd_level_and_holm():
    a = make_arm("a", 700, NOISE, order_seed=1)
    b = make_arm("b", 500, NOISE, order_seed=2)
    same = make_arm("c", 600, NOISE, order_seed=3)
    family = compare_family([(a, b), (same, Arm("d", same.runs))])
    assert [c.p_adjusted for c in family] == holm([c.p for c in family])
    single = compare(a, b)  # the family's first comparison draws with the same seed
    assert family[0].se == single.se
    # m = 2: z_{1-0.0125} + z_0.8 = 3.0830 against 2.8016 for m = 1
    assert family[0].mdd / single.mdd == pytest.approx(3.0830 / 2.8016, rel=1e-3)


def test_a_large_family_draws_enough_replicates_to_find_a_clear_difference():
    # 150 comparisons (the full phase grid's family): a fixed 2,000 replicates floor every Holm-adjusted p at
    # 150 / 2001 = 0.075, so not even a 60-point difference could be found; the family draws 29,999
    assert inference.replicates_for(1) == 2000
    assert inference.replicates_for(150) == 29_999
    assert 150 / (inference.replicates_for(150) + 1) == pytest.approx(inference.ALPHA / 10)
    problems = np.arange(100)
    runs = lambda k: {(0, s): problems < k + s for s in range(3)}  # noqa: E731  (k, k+1, k+2 of 100 right)
    a, b, c = Arm("a", runs(90)), Arm("b", runs(30)), Arm("c", runs(50))
    family = compare_family([(a, b)] + [(c, Arm("d", c.runs))] * 149)
    assert family[0].verdict == "a > b" and family[0].p_adjusted == pytest.approx(150 / 30_000)
    assert all(f.verdict == "no detectable difference" for f in family[1:])
    assert compare_family([]) == []
    with pytest.raises(ValueError, match="got 0"):
        inference.replicates_for(0)


def test_interval_widens_with_seed_spread():
    def width(k: int) -> float:
        spread = {0: (-k, 0, k), 1: (-k, 0, k)}
        c = compare(make_arm("a", 650, spread, 1), make_arm("b", 550, spread, 2))
        assert c.effect == pytest.approx(10.0)
        return c.ci_high - c.ci_low

    assert width(100) > 2 * width(5)


def test_interval_widens_with_build_spread():
    same = compare(make_arm("a", 700, NOISE, 1), make_arm("b", 500, NOISE, 2))
    # build 0: a - b = 10 points, build 1: 30 points; the mean is still 20
    b = make_arm("b", 500, NOISE, 2)
    a0, a1 = make_arm("a", 600, {0: NOISE[0]}, 1), make_arm("a", 800, {1: NOISE[1]}, 1)
    apart = compare(Arm("a", {**a0.runs, **a1.runs}), b)
    assert apart.effect == pytest.approx(20.0)
    assert apart.ci_low < 13 and apart.ci_high > 27
    assert apart.ci_high - apart.ci_low > 2 * (same.ci_high - same.ci_low)


def test_paired_problems_give_a_tight_interval():
    b = make_arm("b", 500, {0: (-5, 0, 5), 1: (-5, 0, 5)}, order_seed=2)
    never = np.flatnonzero(~np.any(np.stack(list(b.runs.values())), axis=0))[:30]  # wrong in every b run
    runs = {}
    for key, x in b.runs.items():
        y = x.copy()
        y[never] = True
        runs[key] = y
    c = compare(Arm("a", runs), b)
    assert c.effect == pytest.approx(3.0)
    pa, pb = 0.53, 0.50
    unpaired = 100 * math.sqrt(pa * (1 - pa) / N + pb * (1 - pb) / N)  # 2.23 points
    assert c.se < unpaired / 2
    assert c.ci_low > 0 and c.verdict == "a > b"


def test_bootstrap_is_deterministic_for_a_seed():
    a = make_arm("a", 600, NOISE, 1)
    b = make_arm("b", 550, NOISE, 2)
    d = bootstrap_difference(a, b, replicates=500, seed=3)
    assert d.shape == (500,)
    assert np.array_equal(d, bootstrap_difference(a, b, replicates=500, seed=3))
    assert not np.array_equal(d, bootstrap_difference(a, b, replicates=500, seed=4))
    assert d.mean() == pytest.approx(5.0, abs=0.5)


def test_bad_input_is_refused_with_the_values():
    with pytest.raises(ValueError, match=r"\(0, 0\): 10.*\(0, 1\): 12"):
        Arm("x", {(0, 0): np.ones(10), (0, 1): np.ones(12)})
    with pytest.raises(ValueError, match="no runs"):
        Arm("x", {})
    with pytest.raises(ValueError, match=r"0/1.*shape \(3,\)"):
        Arm("x", {(0, 0): np.array([0, 2, 1])})
    with pytest.raises(ValueError, match="10 and 12"):
        compare(Arm("x", {(0, 0): np.ones(10)}), Arm("y", {(0, 0): np.ones(12)}))
    with pytest.raises(ValueError, match=r"builds \[0, 1\].*builds \[2\]"):
        compare(Arm("x", {(0, 0): np.ones(5), (1, 0): np.ones(5)}), Arm("y", {(2, 0): np.ones(5)}))


def write_run(folder, model: str, seed: int, records: list[tuple[str, list[dict]]]) -> None:
    rundir.atomic_write_json(folder / rundir.CONFIG, {"model": model, "seed": seed, "label": "clip"})
    lines = [{"id": pid, "benchmark": "synthetic", "grades": grades} for pid, grades in records]
    rundir.append_jsonl(folder / rundir.EVAL / "synthetic.jsonl", *lines)


def grade(strict: bool, paper: bool) -> dict:
    return {"strict": strict, "flexible": strict, "permissive": strict, "paper": paper}


def test_arm_from_runs_reads_build_seed_and_greedy_grades(tmp_path):
    one, two = (
        tmp_path / "tiny-general-l@2" / "clip" / "seed3",
        tmp_path / "tiny-general-l" / "clip" / "seed0",
    )
    # records out of id order; the second sample disagrees with the first and must be ignored
    write_run(one, "tiny-general-l@2", 3, [("p2", [grade(True, False)]), ("p0", [grade(False, True)]),
                                           ("p1", [grade(True, True), grade(False, False)])])  # fmt: skip
    write_run(two, "tiny-general-l", 0, [("p1", [grade(False, False)]), ("p0", [grade(True, True)]),
                                         ("p2", [grade(False, True)])])  # fmt: skip
    arm = arm_from_runs([one, two], "synthetic")
    assert arm.name == "clip" and arm.problem_ids == ("p0", "p1", "p2")
    assert sorted(arm.runs) == [(0, 0), (2, 3)]
    assert arm.runs[(2, 3)].tolist() == [0.0, 1.0, 1.0]
    assert arm.runs[(0, 0)].tolist() == [1.0, 0.0, 0.0]
    paper = arm_from_runs([one, two], "synthetic", metric="paper", name="clip/paper")
    assert paper.name == "clip/paper"
    assert paper.runs[(2, 3)].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="lenient"):
        arm_from_runs([one], "synthetic", metric="lenient")
    with pytest.raises(ValueError, match="synthetic-svamp"):
        arm_from_runs([one], "synthetic-svamp")
    other = tmp_path / "other"
    write_run(other, "tiny-general-l@1", 0, [("p0", [grade(True, True)]), ("q1", [grade(True, True)]),
                                             ("p2", [grade(True, True)])])  # fmt: skip
    with pytest.raises(ValueError, match="problem ids differ"):
        arm_from_runs([one, other], "synthetic")
    assert inference._build_of("tiny-general-l@12") == 12
