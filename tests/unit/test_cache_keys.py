"""The heavy steps' Prefect cache keys and the fan-out idempotency key cover every dataset a recipe trains on: a new
version of any of them (OVOR's pre-training set as much as its stream) re-runs what reads it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from settings import project_root
from tasks.compress import compress_model
from tasks.data import DatasetRef
from tasks.evaluate import evaluate_models
from tasks.scaleout import pipeline_idempotency_key
from tasks.train import train_model

STREAM = DatasetRef("mnist5k", "mnist5k", "/repo/data/mnist5k", "0" * 32 + ".dir")
LETTERS = DatasetRef("dejavu_letters", "dejavu_letters", "/repo/data/dejavu_letters", "1" * 32 + ".dir")
LETTERS_REBUILT = DatasetRef("dejavu_letters", "dejavu_letters", "/repo/data/dejavu_letters", "2" * 32 + ".dir")


@pytest.mark.parametrize("step", [train_model, compress_model, evaluate_models], ids=lambda t: t.name)
def test_a_heavy_step_key_changes_with_every_datasets_md5_and_only_with_them(step):
    def key(datasets: dict[str, DatasetRef], parent_run_id: str = "run-1") -> str:
        inputs = {"paper": "ovor", "config": {"seed": 0}, "step_key": "k", "datasets": datasets,
                  "dense": None, "compressed": None, "parent_run_id": parent_run_id}
        return step.cache_policy.compute_key(SimpleNamespace(task=step), inputs, {})

    both = key({"data": STREAM, "pretrain": LETTERS})
    assert key({"data": STREAM, "pretrain": LETTERS}, parent_run_id="run-2") == both  # another pipeline run
    assert key({"data": STREAM, "pretrain": LETTERS_REBUILT}) != both
    assert key({"data": STREAM}) != both


def test_the_fan_out_key_names_every_datasets_md5():
    locked = yaml.safe_load((project_root() / "dvc.lock").read_text())["stages"]
    md5 = {stage: locked[stage]["outs"][0]["md5"] for stage in ("mnist5k", "dejavu_letters", "fashion_mnist")}
    paper, profile, md5s, digest = pipeline_idempotency_key("ovor", "tiny").split(":")
    assert (paper, profile, md5s) == ("ovor", "tiny", f"{md5['mnist5k']}+{md5['dejavu_letters']}")
    assert pipeline_idempotency_key("ppt", "tiny").split(":")[2] == md5["fashion_mnist"]  # one dataset: as before
