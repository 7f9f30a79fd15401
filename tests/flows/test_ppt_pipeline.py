"""PPT through the real flow at its declared smoke size (a tiny ViT, a fraction of an epoch on the real
Fashion-MNIST stage): what only PPT's run shows. What every recipe's run must do is in test_recipe_smoke.py, on the
same run."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from recipes import get_recipe, load_config
from settings import tracking_uri
from tasks.validate import DataValidationError

SMOKE = list(get_recipe("ppt").smoke_overrides)


@pytest.fixture(scope="module")
def first_run(smoke_run):
    return smoke_run("ppt")


def test_registers_the_ppt_version_of_the_dense_vit_and_measures_the_baselines(first_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = first_run["versions"]
    dense = client.get_model_version("paperops-ppt", versions["parent_version"])
    method = client.get_model_version("paperops-ppt", versions["method_version"])
    for version in (dense, method):
        assert version.tags["dataset.stage"] == "fashion_mnist"
        assert version.tags["dataset.md5"].endswith(".dir") and len(version.tags["dataset.md5"]) == 36
        assert float(version.tags["metrics.top1"]) > 10.0  # better than chance even at smoke size
    assert method.tags["compression.method"] == "ppt"
    assert json.loads(method.tags["compression.knobs"])["r"] == load_config("ppt", "tiny").config.compress.r
    assert float(method.tags["compression.macs_ratio"]) < 0.75
    # The fine-tuned baselines, the dense model fine-tuned the same and the off-the-shelf ablations, in the same run.
    roles = {v["variant"]: v["role"] for v in first_run["variants"]}
    assert roles == {"dense": "parent", "ppt": "method", "dense_same_finetune": "baseline",
                     "tome_equal_budget": "baseline", "evit_equal_budget": "baseline", "ppt_offtheshelf": "ablation",
                     "tome_offtheshelf": "ablation", "evit_offtheshelf": "ablation"}
    by_name = {v["variant"]: v for v in first_run["variants"]}
    for name in ("ppt", "tome_equal_budget", "evit_equal_budget"):  # equal budget: the same MACs within 1 %
        assert by_name[name]["macs_ratio"] == pytest.approx(by_name["ppt"]["macs_ratio"], rel=0.01)
    assert by_name["dense_same_finetune"]["macs_ratio"] == 1.0


def test_the_baselines_are_fine_tuned_from_the_parent_exactly_as_ppt_is(first_run):
    """Each companion of the compress run is fine-tuned with PPT's schedule: the same number of steps and the same
    learning-rate curve (the same generator state gives them the same batches and augmentation too)."""
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    compress_run = client.get_run(client.get_model_version(
        "paperops-ppt", first_run["versions"]["method_version"]).tags["paperops.training_run_id"])
    steps = {name: compress_run.data.metrics[f"{name}_finetune_steps"]
             for name in ("ppt", "tome_equal_budget", "evit_equal_budget", "dense_same_finetune")}
    assert len(set(steps.values())) == 1 and steps["ppt"] > 0
    lr_curves = {name: [m.value for m in client.get_metric_history(compress_run.info.run_id, f"{name}_finetune_lr")]
                 for name in steps}
    assert all(curve == lr_curves["ppt"] for curve in lr_curves.values())


def test_every_decisive_criterion_is_judged_on_per_item_scores(first_run):
    decisive = {row["name"]: row for row in first_run["decisive"]}
    assert set(decisive) == set(load_config("ppt", "tiny").config.decisive)
    assert all(row["interval"] is not None for row in decisive.values())  # every criterion had its per-item scores


def test_changed_compression_knob_reruns_only_what_depends_on_it(first_run):
    from flows.pipeline import paper_pipeline

    changed = paper_pipeline("ppt", "tiny", SMOKE + ["compress.r=8"])
    assert changed["steps"]["train"] == "Cached"
    assert changed["steps"]["compress"] == "Completed"
    assert changed["steps"]["evaluate"] == "Completed"
    assert int(changed["versions"]["method_version"]) > int(first_run["versions"]["method_version"])
    assert changed["versions"]["parent_version"] == first_run["versions"]["parent_version"]


def test_failed_validation_stops_before_training_and_registers_nothing(first_run):
    from flows.pipeline import paper_pipeline

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    before = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    with pytest.raises(DataValidationError, match="height"):
        paper_pipeline("ppt", "tiny", SMOKE + ["data.expect.height=27"])
    after = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    assert after == before
    failed = client.search_runs([client.get_experiment_by_name("paperops-ppt").experiment_id],
                                "tags.`gx.success` = 'false'")
    assert failed and failed[0].info.status == "FAILED"
    children = client.search_runs([failed[0].info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{failed[0].info.run_id}'")
    assert children == []  # no training, compression or evaluation run was started
