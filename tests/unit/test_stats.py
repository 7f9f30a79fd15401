"""The shared statistics module on hand-made cases with known answers."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from models.common.stats import (
    Interval, claim_holds, mcnemar, paired_bootstrap, seed_t_interval, t_interval, verdict, verdict_phrase,
)


def test_t_interval_for_three_seeds_uses_df_2_not_1_96():
    gaps = [0.18, 0.29, -0.02]  # per-seed PGR gaps AdaptConf - KD of a real 3-seed run
    interval = seed_t_interval(np.array(gaps) + 1.0, np.ones(3))
    low, high = scipy_stats.t.interval(0.95, df=2, loc=np.mean(gaps), scale=scipy_stats.sem(gaps))
    assert interval.estimate == pytest.approx(0.15)
    assert (interval.low, interval.high) == pytest.approx((low, high))
    half = (interval.high - interval.low) / 2
    assert half == pytest.approx(4.302653 * np.std(gaps, ddof=1) / math.sqrt(3), rel=1e-6)
    assert half > 1.96 * np.std(gaps, ddof=1) / math.sqrt(3) * 2  # the normal shortcut would be less than half
    assert verdict(interval) == "tie"  # mean gap 0.15 > 0, but the interval includes zero
    assert interval.n == 3 and "df 2" in interval.method


def test_one_seed_gives_an_unbounded_interval_and_a_tie():
    interval = t_interval([3.0])
    assert (interval.low, interval.high) == (-math.inf, math.inf)
    assert verdict(interval) == "tie"


def test_mcnemar_counts_the_table_and_tests_the_discordant_pairs():
    a = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    result = mcnemar(a, b)
    assert (result.both_right, result.only_a_right, result.only_b_right, result.both_wrong) == (2, 6, 1, 1)
    assert result.n == 10
    # exact two-sided binomial: P(X <= 1 or X >= 6 | n=7, p=1/2) = 2 * (1 + 7) / 128
    assert result.p_value == pytest.approx(16 / 128)
    assert mcnemar(a, a).p_value == 1.0


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    base = np.linspace(0, 1, 50)
    interval = paired_bootstrap(base + 2.0, base)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((2.0, 2.0, 2.0))
    assert verdict(interval) == "better"


def test_paired_bootstrap_is_paired_not_two_sample():
    # A large shared item effect and a small consistent gain: pairing sees the gain; ignoring pairs would not.
    rng = np.random.default_rng(0)
    item = rng.normal(0, 10, size=400)
    gain = 0.5 + rng.normal(0, 0.2, size=400)
    interval = paired_bootstrap(item + gain, item, seed=1)
    assert interval.low > 0.45 and interval.high < 0.55
    assert paired_bootstrap(item + gain, item, seed=1) == interval  # deterministic for a seed


def test_bootstrap_interval_of_top1_points_covers_the_observed_gap():
    rng = np.random.default_rng(3)
    a = (rng.random(1000) < 0.942).astype(float) * 100
    b = (rng.random(1000) < 0.939).astype(float) * 100
    interval = paired_bootstrap(a, b)
    assert interval.low < interval.estimate < interval.high
    assert verdict(interval) == "tie"  # three images in a thousand are not resolvable


def test_verdict_follows_the_metric_direction():
    lower_ppl = Interval(-0.5, -0.8, -0.2, n=5, method="t")
    assert verdict(lower_ppl, higher_is_better=False) == "better"
    assert verdict(lower_ppl, higher_is_better=True) == "worse"
    assert verdict(Interval(0.1, -0.1, 0.3, n=5, method="t")) == "tie"
    assert verdict_phrase(lower_ppl, "gptq", higher_is_better=False).startswith("beats gptq (-0.5 [-0.8, -0.2]")


def test_mismatched_or_empty_pairs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        seed_t_interval([], [])


def test_a_transform_applies_to_the_resampled_means_not_to_the_items():
    # Two windows, NLL 0 and 2 ln 2 for the method, 0 and 0 for the baseline. A resample's mean NLL is 0, ln 2 or
    # 2 ln 2 (probabilities 1/4, 1/2, 1/4), so its perplexity gap exp(mean) - 1 is 0, 1 or 3: the 2.5 % and 97.5 %
    # quantiles are 0 and 3, and the estimate is exp(ln 2) - exp(0) = 1 (the mean of exp per item would say 1.5).
    nll_method, nll_baseline = np.array([0.0, 2 * math.log(2)]), np.zeros(2)
    ppl = paired_bootstrap(nll_method, nll_baseline, transform=np.exp)
    assert (ppl.estimate, ppl.low, ppl.high) == pytest.approx((1.0, 0.0, 3.0))
    assert verdict(ppl, higher_is_better=False) == "tie"
    plain = paired_bootstrap(nll_method, nll_baseline)  # the same resamples, untransformed: mean NLL gaps
    assert (plain.estimate, plain.low, plain.high) == pytest.approx((math.log(2), 0.0, 2 * math.log(2)))


def test_a_transform_of_a_constant_gap_is_exact():
    interval = paired_bootstrap(np.full(30, math.log(2)), np.full(30, math.log(4)), transform=np.exp)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((-2.0, -2.0, -2.0))
    assert verdict(interval, higher_is_better=False) == "better"


@pytest.mark.parametrize("interval, claim, margin, higher_is_better, holds", [
    (Interval(1.0, 0.2, 1.8, n=5, method="t"), "better", 0.0, True, True),
    (Interval(1.0, -0.2, 2.2, n=5, method="t"), "better", 0.0, True, False),     # a tie is not better
    (Interval(-1.0, -1.8, -0.2, n=5, method="t"), "better", 0.0, False, True),   # lower is better: ppl fell
    (Interval(-0.3, -0.4, 0.2, n=5, method="t"), "not_worse", 0.5, True, True),  # worst case 0.4 worse <= 0.5
    (Interval(-0.3, -0.6, 0.2, n=5, method="t"), "not_worse", 0.5, True, False),  # 0.6 worse cannot be excluded
    (Interval(0.3, -0.2, 0.45, n=5, method="t"), "not_worse", 0.5, False, True),  # ppl up by 0.45 at most
    (Interval(0.3, -0.2, 0.55, n=5, method="t"), "not_worse", 0.5, False, False),
    (Interval(-0.1, -0.2, 0.0, n=5, method="t"), "not_worse", 0.0, True, False),  # no margin: must exclude a loss
])
def test_claim_holds_by_the_interval_the_claim_and_the_margin(interval, claim, margin, higher_is_better, holds):
    assert claim_holds(interval, claim, margin, higher_is_better) is holds


def test_an_unknown_claim_is_refused():
    with pytest.raises(ValueError, match="unknown claim 'same'"):
        claim_holds(Interval(0.0, -1.0, 1.0, n=3, method="t"), "same")  # type: ignore[arg-type]
