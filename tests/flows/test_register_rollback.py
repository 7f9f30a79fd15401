"""Registration is all-or-nothing: if the compressed version cannot be registered, the dense version this call
created is deleted again (real MLflow registry, sqlite in the test's temp dir)."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from recipes import get_recipe
from recipes import load_config
from tasks.data import DatasetRef
from tasks.refs import EvaluationRef, ModelRef, VariantRef
from tasks.register import register_versions
from tasks.tracking import configure_tracking, ensure_experiment, log_paper_model
from tasks.validate import ValidationReport


def test_failed_registration_leaves_no_version_behind():
    client = configure_tracking()
    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", ["model.embed_dim=24"]).config
    run = client.create_run(ensure_experiment(client, "ppt"), run_name="rollback-test")
    uri = log_paper_model(recipe, cfg, recipe.build_model(cfg), np.zeros((2, 28, 28), np.float32), None,
                          run.info.run_id)
    dense = ModelRef(run_id=run.info.run_id, model_uri=uri, role="parent")
    broken = ModelRef(run_id=run.info.run_id, model_uri="models:/m-does-not-exist", role="method",
                      knobs={"method": "ppt", "r": 14, "blocks": [3, 6, 9]})
    timing = {"latency_p50_ms": 5.0, "latency_p95_ms": 6.0, "batch_size": 64, "throughput_per_s": 900.0,
              "size_bytes": 1000.0}
    metrics = {"top1": 90.0, "macs_ratio": 0.68, "delta_vs_parent": -0.3, "throughput_ratio": 1.3, **timing}
    evaluation = EvaluationRef(run_id=run.info.run_id, device={"device": "cpu"}, variants={
        "dense": VariantRef("dense", "parent", "dense", run.info.run_id, {}, {"top1": 90.3, **timing}),
        "ppt": VariantRef("ppt", "method", "ppt", run.info.run_id, {"r": 14}, metrics)})
    report = ValidationReport(dataset="data/mnist5k", suite="image_classification", success=True, evaluated=23,
                              successful=23, failed=[], result={})
    dataset = DatasetRef(name="mnist5k", stage="mnist5k", path="data/mnist5k", md5="0" * 32 + ".dir")
    before = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    with pytest.raises(MlflowException, match="m-does-not-exist"):  # raised after the dense version was created
        register_versions.fn("ppt", "tiny", "cfg", {"data": dataset}, {"data": report}, dense, broken, evaluation,
                             run.info.run_id)
    after = {v.version for v in client.search_model_versions("name='paperops-ppt'")}
    assert after == before
