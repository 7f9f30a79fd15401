"""End to end, `paperops run ppt` at smoke size on bad data: labels stored as float64, then (against the recorded
reference of the clean version) one class turned by 90 degrees in every split. Each stops at validation with exit 3
and a message naming split, class and expectation; nothing is trained or registered; the pipeline run records the
GX verdict and the drift."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from data import build, load_image_dataset
from data.images import ARRAY_KEYS
from paperops.cli import app
from recipes import get_recipe, load_config
from settings import tracking_uri
from tasks.data import DatasetRef
from tasks.validate import validate_data

# PPT's tiny profile reads Fashion-MNIST; these runs feed it a small MNIST-5k build, whose 500 val images its
# split-size bound would refuse before the corruption under test.
SMOKE = [*get_recipe("ppt").smoke_overrides, "data.stage=mnist5k", "data.expect.min_images_per_split=100"]
NAME = "mnist5k-bad-data-run"  # its own reference, apart from the smoke runs' mnist5k


def _corrupted(source: Path, target: Path, **arrays: np.ndarray) -> Path:
    dataset = load_image_dataset(source)
    target.mkdir()
    shutil.copy(source / "meta.json", target / "meta.json")
    np.savez(target / "images.npz", **({key: getattr(dataset, key) for key in ARRAY_KEYS} | arrays))
    return target


def _rotated(source: Path, target: Path, label: int) -> Path:
    dataset = load_image_dataset(source)
    turned = {}
    for split in ("train", "val", "test"):
        images, members = getattr(dataset, f"x_{split}").copy(), getattr(dataset, f"y_{split}") == label
        images[members] = np.rot90(images[members], axes=(1, 2))
        turned[f"x_{split}"] = images
    return _corrupted(source, target, **turned)


def test_bad_data_stops_paperops_run_with_exit_3_and_registers_nothing(prefect_api, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clean = build("mnist5k", tmp_path / "clean", test_fraction=0.2, val_fraction=0.125, seed=0)
    float_labels = _corrupted(clean, tmp_path / "float", y_train=load_image_dataset(clean).y_train.astype(np.float64))
    prepared = {"path": float_labels}
    monkeypatch.setattr("tasks.data.reproduce_dataset", lambda stage, root, push=True: DatasetRef(
        NAME, stage, str(prepared["path"]), "c" * 32 + ".dir"))
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    registered = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    runner = CliRunner()

    refused = runner.invoke(app, ["run", "ppt", *sum((["--set", o] for o in SMOKE), [])])
    assert refused.exit_code == 3, refused.output
    assert "data validation failed — nothing was trained or registered" in refused.output
    assert ("expect_column_values_to_be_of_type (label): [train] expected labels stored as int64; observed float64"
            in refused.output)

    # The clean version validated once is the reference; the turned class is then drift, named with its split.
    clean_ref = DatasetRef(NAME, "mnist5k", str(clean), "d" * 32 + ".dir")
    assert validate_data.fn(clean_ref, load_config("ppt", "tiny", SMOKE).config.data).success
    prepared["path"] = _rotated(clean, tmp_path / "rotated", label=3)
    drifted = runner.invoke(app, ["run", "ppt", *sum((["--set", o] for o in SMOKE), [])])
    assert drifted.exit_code == 3, drifted.output
    assert "drift statistic mean_image" in drifted.output and "split=train, label=3" in drifted.output
    assert "run again with --accept-data-change" in drifted.output

    assert {v.version for v in client.search_model_versions("name='paperops-ppt'")} == registered
    experiment = client.get_experiment_by_name("paperops-ppt").experiment_id
    failed = client.search_runs([experiment], f"tags.`dataset.name` = '{NAME}'", order_by=["start_time DESC"])
    assert [run.data.tags["gx.success"] for run in failed] == ["false", "false"]
    assert all(run.info.status == "FAILED" for run in failed)
    assert [run.data.tags["gx.drift_reference"] for run in failed] == [clean_ref.md5, "none"]
    assert "label=3" in failed[0].data.tags["gx.drift_exceeded"]
    for run in failed:  # no training, compression or evaluation run was started
        assert client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run.info.run_id}'") == []


def test_an_accepted_data_change_is_tagged_on_the_pipeline_run() -> None:
    from tasks.lineage import record_validation
    from tasks.validate import FailedExpectation, ValidationReport

    client = MlflowClient(tracking_uri())
    run = client.create_run(client.create_experiment("bad-data-accepted")).info.run_id
    shift = FailedExpectation("expect_column_values_to_be_between", "shift", "[train+val+test vs last validated] "
                              "expected ...; 1 of 30 rows unexpected: [shift=0.2, split=train, label=3]")
    report = ValidationReport(dataset="data/mnist5k", suite="image_classification", success=True, evaluated=41,
                              successful=40, failed=[], result={"drift": {"reference": {"md5": "e" * 32 + ".dir"}}},
                              drift_exceeded=[shift], data_change_accepted=True)
    record_validation.fn(run, "data", report)
    tags = client.get_run(run).data.tags
    assert tags["gx.success"] == "true" and tags["gx.data_change_accepted"] == "true"
    assert tags["gx.drift_reference"] == "e" * 32 + ".dir" and "split=train, label=3" in tags["gx.drift_exceeded"]
    assert "gx.failed" not in tags
