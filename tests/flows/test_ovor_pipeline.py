"""OVOR through the real flow on a real Prefect API (prefect_test_harness) and a real MLflow registry, at OVOR's
declared smoke size: glyph pre-training of a few steps, a short 5-task stream on the real MNIST-5k stage, PPT on
the prompted backbone, the OVOR parent and its PPT version registered, the baselines measured in the same run.
What every recipe's run must do is in test_recipe_smoke.py, on the same run."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from settings import tracking_uri

VARIANTS = {"ovor_dense", "ovor_ppt", "oneprompt", "ovor_origin", "ovor_paper_thresholds", "ovor_lambda1",
            "ovor_lambda1_calibrated"}


@pytest.fixture(scope="module")
def ovor_run(smoke_run):
    return smoke_run("ovor")


def test_registers_the_ovor_parent_and_its_ppt_version(ovor_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = ovor_run["versions"]
    parent = client.get_model_version("paperops-ovor", versions["parent_version"])
    method = client.get_model_version("paperops-ovor", versions["method_version"])
    for version in (parent, method):
        assert version.tags["dataset.stage"] == "mnist5k"
        assert version.tags["gx.success"] == "true"
        assert float(version.tags["metrics.a_n"]) >= 0.0
    assert parent.tags["paperops.role"] == "parent"
    assert method.tags["compression.parent_version"] == str(parent.version)
    assert method.tags["compression.method"] == "ppt"
    assert json.loads(method.tags["compression.knobs"])["blocks"] == [1, 3]
    assert float(method.tags["compression.macs_ratio"]) < 0.8


def test_baselines_and_ablations_are_measured_in_the_same_run(ovor_run):
    by_name = {v["variant"]: v for v in ovor_run["variants"]}
    assert set(by_name) == VARIANTS
    assert by_name["oneprompt"]["role"] == "baseline" and by_name["ovor_ppt"]["role"] == "method"
    for v in by_name.values():
        assert 0.0 <= v["a_n"] <= 100.0
    # the registered parent, reloaded and re-measured, reproduces the last row of its training-time matrix
    assert by_name["ovor_dense"]["a_n"] == pytest.approx(by_name["ovor_dense"]["a_n_trained_seed0"], abs=1e-6)
    # one ViT pass vs the two (query + prompted) of pool methods: about half the MACs
    assert 0.45 < by_name["ovor_dense"]["one_pass_macs_ratio"] < 0.55
    assert by_name["ovor_ppt"]["macs_ratio"] < 0.8


def test_accuracy_matrix_heatmap_and_thresholds_are_logged(ovor_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    experiment = client.get_experiment_by_name("paperops-ovor")
    evaluate = client.search_runs([experiment.experiment_id], "tags.`paperops.step` = 'evaluate'")[0]
    figures = {a.path for a in client.list_artifacts(evaluate.info.run_id, "figures")}
    assert "figures/accuracy_matrix.png" in figures
    train = client.search_runs([experiment.experiment_id], "tags.`paperops.step` = 'train'")[0]
    assert "ovor.a_n" in train.data.metrics and "vor_gain.a_n" in train.data.metrics
    assert "ovor.acc_after4_task0" in train.data.metrics
    tables = {a.path for a in client.list_artifacts(train.info.run_id, "tables")}
    assert {"tables/vor_thresholds.json", "tables/accuracy_matrices.json"} <= tables
