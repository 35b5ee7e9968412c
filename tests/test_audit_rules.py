"""The audit's verdict rules as pure functions of numbers: constructed numbers give each verdict a rule
can return. One rule has two verdicts only: the rescaled surrogate (an exact identity: never inconclusive)."""

from __future__ import annotations

from pspo_repro.analysis import identities
from pspo_repro.analysis.audit import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from pspo_repro.analysis.audit.claims import (
    alpha_matters,
    cispo_keeps_gradients,
    clip_baseline,
    clip_higher_positive_tokens,
    gradient_preservation,
    gspo_whole_sequences,
    noise_floor,
    permissive_inflation,
    rescaled_surrogate,
    sigmoid_saturation,
    soft_trust_region,
    staleness_zero_ratio,
    topr_collapse,
    trust_region_acts,
)

NAN = float("nan")


def test_gradient_preservation():
    rule = gradient_preservation.rule
    assert rule(pspo_max=0.0, clip_max=0.05) == SUPPORTED
    assert rule(pspo_max=0.25, clip_max=0.05) == NOT_SUPPORTED
    assert rule(pspo_max=1e-6, clip_max=0.0) == NOT_SUPPORTED  # a zeroed PSPO gradient decides alone
    assert rule(pspo_max=0.0, clip_max=0.0) == INCONCLUSIVE


def test_rescaled_surrogate():
    rule = rescaled_surrogate.rule
    assert rule(1e-7) == SUPPORTED
    assert rule(identities.GRAD_RTOL) == SUPPORTED  # at most the tolerance
    assert rule(3e-3) == NOT_SUPPORTED
    assert rule(NAN) == NOT_SUPPORTED
    # under bf16 autocast the tolerance is bf16's: its rounding alone gives about 7e-3
    bf16 = identities.grad_rtol("bf16")
    assert rule(7e-3, bf16) == SUPPORTED
    assert rule(0.1, bf16) == NOT_SUPPORTED
    assert rule(NAN, bf16) == NOT_SUPPORTED
    # each run against its own precision's tolerance (none recorded: float32); the worst ratio decides
    ident = {
        "a": {"grad_rel_diff_max": 7e-3, "precision": "bf16"},
        "b": {"grad_rel_diff_max": 2e-5},
    }
    assert rescaled_surrogate.worst_run(ident) == (2e-5, "float32", identities.grad_rtol("float32"))
    ident["c"] = {"grad_rel_diff_max": NAN, "precision": "bf16"}
    assert rescaled_surrogate.worst_run(ident)[0] != rescaled_surrogate.worst_run(ident)[0]  # nan


def test_soft_trust_region():
    # (PSPO's movement minus the clip's, its se over runs, the clip's movement)
    verdict = soft_trust_region.arm_verdict
    assert verdict(0.05, 0.01, 0.1) == NOT_SUPPORTED  # further by 5 se
    assert verdict(-0.02, 0.005, 0.1) == SUPPORTED  # -0.02 + 0.015 <= 10% of 0.1
    assert verdict(0.0, 0.005, 0.1) == INCONCLUSIVE  # 0.015 further cannot be excluded
    assert verdict(0.05, NAN, 0.1) == INCONCLUSIVE  # one run a side
    rule = soft_trust_region.rule
    assert rule([(-0.02, 0.005, 0.1), (0.05, 0.01, 0.1)]) == NOT_SUPPORTED  # one arm moves further
    assert rule([(-0.02, 0.005, 0.1), (0.0, 0.001, 0.1)]) == SUPPORTED
    assert rule([(-0.02, 0.005, 0.1), (0.0, 0.005, 0.1)]) == INCONCLUSIVE
    assert rule([]) == INCONCLUSIVE
    # the pi~ identity, reported beside the verdict: exact, to the tolerance
    holds = soft_trust_region.identity_holds
    assert holds(tv_error=1e-13, kl_excess=-1e-3)  # negative excess: the bound's slack
    assert holds(tv_error=identities.DIST_ATOL, kl_excess=identities.DIST_ATOL)
    assert not holds(tv_error=1e-6, kl_excess=0.0) and not holds(tv_error=0.0, kl_excess=1e-6)


def test_alpha_matters():
    rule = alpha_matters.rule
    # (test accuracy differs from noclip's after Holm, largest training-reward difference, checkpoint distance)
    assert rule([(True, 0.0, 0.001), (False, 0.0, None)]) == SUPPORTED  # a detected difference outweighs all
    assert rule([(False, 0.0, 0.013), (False, 0.0, 0.002)]) == NOT_SUPPORTED  # same rewards all along
    assert rule([(False, 0.05, 0.009)]) == NOT_SUPPORTED  # other rewards, but checkpoints within 1%
    assert rule([(False, 0.05, 0.5), (False, 0.0, 0.001)]) == INCONCLUSIVE  # one alpha trained otherwise
    assert rule([(False, None, None)]) == INCONCLUSIVE  # nothing measured
    assert rule([]) == INCONCLUSIVE
    assert not alpha_matters.close(None) and alpha_matters.close(0.009) and not alpha_matters.close(0.01)
    assert alpha_matters.same_training(0.0) and not alpha_matters.same_training(1e-9)
    assert not alpha_matters.same_training(None)


def test_clip_baseline():
    # (intended-eps clip minus the eps-0 clip in points, Holm-adjusted p)
    assert clip_baseline.arm_verdict(4.0, 0.01) == SUPPORTED
    assert clip_baseline.arm_verdict(-4.0, 0.01) == NOT_SUPPORTED
    assert clip_baseline.arm_verdict(4.0, 0.2) == INCONCLUSIVE
    assert clip_baseline.arm_verdict(4.0, 0.05) == INCONCLUSIVE  # p must be below 0.05
    rule = clip_baseline.rule
    assert rule([(4.0, 0.01), (2.0, 0.03)]) == SUPPORTED
    assert rule([(-4.0, 0.01), (-6.0, 0.001)]) == NOT_SUPPORTED
    assert rule([(4.0, 0.01), (-4.0, 0.01)]) == INCONCLUSIVE  # the arms disagree
    assert rule([(1.0, 0.6)]) == INCONCLUSIVE
    assert rule([]) == INCONCLUSIVE


def test_noise_floor():
    rule = noise_floor.rule
    # (Holm-adjusted p, MDD in points) of each pair of objectives
    assert rule([(0.4, 9.0), (0.001, 3.0)]) == SUPPORTED  # one pair differs after Holm
    assert rule([(0.4, 3.0), (0.9, 4.9)]) == NOT_SUPPORTED  # none differs, none of 5 points missed
    assert rule([(0.4, 3.0), (0.9, 5.0)]) == INCONCLUSIVE  # a 5-point difference could have been missed
    assert rule([(0.05, 1.0)]) == NOT_SUPPORTED  # p must be below 0.05
    assert rule([]) == INCONCLUSIVE


def test_trust_region_acts():
    rule = trust_region_acts.rule
    # the stalest steps' mean zero-gradient fraction of each (arm, eps > 0)
    assert rule([0.02, 0.01]) == SUPPORTED  # at least 1% binds
    assert rule([0.0, 0.005]) == NOT_SUPPORTED
    assert rule([0.02, 0.0]) == INCONCLUSIVE
    assert rule([]) == INCONCLUSIVE


def test_staleness_zero_ratio():
    rule = staleness_zero_ratio.rule
    # the eps-0 clip's zero-gradient share at staleness 0 of each (run, precision, pairing)
    assert rule([0.0, 0.0, 0.0]) == SUPPORTED  # every ratio 1 in the advantage's direction
    assert rule([0.0, 0.3]) == NOT_SUPPORTED  # rounding alone makes the clip act
    assert rule([0.0, 0.01]) == NOT_SUPPORTED  # at least 1%: the audit's threshold for a clip acting
    assert rule([0.0, 0.002]) == INCONCLUSIVE  # some gradients zeroed, fewer than that
    assert rule([0.0, NAN]) == INCONCLUSIVE
    assert rule([]) == INCONCLUSIVE


def test_sigmoid_saturation():
    rule = sigmoid_saturation.rule
    # (sampled tokens whose weight is saturated, tokens whose |r - 1| reached the saturating distance)
    assert rule(saturated=3, reached=3) == SUPPORTED
    assert rule(saturated=0, reached=2) == NOT_SUPPORTED  # far from 1 (above it), the weight held
    assert rule(saturated=0, reached=0) == INCONCLUSIVE  # the ratios never went that far
    # the closed form: w(1) = 1, saturated outside [r_lo, r_hi]; at tau 1 below r 0.0126 and above r 9.21
    assert sigmoid_saturation.weight(1.0, 1.0) == 1.0
    r_lo, r_hi = sigmoid_saturation.saturation_bounds(1.0)
    assert 0.012 < r_lo < 0.013 and 9.2 < r_hi < 9.3
    assert sigmoid_saturation.weight(r_lo / 2, 1.0) < 0.01 < sigmoid_saturation.weight(2 * r_lo, 1.0)
    assert sigmoid_saturation.reach(1.0) == 1.0 - r_lo  # the nearer side
    assert sigmoid_saturation.reach(10.0) < 0.6  # a hotter sigmoid saturates nearer 1


def test_permissive_inflation():
    rule = permissive_inflation.rule
    assert rule(0.02) == SUPPORTED
    assert rule(0.001) == NOT_SUPPORTED
    assert rule(-0.01) == NOT_SUPPORTED
    assert rule(0.005) == INCONCLUSIVE
    assert rule(0.01) == INCONCLUSIVE and rule(0.0025) == INCONCLUSIVE  # both bounds are strict


def test_topr_collapse():
    rule = topr_collapse.rule
    # each of TOPR's arms: (a TOPR run collapses, another objective's run collapses, the control collapses)
    assert rule([(True, False, False)]) == SUPPORTED
    assert rule([(False, True, False), (True, True, False)]) == SUPPORTED  # TOPR collapses in one arm
    assert rule([(False, True, False)]) == NOT_SUPPORTED  # others collapse where TOPR holds
    assert rule([(False, False, False)]) == INCONCLUSIVE  # nothing collapses where TOPR ran
    assert rule([(True, True, True), (False, True, True)]) == INCONCLUSIVE  # the control collapses too
    assert rule([]) == INCONCLUSIVE
    assert topr_collapse.collapses(first=0.5, lowest=0.3)
    assert topr_collapse.collapses(first=0.5, lowest=0.4)  # 10 points: a collapse
    assert not topr_collapse.collapses(first=0.5, lowest=0.45)


def test_cispo_keeps_gradients():
    rule = cispo_keeps_gradients.rule
    # (largest zero-gradient fraction on one step of the CISPO runs, of the clip runs in their arms)
    assert rule(cispo_max=0.0, clip_max=0.03) == SUPPORTED
    assert rule(cispo_max=0.0, clip_max=0.01) == SUPPORTED  # at least 1% binds
    assert rule(cispo_max=0.02, clip_max=0.03) == NOT_SUPPORTED
    assert rule(cispo_max=0.01, clip_max=None) == NOT_SUPPORTED  # a material zero decides alone
    assert rule(cispo_max=0.0, clip_max=0.005) == INCONCLUSIVE  # the clip never bound: nothing to keep
    assert rule(cispo_max=0.0, clip_max=None) == INCONCLUSIVE  # no clip beside it
    assert rule(cispo_max=1e-4, clip_max=0.03) == INCONCLUSIVE  # a few tokens: an underflowed ratio?


def test_gspo_whole_sequences():
    rule = gspo_whole_sequences.rule
    # (largest fraction of sequences zeroed in part on one step, None: not recorded; of those dropped whole)
    assert rule(partial_max=0.0, dropped_max=0.05) == SUPPORTED
    assert rule(partial_max=0.0, dropped_max=0.01) == SUPPORTED
    assert rule(partial_max=0.02, dropped_max=0.05) == NOT_SUPPORTED
    assert rule(partial_max=1e-3, dropped_max=0.0) == NOT_SUPPORTED  # one sequence zeroed in part decides
    assert rule(partial_max=0.0, dropped_max=0.005) == INCONCLUSIVE  # the sequence clip never acted
    assert rule(partial_max=None, dropped_max=0.05) == INCONCLUSIVE  # probes without the partial count


def test_clip_higher_positive_tokens():
    verdict = clip_higher_positive_tokens.comparison_verdict
    # (clip-higher minus symmetric zeroed +A fraction, its paired se, the symmetric clip's fraction)
    assert verdict(-0.02, 0.002, 0.04) == SUPPORTED  # 0.02 > 3 * 0.002
    assert verdict(0.02, 0.002, 0.04) == NOT_SUPPORTED  # more zeroed, beyond noise
    assert verdict(-0.001, 0.002, 0.04) == NOT_SUPPORTED  # at most 0.7 points spared: under 1
    assert verdict(-0.01, 0.004, 0.04) == INCONCLUSIVE  # within noise, but up to 2.2 points possible
    assert verdict(-0.004, 0.0, 0.005) == INCONCLUSIVE  # the symmetric clip zeroes under 1%
    assert verdict(-0.02, NAN, 0.04) == INCONCLUSIVE  # one paired seed
    rule = clip_higher_positive_tokens.rule
    assert rule([(-0.02, 0.002, 0.04), (0.0, 0.0, 0.002)]) == SUPPORTED  # the untested arm is left out
    assert rule([(0.02, 0.002, 0.04), (-0.001, 0.002, 0.03)]) == NOT_SUPPORTED
    assert rule([(-0.02, 0.002, 0.04), (0.02, 0.002, 0.04)]) == INCONCLUSIVE  # the arms disagree
    assert rule([(0.0, 0.0, 0.005)]) == INCONCLUSIVE  # nothing to spare anywhere
    assert rule([]) == INCONCLUSIVE
