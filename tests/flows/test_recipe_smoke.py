"""Every registered recipe through the real flow on a real Prefect API (prefect_test_harness) and a real MLflow
registry (sqlite in a temp dir), at the size its `smoke_overrides` declare: what every paper's run must do. What
only one paper does is checked in its own test_<paper>_pipeline.py, on the same run."""
from __future__ import annotations

import math
import sys

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from recipes import available_recipes, get_recipe, load_config
from settings import tracking_uri
from tasks.record import VersionRecord
from tasks.tracking import load_pyfunc_model, registered_model_name

PAPERS = sorted(available_recipes())


def registry() -> MlflowClient:
    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def candidate(run: dict) -> str:
    """The version the gate decides on: the compressed one, or the trained one of a recipe that does not compress."""
    return run["versions"]["method_version"] or run["versions"]["parent_version"]


@pytest.mark.parametrize("paper", PAPERS)
def test_registers_its_versions_each_with_its_validated_record(paper, smoke_run):
    recipe = get_recipe(paper)
    run = smoke_run(paper)
    cfg = load_config(paper, "tiny", recipe.smoke_overrides).config
    versions = run["versions"]
    assert versions["created"] is True
    assert (versions["method_version"] is None) == (recipe.compression is None)
    variants = {v["variant"]: v for v in run["variants"]}
    client = registry()
    records = {}
    for role in ("parent", "method"):
        number = versions[f"{role}_version"]
        if number is None:
            continue
        version = client.get_model_version(registered_model_name(paper), number)
        record = VersionRecord.model_validate(mlflow.artifacts.load_dict(version.tags["record.artifact"]))
        assert record.tags().items() <= version.tags.items()  # the tags are the record, flattened
        assert (record.paper, record.role, record.profile, variants[record.variant]["role"]) == (paper, role, "tiny",
                                                                                                  role)
        assert (record.dataset_stage, record.gx_suite, record.gx_success) == (cfg.data.stage, cfg.data.suite, True)
        assert record.primary_metric == recipe.primary_metric
        assert record.primary_value == variants[record.variant][recipe.primary_metric]
        assert math.isfinite(record.primary_value)
        macs = recipe.macs_per_item_metric
        assert record.macs_per_item == (variants[record.variant][macs] if macs else None)
        assert record.size_bytes > 0 and 0 < record.latency_p50_ms <= record.latency_p95_ms
        records[role] = record
    assert records["parent"].weight_bits == 32 and records["parent"].compression is None
    if recipe.compression is None:
        assert records["parent"].compression_skipped == recipe.compression_skip_reason
    else:
        method = records["method"]
        assert method.compression.parent_version == versions["parent_version"]
        assert method.compression.method == recipe.compression
        assert method.cost_ratio == pytest.approx(variants[method.variant][recipe.cost_metric])
        assert method.weight_bits == recipe.weight_bits(method.compression.knobs)
    # The pipeline run carries the dataset as an MLflow input and the GX result as an artifact.
    pipeline = client.get_run(run["pipeline_run_id"])
    assert pipeline.info.status == "FINISHED"
    assert pipeline.inputs.dataset_inputs[0].dataset.digest == records["parent"].dataset_md5[:36]
    validation = {a.path for a in client.list_artifacts(pipeline.info.run_id, "validation")}
    assert f"validation/{cfg.data.suite}.json" in validation


@pytest.mark.parametrize("paper", PAPERS)
def test_the_gate_decided_the_candidate_by_its_thresholds(paper, smoke_run):
    recipe = get_recipe(paper)
    run = smoke_run(paper)
    gate = load_config(paper, "tiny", recipe.smoke_overrides).config.promote
    decision = run["promotion"]
    assert decision["version"] == candidate(run) and decision["alias"] == gate.alias
    tags = registry().get_model_version(registered_model_name(paper), candidate(run)).tags
    if decision["promoted"]:
        assert tags["validation_status"] == "approved" and not decision["reasons"]
        assert f"@{gate.alias} set by paperops pipeline" in tags["promotion.audit"]
        if recipe.compression is not None:  # the thresholds, checked here against the registered figures
            worsening = float(tags["metrics.delta_vs_parent"]) * (-1 if recipe.higher_is_better else 1)
            assert worsening <= gate.max_metric_drop
            assert float(tags[f"metrics.{recipe.cost_metric}"]) <= gate.max_cost_ratio
    else:
        assert tags["validation_status"] == "rejected" and decision["reasons"]
        assert tags["promotion.reasons"] == " | ".join(decision["reasons"])


@pytest.mark.parametrize("paper", PAPERS)
def test_the_candidate_answers_a_request_from_the_registry(paper, smoke_run, monkeypatch):
    run = smoke_run(paper)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    # The run's promotion step loaded this model for its serving smoke request; this process must not have kept
    # the artifact's code directory on sys.path (seed processes spawned later inherit it and import from there).
    assert not [entry for entry in sys.path if entry.endswith("code") and "artifacts" in entry]
    model = load_pyfunc_model(f"models:/{registered_model_name(paper)}/{candidate(run)}")
    example = model.input_example
    answer = np.asarray(model.predict(example))
    assert len(answer) == len(example)
    if answer.dtype.kind in "fiu":  # scores, probabilities, masks
        assert np.isfinite(answer.astype(np.float64)).all()
    else:
        assert all(isinstance(item, str) for item in answer.tolist())


@pytest.mark.parametrize("paper", PAPERS)
def test_the_summary_shows_the_declared_columns_and_headline(paper, smoke_run):
    from paperops.cli import headline_row, variants_table

    recipe = get_recipe(paper)
    run = smoke_run(paper)
    headers = [column.header for column in variants_table(run).columns]
    declared = [header for _, header, _ in recipe.summary_columns]
    assert headers[:2 + len(declared)] == ["variant", "role", *declared]  # every declared column is filled
    if recipe.headline is not None:
        row, judged = headline_row(run), run["headline"]
        baseline = recipe.headline.baseline_variant
        if judged["interval"] is None:  # the run's variants logged no per-item scores of the headline metric
            assert row["verdict"] == judged["outcome"] and row["verdict"].startswith("not measured: ")
        else:
            assert row["verdict"].split(" (")[0] in (f"beats {baseline}", f"no difference from {baseline}",
                                                    f"worse than {baseline}")


@pytest.mark.parametrize("paper", PAPERS)
def test_every_decisive_criterion_is_reported_as_it_came_out(paper, smoke_run):
    """Each criterion of the config is judged and logged on the pipeline run: measured when both its variants logged
    per-item scores of its metric, otherwise "not measured" with the reason (never a silent pass)."""
    recipe = get_recipe(paper)
    run = smoke_run(paper)
    cfg = load_config(paper, "tiny", recipe.smoke_overrides).config
    assert [row["name"] for row in run["decisive"]] == list(cfg.decisive)
    client = registry()
    logged = {a.path for a in client.list_artifacts(run["evaluation_run_id"], "per_item")}
    pipeline = client.get_run(run["pipeline_run_id"]).data
    for row in run["decisive"]:
        prefix = f"decisive.{row['name']}"
        assert pipeline.tags[f"{prefix}.outcome"] == row["outcome"]
        scored = all(f"per_item/{variant}.npz" in logged for variant in (row["method"], row["baseline"]))
        if row["holds"] is None:
            assert row["outcome"].startswith("not measured: ") and f"{prefix}.holds" not in pipeline.metrics
        else:
            assert scored and pipeline.metrics[f"{prefix}.holds"] == float(row["holds"])
            assert pipeline.metrics[f"{prefix}.low"] <= pipeline.metrics[f"{prefix}.estimate"] <= \
                pipeline.metrics[f"{prefix}.high"]


@pytest.mark.parametrize("paper", PAPERS)
def test_a_second_identical_run_is_cached_and_registers_nothing(paper, smoke_run):
    from flows.pipeline import paper_pipeline

    recipe = get_recipe(paper)
    first = smoke_run(paper)
    client = registry()
    before = {v.version for v in client.search_model_versions(f"name='{registered_model_name(paper)}'")}
    again = paper_pipeline(paper, "tiny", list(recipe.smoke_overrides))
    assert again["steps"]["train"] == again["steps"]["evaluate"] == "Cached"
    assert again["steps"]["compress"] == ("Cached" if recipe.compression else "Skipped (not applicable)")
    assert again["versions"] == first["versions"] | {"created": False}
    assert {v.version for v in client.search_model_versions(f"name='{registered_model_name(paper)}'")} == before
    metric = recipe.primary_metric
    np.testing.assert_array_equal([v[metric] for v in again["variants"]], [v[metric] for v in first["variants"]])


@pytest.mark.parametrize("paper", PAPERS)
def test_the_tasks_hand_train_and_compress_no_test_split(paper, smoke_run):
    from data.suites import SUITES
    from tasks.data import SPLITS_READ_TAG

    recipe = get_recipe(paper)
    run = smoke_run(paper)
    client = registry()
    pipeline = client.get_run(run["pipeline_run_id"])
    tags = {r.data.tags["paperops.step"]: r.data.tags[SPLITS_READ_TAG]
            for r in client.search_runs([pipeline.info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")
            if r.data.tags.get("paperops.step") in ("train", "compress", "evaluate")}
    assert tags.keys() == {"train", "evaluate"} | ({"compress"} if recipe.compression else set())
    sections = recipe.datasets(load_config(paper, "tiny", recipe.smoke_overrides).config)
    for step, tag in tags.items():  # "data: train, val; pretrain: train, val"
        read = {name: splits.split(", ") for name, splits in (part.split(": ") for part in tag.split("; "))}
        roles = {name: {SUITES[sections[name].suite].split_roles[split] for split in splits}
                 for name, splits in read.items()}
        expected = {"fit", "val", "test"} if step == "evaluate" else {"fit", "val"}
        assert roles == dict.fromkeys(sections, expected), (step, tag)
