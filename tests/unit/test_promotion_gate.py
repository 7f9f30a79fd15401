import math

from recipes.base import PromotionSection, VariantResult, compare_to_parent
from tasks.promote import promotion_failures

GATE = PromotionSection(max_metric_drop=0.5, max_cost_ratio=0.70)


def test_passes_at_the_thresholds():
    assert promotion_failures({"delta_vs_parent": -0.5, "macs_ratio": 0.70}, GATE, "top1", "macs_ratio", True) == []


def test_each_check_fails_on_its_own():
    assert len(promotion_failures({"delta_vs_parent": -0.51, "macs_ratio": 0.6}, GATE, "top1", "macs_ratio", True)) == 1
    assert len(promotion_failures({"delta_vs_parent": 0.0, "macs_ratio": 0.71}, GATE, "top1", "macs_ratio", True)) == 1
    reasons = promotion_failures({"delta_vs_parent": 0.0, "macs_ratio": 0.5}, GATE, "top1", "macs_ratio", False)
    assert reasons == ["dataset did not pass its validation suite"]


def test_lower_is_better_metrics_fail_when_they_rise():
    ppl_gate = PromotionSection(max_metric_drop=2.0, max_cost_ratio=0.5)
    assert promotion_failures({"delta_vs_parent": 2.0, "size_ratio": 0.4}, ppl_gate, "ppl", "size_ratio", True,
                              higher_is_better=False) == []
    assert promotion_failures({"delta_vs_parent": -3.0, "size_ratio": 0.4}, ppl_gate, "ppl", "size_ratio", True,
                              higher_is_better=False) == []
    reasons = promotion_failures({"delta_vs_parent": 2.01, "size_ratio": 0.4}, ppl_gate, "ppl", "size_ratio", True,
                                 higher_is_better=False)
    assert len(reasons) == 1 and "lower is better" in reasons[0]


def test_missing_or_nan_figures_fail():
    reasons = promotion_failures({"delta_vs_parent": math.nan}, GATE, "top1", "macs_ratio", True)
    assert len(reasons) == 2 and "top1" in reasons[0] and "macs_ratio" in reasons[1]


def test_compare_to_parent_adds_deltas():
    variants = [VariantResult("dense", "parent", "dense", {}, {"top1": 90.0, "throughput_per_s": 100.0}),
                VariantResult("ppt", "method", "ppt", {}, {"top1": 89.25, "throughput_per_s": 150.0})]
    compare_to_parent(variants, "top1")
    assert variants[1].metrics["delta_vs_parent"] == -0.75
    assert variants[1].metrics["throughput_ratio"] == 1.5
    assert "delta_vs_parent" not in variants[0].metrics


def test_an_uncompressed_recipe_is_gated_against_the_champion_without_a_cost_check():
    # No cost figure at all (nothing was compressed): only the metric vs the current champion counts.
    assert promotion_failures({"delta_vs_parent": -0.4}, GATE, "acc", "macs_ratio", True,
                              reference="the champion v3", check_cost=False) == []
    reasons = promotion_failures({"delta_vs_parent": -0.6}, GATE, "acc", "macs_ratio", True,
                                 reference="the champion v3", check_cost=False)
    assert len(reasons) == 1 and "vs the champion v3" in reasons[0]


def test_an_uncompressed_candidate_is_compared_with_the_champion_only_on_the_same_data(tmp_path):
    from mlflow import MlflowClient

    from tasks.promote import delta_vs_champion

    uri = f"sqlite:///{tmp_path}/registry.db"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    run = client.create_run(client.create_experiment("e", artifact_location=tmp_path.as_uri())).info.run_id

    def version(acc: float, md5: str) -> str:
        tags = {"metrics.acc": str(acc), "dataset.md5": md5, "paperops.profile": "tiny"}
        return client.create_model_version("m", f"runs:/{run}/model", run_id=run, tags=tags).version

    assert delta_vs_champion(client, "m", version(80.0, "a" * 32), "acc", "champion") == (0.0, "no champion yet")
    client.set_registered_model_alias("m", "champion", "1")
    assert delta_vs_champion(client, "m", version(78.5, "a" * 32), "acc", "champion") == (-1.5, "the champion v1")
    delta, reference = delta_vs_champion(client, "m", version(60.0, "b" * 32), "acc", "champion")
    assert delta == 0.0 and "no comparable champion" in reference and "dataset.md5" in reference


def test_the_reason_quotes_the_item_level_interval_while_the_rule_stays_the_threshold():
    from tasks.promote import delta_evidence

    interval = (-1.9, -0.1, "paired bootstrap over 1000 items (10000 resamples)")
    (reason,) = promotion_failures({"delta_vs_parent": -1.0, "macs_ratio": 0.5}, GATE, "top1", "macs_ratio", True,
                                   interval=interval)
    assert reason.startswith("top1 changed by -1.00 vs the parent (higher is better), 95 % interval [-1.90, -0.10] "
                             "(paired bootstrap over 1000 items (10000 resamples)): worse than the parent at 95 %")
    assert reason.endswith("the gate allows 0.50 worse at most (its rule: the threshold on the point estimate)")
    # The rule is the point estimate: a drop within the threshold passes even when its interval says "worse".
    assert promotion_failures({"delta_vs_parent": -0.4, "macs_ratio": 0.5}, GATE, "top1", "macs_ratio", True,
                              interval=(-0.7, -0.1, "bootstrap")) == []
    assert delta_evidence("top1", -0.4, "the parent", True, (-1.2, 0.4, "bootstrap")).endswith(
        "[-1.20, +0.40] (bootstrap): no difference from the parent at 95 %")
    assert delta_evidence("ppl", -3.0, "the parent", False, (-4.0, -2.0, "bootstrap")).endswith(
        "better than the parent at 95 %")
    assert delta_evidence("top1", -0.4, "the champion v3", True).endswith(
        "no item-level interval (no per-item scores for this comparison)")
