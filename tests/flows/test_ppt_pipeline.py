"""PPT through the real flow at its declared smoke size (a tiny ViT, a fraction of an epoch on the real MNIST-5k
stage): what only PPT's run shows. What every recipe's run must do is in test_recipe_smoke.py, on the same run."""
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
        assert version.tags["dataset.stage"] == "mnist5k"
        assert version.tags["dataset.md5"].endswith(".dir") and len(version.tags["dataset.md5"]) == 36
        assert float(version.tags["metrics.top1"]) > 10.0  # better than chance even at smoke size
    assert method.tags["compression.method"] == "ppt"
    assert json.loads(method.tags["compression.knobs"])["r"] == load_config("ppt", "tiny").config.compress.r
    assert float(method.tags["compression.macs_ratio"]) < 0.75
    # Baselines at equal budget and the off-the-shelf ablation were measured in the same run.
    assert {v["variant"] for v in first_run["variants"]} == {
        "dense", "ppt_offtheshelf", "ppt", "tome_equal_budget", "evit_equal_budget"}


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
