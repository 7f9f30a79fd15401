"""The registry record of a version with one dataset reads exactly as before papers could have several; a recipe's
further datasets (OVOR's pre-training set) add their own stage, md5 and GX tags beside the main dataset's."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tasks.record import DatasetRecord, VersionRecord, data_tag, extra_datasets_in, validation_artifact

MD5 = "bd20eaa271aab184c5f67fe668478f69.dir"
LETTERS_MD5 = "1b69b79b3fc4cbd447046ef7112ab657.dir"


def _record(**changes) -> VersionRecord:
    fields = dict(
        paper="ovor", recipe="ovor", profile="tiny", role="parent", variant="ovor_dense", model_uri="models:/m-1",
        dataset_name="mnist5k", dataset_stage="mnist5k", dataset_md5=MD5, gx_suite="image_classification",
        gx_success=True, config_hash="abc", git_commit="deadbeef", pipeline_run_id="p", training_run_id="t",
        evaluation_run_id="e", primary_metric="a_n", higher_is_better=True, primary_value=90.0, cost_metric="macs",
        weight_bits=32, latency_p50_ms=1.0, latency_p95_ms=2.0, latency_batch=16, throughput_per_s=100.0,
        size_bytes=10, device={"device": "cpu"}, metrics={"a_n": 90.0},
    )
    return VersionRecord(**(fields | changes))


def test_a_single_dataset_record_has_no_trace_of_extra_datasets():
    record = _record()
    dumped = record.model_dump(mode="json")
    assert "extra_datasets" not in dumped
    assert VersionRecord.model_validate(dumped) == record
    tags = record.tags()
    assert {k: tags[k] for k in ("dataset.name", "dataset.stage", "dataset.md5", "gx.suite", "gx.success")} == {
        "dataset.name": "mnist5k", "dataset.stage": "mnist5k", "dataset.md5": MD5,
        "gx.suite": "image_classification", "gx.success": "true"}
    assert [k for k in tags if k.startswith(("dataset.", "gx."))] == [
        "dataset.name", "dataset.stage", "dataset.md5", "gx.suite", "gx.success"]
    assert extra_datasets_in(tags) == []


def test_an_extra_dataset_adds_its_stage_md5_and_suite_beside_the_main_tags():
    letters = DatasetRecord(name="dejavu_letters", stage="dejavu_letters", md5=LETTERS_MD5,
                            gx_suite="image_classification", gx_success=True)
    record = _record(extra_datasets={"pretrain": letters})
    tags = record.tags()
    assert tags["dataset.md5"] == MD5 and tags["dataset.stage"] == "mnist5k"  # the main dataset's, unchanged
    assert {k: v for k, v in tags.items() if ".pretrain." in k} == {
        "dataset.pretrain.name": "dejavu_letters", "dataset.pretrain.stage": "dejavu_letters",
        "dataset.pretrain.md5": LETTERS_MD5, "gx.pretrain.suite": "image_classification",
        "gx.pretrain.success": "true"}
    assert extra_datasets_in(tags) == ["pretrain"]
    dumped = record.model_dump(mode="json")
    assert dumped["extra_datasets"]["pretrain"]["md5"] == LETTERS_MD5
    assert VersionRecord.model_validate(dumped) == record


def test_an_extra_dataset_md5_must_be_a_dvc_md5():
    with pytest.raises(ValidationError, match="md5"):
        DatasetRecord(name="x", stage="x", md5="not-an-md5", gx_suite="s", gx_success=True)


def test_tag_and_artifact_names_of_the_main_and_of_another_dataset():
    assert data_tag("dataset", "data", "md5") == "dataset.md5"
    assert data_tag("gx", "pretrain", "success") == "gx.pretrain.success"
    assert validation_artifact("data", "image_classification") == "validation/image_classification.json"
    assert validation_artifact("pretrain", "image_classification") == "validation/pretrain/image_classification.json"


def test_a_compressed_versions_delta_interval_is_a_tag_the_gate_reads_back():
    from tasks.record import CompressionRecord, DeltaInterval, delta_interval_from_tags

    interval = DeltaInterval(estimate=-0.4, low=-1.25, high=0.375, level=0.95, n=1000,
                             method="paired bootstrap over 1000 items (10000 resamples)")
    compression = CompressionRecord(parent_version="1", method="ppt", knobs={"r": 4})
    record = _record(role="method", variant="ovor_ppt", delta_vs_parent=-0.4, cost_ratio=0.7,
                     compression=compression, delta_vs_parent_interval=interval)
    tags = record.tags()
    assert tags["compression.delta_a_n"] == "-0.4000"
    assert tags["compression.delta_a_n_ci"] == "[-1.2500, 0.3750]"
    assert delta_interval_from_tags(tags, "a_n") == (-1.25, 0.375, interval.method)
    assert VersionRecord.model_validate(record.model_dump(mode="json")) == record
    # A version without per-item scores records no interval, and its record reads as before intervals existed.
    plain = _record(role="method", variant="ovor_ppt", delta_vs_parent=-0.4, cost_ratio=0.7, compression=compression)
    assert "delta_vs_parent_interval" not in plain.model_dump(mode="json")
    assert delta_interval_from_tags(plain.tags(), "a_n") is None


def test_an_accepted_data_change_is_on_the_record_and_its_tags_and_absent_otherwise():
    letters = DatasetRecord(name="dejavu_letters", stage="dejavu_letters", md5=LETTERS_MD5,
                            gx_suite="image_classification", gx_success=True, gx_data_change_accepted=True)
    record = _record(gx_data_change_accepted=True, extra_datasets={"pretrain": letters})
    tags = record.tags()
    assert tags["gx.data_change_accepted"] == "true" and tags["gx.pretrain.data_change_accepted"] == "true"
    dumped = record.model_dump(mode="json")
    assert dumped["gx_data_change_accepted"] is True and dumped["extra_datasets"]["pretrain"]["gx_data_change_accepted"]
    assert VersionRecord.model_validate(dumped) == record
    unaccepted = _record(extra_datasets={"pretrain": letters.model_copy(update={"gx_data_change_accepted": False})})
    assert not any("data_change_accepted" in key for key in unaccepted.tags())
    assert "gx_data_change_accepted" not in json.dumps(unaccepted.model_dump(mode="json"))


def test_the_lineage_says_when_a_data_change_was_accepted():
    from tasks.lineage_view import gx_link

    letters = DatasetRecord(name="dejavu_letters", stage="dejavu_letters", md5=LETTERS_MD5,
                            gx_suite="image_classification", gx_success=True, gx_data_change_accepted=True)
    tags = _record(extra_datasets={"pretrain": letters}).tags()
    assert gx_link(tags, "data", "p") == "suite `image_classification` passed: true; result " \
                                         "`runs:/p/validation/image_classification.json`"
    assert gx_link(tags, "pretrain", "p").endswith(
        "`runs:/p/validation/pretrain/image_classification.json`; drift from the last validated version accepted "
        "(--accept-data-change)")
