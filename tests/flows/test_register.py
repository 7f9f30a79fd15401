"""Registration on a real MLflow registry (sqlite in the test's temp dir): all-or-nothing (if the compressed
version cannot be registered, the dense version this call created is deleted again) and idempotent by inputs (a
model trained again from the same data, config and code is not registered again, also when another machine
registered it between this run's look-up and its registration)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

import tasks.register
from recipes import get_recipe
from recipes import load_config
from tasks.data import DatasetRef
from tasks.refs import EvaluationRef, ModelRef, VariantRef
from tasks.register import REGISTRATION_KEY_TAG, register_versions, registration_key
from tasks.tracking import configure_tracking, ensure_experiment, log_paper_model
from tasks.validate import ValidationReport

TIMING = {"latency_p50_ms": 5.0, "latency_p95_ms": 6.0, "batch_size": 64, "throughput_per_s": 900.0,
          "size_bytes": 1000.0}
REPORT = ValidationReport(dataset="data/mnist5k", suite="image_classification", success=True, evaluated=23,
                          successful=23, failed=[], result={})
DATASET = DatasetRef(name="mnist5k", stage="mnist5k", path="data/mnist5k", md5="0" * 32 + ".dir")


@dataclass(frozen=True)
class Trained:
    """A dense PPT model logged in a run of its own, as one pipeline run's train step leaves it."""

    dense: ModelRef
    evaluation: EvaluationRef


def train_once() -> Trained:
    client = configure_tracking()
    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", ["model.embed_dim=24"]).config
    run = client.create_run(ensure_experiment(client, "ppt"), run_name="register-test")
    uri = log_paper_model(recipe, cfg, recipe.build_model(cfg), np.zeros((2, 28, 28), np.float32), None,
                          run.info.run_id)
    metrics = {"top1": 90.0, "macs_ratio": 0.68, "delta_vs_parent": -0.3, "throughput_ratio": 1.3, **TIMING}
    evaluation = EvaluationRef(run_id=run.info.run_id, device={"device": "cpu"}, variants={
        "dense": VariantRef("dense", "parent", "dense", run.info.run_id, {}, {"top1": 90.3, **TIMING}),
        "ppt": VariantRef("ppt", "method", "ppt", run.info.run_id, {"r": 14}, metrics)})
    return Trained(ModelRef(run_id=run.info.run_id, model_uri=uri, role="parent"), evaluation)


def step_keys() -> dict[str, str]:
    """Step keys no other test registers under."""
    nonce = time.time_ns()
    return {"train": f"train-{nonce}", "compress": f"compress-{nonce}", "evaluate": f"evaluate-{nonce}"}


def register_dense(trained: Trained, keys: dict[str, str]):
    return register_versions.fn("ppt", "tiny", "cfg", keys, {"data": DATASET}, {"data": REPORT}, trained.dense,
                                None, trained.evaluation, trained.dense.run_id)


def versions_of(key: str) -> list[str]:
    return sorted(str(v.version) for v in configure_tracking().search_model_versions("name='paperops-ppt'")
                  if v.tags.get(REGISTRATION_KEY_TAG) == key)


def test_failed_registration_leaves_no_version_behind():
    client = configure_tracking()
    trained = train_once()
    broken = ModelRef(run_id=trained.dense.run_id, model_uri="models:/m-does-not-exist", role="method",
                      knobs={"method": "ppt", "r": 14, "blocks": [3, 6, 9]})
    before = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    with pytest.raises(MlflowException, match="m-does-not-exist"):  # raised after the dense version was created
        register_versions.fn("ppt", "tiny", "cfg", step_keys(), {"data": DATASET}, {"data": REPORT}, trained.dense,
                             broken, trained.evaluation, trained.dense.run_id)
    after = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    assert after == before


def test_a_model_trained_again_from_the_same_inputs_is_not_registered_again():
    keys = step_keys()
    first = register_dense(train_once(), keys)
    again = register_dense(train_once(), keys)  # another training run: another logged model, the same inputs
    assert first.created and not again.created
    assert again.parent_version == first.parent_version
    assert versions_of(registration_key("parent", keys, {"data": DATASET})) == [first.parent_version]
    changed = register_dense(train_once(), keys | {"train": keys["train"] + "-changed"})
    assert changed.created and changed.parent_version != first.parent_version


def test_a_version_another_machine_registered_meanwhile_stands_and_this_runs_copy_is_deleted(monkeypatch):
    """The race no lock on this machine closes: the other machine's registration commits after this run looked
    and found nothing. This run's own version gets the higher number, so it is the one deleted."""
    keys = step_keys()
    key = registration_key("parent", keys, {"data": DATASET})
    theirs = train_once()
    look_up = tasks.register.registered_version
    calls = []

    def look_up_then_the_other_machine_registers(client, name, wanted, model_uri):
        found = look_up(client, name, wanted, model_uri)
        if not calls:
            calls.append(mlflow.register_model(theirs.dense.model_uri, name, tags={REGISTRATION_KEY_TAG: key}).version)
        return found

    monkeypatch.setattr(tasks.register, "registered_version", look_up_then_the_other_machine_registers)
    ours = register_dense(train_once(), keys)
    assert not ours.created and ours.parent_version == str(calls[0])
    assert versions_of(key) == [str(calls[0])]
