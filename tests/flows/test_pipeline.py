"""The real flow on a real Prefect API (prefect_test_harness) and a real MLflow registry (sqlite in a temp dir),
at smoke size: a tiny ViT trained for a fraction of an epoch on the real MNIST-5k stage."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from recipes import load_config
from settings import tracking_uri
from tasks.validate import DataValidationError

SMOKE = [
    "model.embed_dim=48", "model.num_heads=3",
    "train.epochs=0.5", "train.max_train_images=1024", "train.warmup_epochs=0.1",
    "compress.finetune.epochs=0.25", "compress.finetune.max_train_images=1024",
    "evaluate.max_test_images=256", "evaluate.latency_batch=16", "evaluate.latency_runs=2",
    "evaluate.latency_warmup=1",
]


@pytest.fixture(scope="module")
def first_run(prefect_api):
    from flows.pipeline import paper_pipeline

    return paper_pipeline("ppt", "tiny", SMOKE)


def test_registers_dense_and_ppt_versions_with_their_record(first_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = first_run["versions"]
    assert versions["created"] is True
    dense = client.get_model_version("paperops-ppt", versions["parent_version"])
    method = client.get_model_version("paperops-ppt", versions["method_version"])
    for version in (dense, method):
        tags = version.tags
        assert tags["dataset.stage"] == "mnist5k"
        assert tags["dataset.md5"].endswith(".dir") and len(tags["dataset.md5"]) == 36
        assert tags["gx.success"] == "true"
        assert tags["paperops.profile"] == "tiny"
        assert float(tags["metrics.top1"]) > 10.0  # better than chance even at smoke size
    assert dense.tags["paperops.role"] == "parent"
    assert method.tags["compression.parent_version"] == str(dense.version)
    assert method.tags["compression.method"] == "ppt"
    assert json.loads(method.tags["compression.knobs"])["r"] == load_config("ppt", "tiny").config.compress.r
    assert float(method.tags["compression.macs_ratio"]) < 0.75
    # The pipeline run carries the dataset as an MLflow input and the GX result as an artifact.
    run = client.get_run(first_run["pipeline_run_id"])
    assert run.info.status == "FINISHED"
    assert run.inputs.dataset_inputs[0].dataset.digest == dense.tags["dataset.md5"][:36]
    assert "validation/image_classification.json" in {a.path for a in client.list_artifacts(run.info.run_id,
                                                                                           "validation")}
    # Baselines at equal budget and the off-the-shelf ablation were measured in the same run.
    assert {v["variant"] for v in first_run["variants"]} == {
        "dense", "ppt_offtheshelf", "ppt", "tome_equal_budget", "evit_equal_budget"}


def test_promotion_follows_the_gate(first_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    decision = first_run["promotion"]
    method = client.get_model_version("paperops-ppt", first_run["versions"]["method_version"])
    if decision["promoted"]:
        assert str(client.get_model_version_by_alias("paperops-ppt", "champion").version) == str(method.version)
        assert method.tags["validation_status"] == "approved"
    else:
        assert method.tags["validation_status"] == "rejected"
        assert method.tags["promotion.reasons"] == " | ".join(decision["reasons"])


def test_second_identical_run_hits_the_cache(first_run):
    from flows.pipeline import paper_pipeline

    again = paper_pipeline("ppt", "tiny", SMOKE)
    assert again["steps"]["train"] == "Cached"
    assert again["steps"]["compress"] == "Cached"
    assert again["steps"]["evaluate"] == "Cached"
    assert again["versions"]["created"] is False
    assert again["versions"]["method_version"] == first_run["versions"]["method_version"]


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
