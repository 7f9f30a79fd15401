"""Decisive criteria and the headline judged on hand-made per-item and per-seed figures (tasks/evidence.py), the
config block that declares them, and the per-item scores' round trip through a run's artifacts."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from recipes import get_recipe, load_config
from recipes.base import DecisiveCriterion, VariantResult
from settings.config import ConfigError
from tasks.evidence import (
    Comparison, comparisons, delta_intervals, headline_comparison, judge_items, judge_seeds, judgement_metrics,
    interval_text, judgement_text,
)

BETTER = Comparison("gain", "top1", "method", "baseline", "better", 0.0, True)


def correct(pattern: str) -> np.ndarray:
    """Per-item top-1 scores (100 · correct) from a string of 1s and 0s."""
    return np.array([100.0 * (c == "1") for c in pattern])


def scores(method: np.ndarray, baseline: np.ndarray, metric: str = "top1") -> dict[str, dict[str, np.ndarray]]:
    return {"method": {metric: method}, "baseline": {metric: baseline}}


def test_a_clear_gain_holds_and_mcnemar_counts_the_discordant_items():
    method = correct("1" * 90 + "0" * 10)
    baseline = correct("1" * 60 + "0" * 40)  # the method fixes 30 items and breaks none
    judgement = judge_items(BETTER, scores(method, baseline))
    assert judgement.interval.estimate == pytest.approx(30.0)
    assert judgement.interval.low > 0 and judgement.holds is True and judgement.outcome == "holds"
    assert judgement.mcnemar_p == pytest.approx(2 * 0.5 ** 30)  # exact: 30 vs 0 discordant items
    assert "30 items only method got right, 0 only baseline" in judgement.note
    assert judgement_text(judgement.as_dict()).startswith("beats baseline (+30 [")


def test_the_summary_line_of_a_criterion_carries_its_interval_and_mcnemar_beside_it():
    row = judge_items(BETTER, scores(correct("1" * 90 + "0" * 10), correct("1" * 60 + "0" * 40))).as_dict()
    i = row["interval"]
    assert interval_text(row) == (f"+30 [{i['low']:+.4g}, {i['high']:+.4g}] (paired bootstrap over 100 items (10000 "
                                  f"resamples); McNemar: 30 items only method got right, 0 only baseline, exact p = "
                                  f"{2 * 0.5 ** 30:.3g})")
    assert interval_text(judge_items(BETTER, {}).as_dict()) == ""


def test_a_tie_does_not_hold_however_the_point_estimate_leans():
    method = correct("10" * 50)
    baseline = correct("01" * 49 + "00")  # 1 item in 100: the direction alone would say "beats"
    judgement = judge_items(BETTER, scores(method, baseline))
    assert judgement.interval.estimate == pytest.approx(1.0)
    assert judgement.interval.low < 0 < judgement.interval.high
    assert judgement.holds is False and judgement.outcome == "does not hold"
    assert judgement_text(judgement.as_dict()).startswith("no difference from baseline")


def test_a_loss_does_not_hold_and_is_called_worse():
    judgement = judge_items(BETTER, scores(correct("1" * 50 + "0" * 50), correct("1" * 80 + "0" * 20)))
    assert judgement.interval.high < 0 and judgement.holds is False
    assert judgement.as_dict()["verdict"].startswith("worse than baseline (-30")


@pytest.mark.parametrize("margin, holds", [(5.0, True), (1.0, False)])
def test_not_worse_holds_when_the_worst_case_is_within_the_margin(margin, holds):
    rng = np.random.default_rng(0)
    baseline = rng.normal(70.0, 5.0, size=400)  # per-episode accuracies: no McNemar
    method = baseline - 1.0 + rng.normal(0.0, 1.0, size=400)  # about 1 point worse, tightly paired
    claim = Comparison("kept", "acc", "method", "baseline", "not_worse", margin, True)
    judgement = judge_items(claim, scores(method, baseline, "acc"))
    assert -1.3 < judgement.interval.low < judgement.interval.high < -0.7
    assert judgement.holds is holds and judgement.mcnemar_p is None and judgement.note == ""


def test_a_lower_is_better_metric_is_judged_in_its_direction_through_its_transform():
    nll_baseline = np.full(40, math.log(20.0))
    nll_method = nll_baseline - 0.05 + np.tile([0.01, -0.01], 20)  # perplexity about 1 lower on every window
    claim = Comparison("ppl", "ppl", "method", "baseline", "better", 0.0, False)
    judgement = judge_items(claim, scores(nll_method, nll_baseline, "ppl"), transform=np.exp)
    assert judgement.interval.estimate == pytest.approx(20.0 * math.exp(-0.05) - 20.0, rel=1e-3)
    assert judgement.interval.high < 0 and judgement.holds is True


@pytest.mark.parametrize("per_item, why", [
    ({"method": {"top1": correct("1100")}}, "variant 'baseline' was not evaluated in this run"),
    ({"method": {"top1": correct("1100")}, "baseline": {}}, "variant 'baseline' logged no per-item 'top1' scores"),
    ({"method": {"top1": correct("1100")}, "baseline": {"top1": correct("110")}}, "are not the same items (4 vs 3)"),
])
def test_missing_variants_or_scores_are_not_measured_never_passed(per_item, why):
    judgement = judge_items(BETTER, per_item)
    assert judgement.holds is None and judgement.interval is None
    assert judgement.outcome.startswith("not measured: ") and why in judgement.outcome
    metrics, tags = judgement_metrics(judgement, "decisive.gain")
    assert metrics == {} and tags == {"decisive.gain.outcome": judgement.outcome}  # no holds metric at all


def test_a_judgement_is_logged_under_its_prefix():
    judgement = judge_items(BETTER, scores(correct("1" * 90 + "0" * 10), correct("1" * 60 + "0" * 40)))
    metrics, tags = judgement_metrics(judgement, "decisive.gain")
    assert metrics["decisive.gain.holds"] == 1.0 and metrics["decisive.gain.estimate"] == pytest.approx(30.0)
    assert metrics["decisive.gain.low"] == judgement.interval.low
    assert metrics["decisive.gain.high"] == judgement.interval.high
    assert tags["decisive.gain.method"].startswith("paired bootstrap over 100 items")
    assert tags["decisive.gain.outcome"] == "holds" and tags["decisive.gain.verdict"].startswith("beats baseline")


def test_over_seeds_the_criterion_is_the_t_interval_of_the_paired_differences():
    method = {0: 80.0, 1: 81.5, 2: 79.0}
    baseline = {0: 79.0, 1: 79.5, 2: 79.5}
    per_seed = {s: {"method": {"top1": method[s]}, "baseline": {"top1": baseline[s]}} for s in method}
    judgement = judge_seeds(BETTER, per_seed)
    diffs = [1.0, 2.0, -0.5]
    low, high = scipy_stats.t.interval(0.95, df=2, loc=np.mean(diffs), scale=scipy_stats.sem(diffs))
    assert (judgement.interval.low, judgement.interval.high) == pytest.approx((low, high))
    assert judgement.holds is False and "over 3 seeds (df 2)" in judgement.interval.method  # 0.83 on average: a tie
    per_seed[1].pop("baseline")
    missing = judge_seeds(BETTER, per_seed)
    assert missing.holds is None and "seed(s) [1]" in missing.outcome


def test_criteria_take_the_recipes_direction_unless_they_name_their_own():
    recipe = get_recipe("cbq")  # perplexity: lower is better
    cfg = load_config("cbq", "tiny", ["decisive.milton.metric=ppl_milton", "decisive.milton.method=cbq_W4A16",
                                      "decisive.milton.baseline=rtn_W4A16", "decisive.milton.claim=not_worse",
                                      "decisive.milton.margin=1.5", "decisive.up.metric=size_ratio",
                                      "decisive.up.method=a", "decisive.up.baseline=b", "decisive.up.claim=better",
                                      "decisive.up.higher_is_better=true"]).config
    by_name = {c.name: c for c in comparisons(recipe, cfg)}
    assert by_name["milton"] == Comparison("milton", "ppl_milton", "cbq_W4A16", "rtn_W4A16", "not_worse", 1.5, False)
    assert by_name["up"].higher_is_better is True
    assert set(by_name) == {"milton", "up", *load_config("cbq", "tiny").config.decisive}
    headline = headline_comparison(recipe)
    assert (headline.method, headline.baseline, headline.claim, headline.higher_is_better) == (
        recipe.headline.method_variant, recipe.headline.baseline_variant, "better", False)


CRITERION = ["decisive.x.metric=top1", "decisive.x.method=ppt", "decisive.x.baseline=dense"]


@pytest.mark.parametrize("overrides, message", [
    (CRITERION + ["decisive.x.claim=same"], "decisive.x.claim: Input should be 'better' or 'not_worse'"),
    (CRITERION + ["decisive.x.claim=better", "decisive.x.margin=0.5"], "margin 0.5 applies to claim not_worse only"),
    (CRITERION + ["decisive.x.claim=not_worse", "decisive.x.margin=-1"],
     "decisive.x.margin: Input should be greater than or equal to 0"),
    (["decisive.X-1.metric=top1", "decisive.X-1.method=a", "decisive.X-1.baseline=b", "decisive.X-1.claim=better"],
     "criterion names ['X-1'] must match"),
    (["reproduce.seeds=1"], "reproduce.seeds: Input should be greater than or equal to 2"),
    (["reproduce.overrides=[seed=3]"], "a reproduction sets the seed itself"),
    (["reproduce.overrides=[train.epochs]"], "'train.epochs' is not key=value"),
])
def test_a_bad_decisive_or_reproduce_block_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("ppt", "tiny", overrides)


def test_criteria_and_reproduce_settings_change_no_digest():
    base = load_config("ppt", "tiny")
    judged = load_config("ppt", "tiny", ["decisive.ppt_beats_tome_equal_budget.claim=not_worse",
                                         "decisive.ppt_beats_tome_equal_budget.margin=1", "reproduce.seeds=3",
                                         "reproduce.overrides=[train.epochs=1]"])
    assert judged.digest() == base.digest()
    assert judged.config.decisive["ppt_beats_tome_equal_budget"] == DecisiveCriterion(
        metric="top1", method="ppt", baseline="tome_equal_budget", claim="not_worse", margin=1.0)


def test_delta_intervals_pair_every_variant_with_the_parent_on_the_primary_metric():
    parent = VariantResult("dense", "parent", "dense", {}, {"top1": 75.0}, {"top1": correct("1" * 75 + "0" * 25)})
    method = VariantResult("ppt", "method", "ppt", {}, {"top1": 74.0}, {"top1": correct("1" * 74 + "0" * 26)})
    unscored = VariantResult("evit", "baseline", "evit", {}, {"top1": 70.0})
    intervals = delta_intervals([parent, method, unscored], "top1")
    assert set(intervals) == {"ppt"}
    assert intervals["ppt"].estimate == pytest.approx(-1.0) and intervals["ppt"].n == 100
    assert delta_intervals([VariantResult("dense", "parent", "dense", {}, {"top1": 75.0}), method], "top1") == {}


def test_per_item_scores_round_trip_through_the_evaluate_runs_artifacts():
    from tasks.evidence import load_per_item, log_per_item
    from tasks.tracking import configure_tracking

    client = configure_tracking()
    run_id = client.create_run(client.create_experiment("per-item-round-trip")).info.run_id
    scored = {"top1": correct("10"), "nll": np.array([0.5, 1.5])}
    variants = [VariantResult("a", "parent", "m", {}, {"top1": 50.0}, scored),
                VariantResult("b", "baseline", "m", {}, {"top1": 0.0})]
    assert log_per_item(client, run_id, variants) == {"a": ["nll", "top1"]}
    loaded = load_per_item(run_id, "a")
    assert sorted(loaded) == ["nll", "top1"]
    np.testing.assert_array_equal(loaded["top1"], [100.0, 0.0])
    np.testing.assert_array_equal(loaded["nll"], [0.5, 1.5])
