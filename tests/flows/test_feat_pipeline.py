"""The FEAT pipeline on a real Prefect API (prefect_test_harness) and a real MLflow registry (sqlite in a temp dir),
at FEAT's declared smoke size: the real glyph stage, one pre-training epoch and a few meta-training episodes per
model, 1-shot and 5-shot. What every recipe's run must do is in test_recipe_smoke.py, on the same run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from recipes import get_recipe
from settings import tracking_uri
from tasks.tracking import load_pyfunc_model
from tasks.validate import DataValidationError

SMOKE = list(get_recipe("feat").smoke_overrides)


@pytest.fixture(scope="module")
def first_run(smoke_run):
    return smoke_run("feat")


def test_registers_the_feat_model_with_its_record_and_measures_every_baseline(first_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    version = client.get_model_version("paperops-feat", first_run["versions"]["parent_version"])
    tags = version.tags
    assert tags["paperops.role"] == "parent"
    assert tags["dataset.stage"] == "glyphs" and tags["gx.suite"] == "few_shot_classes"
    assert tags["gx.success"] == "true"
    assert float(tags["metrics.acc_5w1s"]) > 20.0  # above 5-way chance even at smoke size
    variants = {v["variant"]: v for v in first_run["variants"]}
    assert set(variants) == {"feat", "protonet", "feat_lambda0", "pretrain_protonet", "feat_5shot",
                             "protonet_5shot", "feat_lambda0_5shot"}
    assert {v["role"] for v in variants.values()} == {"parent", "baseline", "ablation", "companion"}
    for v in variants.values():  # every model scored on both test settings (100 episodes each at smoke size)
        assert 0.0 < v["ci95_5w1s"] < 10.0 and 0.0 < v["ci95_5w5s"] < 10.0
    # the 5-shot models carry the paper's 5-shot settings; the 1-shot ones its 1-shot settings
    settings = {name: json.loads(Path(client.download_artifacts(v["run_id"], "knobs.json")).read_text())
                for name, v in variants.items()}
    assert settings["feat_5shot"]["shot"] == 5 and settings["feat_5shot"]["balance"] == 0.1
    assert settings["feat_lambda0_5shot"]["balance"] == 0.0 and settings["feat"]["balance"] == 1.0
    assert settings["pretrain_protonet"] == {"meta_training": False}


def test_the_registered_model_answers_an_episode_request(first_run):
    model = load_pyfunc_model(f"models:/paperops-feat/{first_run['versions']['parent_version']}")
    example = np.asarray(model.input_example, dtype=np.float32)
    assert example.shape == (15, 1 + 32 * 32)  # 5-way 1-shot + 2 queries per class, [label, pixels]
    probs = np.asarray(model.predict(example))
    assert probs.shape == (15, 5) and np.allclose(probs.sum(1), 1.0, atol=1e-4)


def test_a_dataset_with_the_wrong_class_split_stops_before_training(first_run):
    from flows.pipeline import paper_pipeline

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    before = {v.version for v in client.search_model_versions("name='paperops-feat'")}
    with pytest.raises(DataValidationError, match="classes in the split"):
        paper_pipeline("feat", "tiny", SMOKE + ["data.expect.classes_per_split.novel=25"])
    assert {v.version for v in client.search_model_versions("name='paperops-feat'")} == before
