"""The w2s paper through the real flow (prefect_test_harness + MLflow on sqlite) at its declared smoke size: the
protocol-A AdaptConf ViT student and its PPT copy are registered, and every other model of the run (weak teacher,
ceiling, KD and AugConf in both protocols, AdaptConf in protocol B, the dense student fine-tuned as PPT is) is scored
in the evaluate step on the same test images, with per-image top-1. What every recipe's run must do is in
test_recipe_smoke.py, on the same run."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from recipes import load_config
from settings import tracking_uri


@pytest.fixture(scope="module")
def first_run(smoke_run):
    return smoke_run("w2s")


def test_registers_the_adaptconf_student_and_its_ppt_copy(first_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = first_run["versions"]
    dense = client.get_model_version("paperops-w2s", versions["parent_version"])
    method = client.get_model_version("paperops-w2s", versions["method_version"])
    for version in (dense, method):
        assert version.tags["dataset.stage"] == "mnist5k"
        assert version.tags["gx.success"] == "true"
        assert float(version.tags["metrics.top1"]) > 10.0  # better than chance even at smoke size
    assert dense.tags["paperops.role"] == "parent"
    assert method.tags["compression.parent_version"] == str(dense.version)
    assert method.tags["compression.method"] == "ppt"
    assert json.loads(method.tags["compression.knobs"])["r"] == load_config("w2s", "tiny").config.compress.r
    assert float(method.tags["compression.macs_ratio"]) < 1.0


def test_every_model_of_the_run_is_scored_on_the_same_test_images(first_run):
    variants = {v["variant"]: v for v in first_run["variants"]}
    models = {"adaptconf", "adaptconf_ppt", "weak_teacher", "ceiling_gt", "kd", "augconf", "B_kd", "B_augconf",
              "B_adaptconf", "adaptconf_same_finetune"}
    assert variants.keys() == models
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    logged = {a.path for a in client.list_artifacts(first_run["evaluation_run_id"], "per_item")}
    assert logged == {f"per_item/{name}.npz" for name in models}
    evaluation = client.get_run(first_run["evaluation_run_id"]).data.metrics
    assert evaluation["B_kd.pgr"] == pytest.approx(
        (evaluation["B_kd.top1"] - evaluation["weak_teacher.top1"])
        / (evaluation["ceiling_gt.top1"] - evaluation["weak_teacher.top1"]))
    # The headline is protocol A's AdaptConf against KD, judged on the paired per-image scores.
    assert first_run["decisive"][0]["name"] == "adaptconf_beats_kd"
    assert (first_run["decisive"][0]["method"], first_run["decisive"][0]["baseline"]) == ("adaptconf", "kd")
    dense = client.get_model_version("paperops-w2s", first_run["versions"]["parent_version"])
    train_run = client.get_run(dense.tags["paperops.training_run_id"])
    logged_train = train_run.data.metrics
    for key in ("weak_teacher.val_top1", "ceiling_gt.val_top1", "kd.val_pgr", "B_adaptconf.val_pgr",
                "adaptconf.alpha_max"):
        assert key in logged_train
    assert not any(".top1" in k and "val_top1" not in k for k in logged_train)  # no test figure from train
    assert 0.0 <= logged_train["adaptconf.alpha_min"] <= logged_train["adaptconf.alpha_max"] <= 0.5
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "figures")}
    assert "figures/alpha_histogram.png" in artifacts
