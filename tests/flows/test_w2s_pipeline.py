"""The w2s paper through the real flow (prefect_test_harness + MLflow on sqlite) at its declared smoke size: the
AdaptConf ViT student and its PPT copy are registered, and KD, AugConf, the weak teacher and the ceiling are
measured in the same run. What every recipe's run must do is in test_recipe_smoke.py, on the same run."""
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


def test_baselines_and_pgr_are_measured_in_the_same_run(first_run):
    variants = {v["variant"]: v for v in first_run["variants"]}
    assert {"adaptconf_dense", "adaptconf_ppt", "weak_teacher", "ceiling_gt", "kd", "augconf",
            "adaptconf_seed_mean"} <= variants.keys()
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    dense = client.get_model_version("paperops-w2s", first_run["versions"]["parent_version"])
    train_run = client.get_run(dense.tags["paperops.training_run_id"])
    logged = train_run.data.metrics
    for key in ("weak.top1", "ceiling.top1", "kd.pgr", "augconf.pgr", "adaptconf.pgr", "adaptconf.alpha_max",
                "decisive.holds"):
        assert key in logged
    assert 0.0 <= logged["adaptconf.alpha_min"] <= logged["adaptconf.alpha_max"] <= 0.5
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "figures")}
    assert "figures/alpha_histogram.png" in artifacts
