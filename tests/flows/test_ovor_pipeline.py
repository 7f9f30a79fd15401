"""OVOR through the real flow on a real Prefect API (prefect_test_harness) and a real MLflow registry, at smoke
size: glyph pre-training of a few steps on the real dejavu_letters stage, a short 5-task stream on the real MNIST-5k
stage, PPT on the prompted backbone, the OVOR parent and its PPT version registered, OnePrompt (official schedule)
and the VOR ablations trained in the same run as companions and scored on the same test images in evaluate. OVOR trains on two datasets: both are prepared and validated, recorded and named in the lineage, and a
failed suite on the second stops the flow before training. What every recipe's run must do is in
test_recipe_smoke.py, on the same run."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from recipes import get_recipe
from settings import project_root, tracking_uri
from tasks.validate import DataValidationError

VARIANTS = {"ovor_dense", "ovor_ppt", "oneprompt", "ovor_lambda0", "ovor_origin", "ovor_paper_thresholds",
            "ovor_lambda1", "ovor_lambda1_calibrated"}


@pytest.fixture(scope="module")
def ovor_run(smoke_run):
    return smoke_run("ovor")


def test_registers_the_ovor_parent_and_its_ppt_version(ovor_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = ovor_run["versions"]
    parent = client.get_model_version("paperops-ovor", versions["parent_version"])
    method = client.get_model_version("paperops-ovor", versions["method_version"])
    locked = yaml.safe_load((project_root() / "dvc.lock").read_text())["stages"]
    for version in (parent, method):
        assert version.tags["dataset.stage"] == "mnist5k"
        assert version.tags["dataset.md5"] == locked["mnist5k"]["outs"][0]["md5"]
        assert version.tags["gx.success"] == "true"
        assert version.tags["dataset.pretrain.stage"] == "dejavu_letters"
        assert version.tags["dataset.pretrain.md5"] == locked["dejavu_letters"]["outs"][0]["md5"]
        assert version.tags["gx.pretrain.suite"] == "image_classification"
        assert version.tags["gx.pretrain.success"] == "true"
        assert float(version.tags["metrics.a_n"]) >= 0.0
        record = mlflow.artifacts.load_dict(version.tags["record.artifact"])
        assert record["extra_datasets"]["pretrain"]["md5"] == version.tags["dataset.pretrain.md5"]
        assert "DVC stage (pretrain) | `dejavu_letters` md5" in version.description
        assert "validation/pretrain/image_classification.json" in version.description
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
    # one ViT pass vs the two (query + prompted) of pool methods: about half the MACs
    assert 0.45 < by_name["ovor_dense"]["one_pass_macs_ratio"] < 0.55
    assert by_name["ovor_ppt"]["macs_ratio"] < 0.8


def test_every_variant_is_scored_per_image_on_the_same_test_images(ovor_run):
    """The paired statistics need the same 1,000 test digits in the same order for every model of the run."""
    from data.images import load_image_dataset
    from tasks.evidence import load_per_item

    y_test = load_image_dataset(project_root() / "data" / "mnist5k").y_test
    by_name = {v["variant"]: v for v in ovor_run["variants"]}
    for name in VARIANTS:
        scores = load_per_item(ovor_run["evaluation_run_id"], name)
        assert set(scores) == {"a_n", "top1", "inter_task_error"}, name
        assert all(len(x) == len(y_test) for x in scores.values()), name
        # every task has the same number of test images: A_N per image is 100 * correct
        assert np.array_equal(scores["a_n"], scores["top1"]) and np.isin(scores["top1"], (0.0, 100.0)).all()
        assert scores["a_n"].mean() == pytest.approx(by_name[name]["a_n"])
        assert scores["inter_task_error"].mean() == pytest.approx(by_name[name]["inter_task_error"])
    assert [row["name"] for row in ovor_run["decisive"]] == ["vor_beats_oneprompt", "vor_cuts_cross_task_predictions"]


def test_accuracy_matrix_heatmap_and_thresholds_are_logged(ovor_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    experiment = client.get_experiment_by_name("paperops-ovor")
    train = client.search_runs([experiment.experiment_id], "tags.`paperops.step` = 'train'")[0]
    figures = {a.path for a in client.list_artifacts(train.info.run_id, "figures")}
    assert "figures/accuracy_matrix_val.png" in figures
    for name in ("ovor", "oneprompt", "ovor_lambda0"):  # the streams as measured on val
        assert f"{name}.a_n" in train.data.metrics and f"{name}.acc_after4_task0" in train.data.metrics
    assert train.data.metrics["vor_gain.a_n"] == pytest.approx(
        train.data.metrics["ovor.a_n"] - train.data.metrics["oneprompt.a_n"])
    tables = {a.path for a in client.list_artifacts(train.info.run_id, "tables")}
    assert {"tables/vor_thresholds.json", "tables/accuracy_matrices.json"} <= tables


def test_both_datasets_were_prepared_validated_and_recorded_on_the_pipeline_run(ovor_run):
    assert {step: ovor_run["steps"][step] for step in ("prepare-data", "validate", "prepare-data:pretrain",
                                                        "validate:pretrain")} == dict.fromkeys(
        ("prepare-data", "validate", "prepare-data:pretrain", "validate:pretrain"), "Completed")
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    run = client.get_run(ovor_run["pipeline_run_id"])
    assert run.data.tags["dataset.stage"] == "mnist5k" and run.data.tags["dataset.pretrain.stage"] == "dejavu_letters"
    assert run.data.metrics["gx.pretrain.evaluated_expectations"] == 37
    contexts = {i.dataset.name: {t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert contexts == {"mnist5k": {"training"}, "dejavu_letters": {"pretrain"}}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert "validation/image_classification.json" in artifacts and "validation/pretrain" in artifacts


def test_a_failed_suite_on_the_second_dataset_stops_the_flow_before_training(ovor_run):
    from flows.pipeline import paper_pipeline

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    before = {v.version for v in client.search_model_versions("name='paperops-ovor'")}
    with pytest.raises(DataValidationError, match=r"dejavu_letters failed 3 expectation\(s\)") as raised:
        paper_pipeline("ovor", "tiny", [*get_recipe("ovor").smoke_overrides,"pretrain.data.expect.min_images_per_split=100000"])
    assert "at least 100000 images" in str(raised.value)
    assert {v.version for v in client.search_model_versions("name='paperops-ovor'")} == before
    experiment = client.get_experiment_by_name("paperops-ovor").experiment_id
    [failed] = client.search_runs([experiment], "tags.`gx.pretrain.success` = 'false'")
    assert failed.info.status == "FAILED" and failed.data.tags["gx.success"] == "true"  # the stream passed
    assert client.search_runs([experiment], f"tags.mlflow.parentRunId = '{failed.info.run_id}'") == []
    steps = mlflow.artifacts.load_dict(f"runs:/{failed.info.run_id}/pipeline/summary.json")["steps"]
    assert list(steps) == ["prepare-data", "validate", "prepare-data:pretrain", "validate:pretrain"]
