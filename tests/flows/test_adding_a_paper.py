"""Adding a paper takes one recipe file and one config file (docs/adding-a-paper.md), checked by doing it.

A copy of the project as git has it gets exactly two new files, recipes/logreg.py and configs/logreg.yaml: a
multinomial logistic regression on the digits DVC stage, compression None. This process then runs the copy the
way a fresh interpreter started in it would (PAPEROPS_ROOT is the copy, the `recipes` package reads its modules
from the copy's recipes/), and the twelfth paper goes through the real paper_pipeline: its stage is built by DVC
and validated by GX, it trains in a second, registers, passes the gate, and shows in `paperops list` and among
the deployments `paperops deploy` would register. No other file of the project was touched."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

import recipes
from settings import PROJECT_ROOT

PAPER = "logreg"

RECIPE = '''"""Multinomial logistic regression on scikit-learn's 8x8 digits: the smallest paper the platform runs."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from data.images import ImageDataset, load_image_dataset
from models.common.profiling import measure_latency, size_on_disk
from models.common.reporting import Reporter
from recipes.base import (
    CompressionResult, Evaluation, LatencySection, Recipe, RecipeConfig, Section, VariantResult, register_recipe,
    seed_everything,
)


class TrainSection(Section):
    steps: int = Field(100, ge=1, description="full-batch Adam steps")
    lr: float = Field(0.1, gt=0)


class LogRegConfig(RecipeConfig):
    train: TrainSection = TrainSection()
    evaluate: LatencySection = LatencySection()


def pixels(images: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) grey levels 0-255 -> (N, 64) in [0, 1]."""
    return torch.as_tensor(np.asarray(images, np.float32).reshape(len(images), -1) / 255.0)


def top1(model: nn.Module, data: ImageDataset) -> float:
    with torch.no_grad():
        predicted = model(pixels(data.x_test)).argmax(-1).numpy()
    return 100.0 * float((predicted == data.y_test).mean())


@register_recipe
class LogRegRecipe(Recipe):
    name = "logreg"
    title = "Multinomial logistic regression on scikit-learn's digits"
    compression = None
    compression_skip_reason = "a 64 x 10 linear map has no tokens to prune and too few weights to quantize"
    config_model = LogRegConfig
    primary_metric = "top1"
    cost_metric = "size_ratio"  # never produced: nothing is compressed
    summary_columns = (("top1", "top-1 %", 1.0),)
    smoke_overrides = ()
    deployment_description = "Logistic regression on the digits stage, the two-file paper of adding-a-paper.md"
    deployment_tags = ("vision",)

    def load_data(self, path: str, cfg: LogRegConfig) -> ImageDataset:
        return load_image_dataset(path)

    def build_model(self, cfg: LogRegConfig) -> nn.Module:
        seed_everything(cfg.seed)
        return nn.Linear(64, 10)

    def train(self, model: nn.Module, data: ImageDataset, cfg: LogRegConfig, reporter: Reporter) -> dict[str, float]:
        x, y = pixels(data.x_train), torch.as_tensor(data.y_train, dtype=torch.long)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        for step in range(cfg.train.steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            reporter.log_metrics({"loss": loss.item()}, step=step)
        return {"top1": top1(model, data)}

    def compress(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Reporter) -> CompressionResult:
        raise NotImplementedError(self.compression_skip_reason)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError(self.compression_skip_reason)

    def evaluate(self, dense: nn.Module, compressed: nn.Module | None, data: ImageDataset, cfg: LogRegConfig,
                 reporter: Reporter, trained_metrics: dict[str, float]) -> Evaluation:
        batch = pixels(data.x_test[: cfg.evaluate.latency_batch])
        timing = measure_latency(dense, batch, runs=cfg.evaluate.latency_runs, warmup=cfg.evaluate.latency_warmup)
        metrics = {"top1": top1(dense, data), "size_bytes": float(size_on_disk(dense)), **timing}
        return Evaluation(variants=[VariantResult("logreg", "parent", "logreg", {}, metrics)])

    def input_example(self, data: ImageDataset, n: int = 2) -> np.ndarray:
        return np.asarray(data.x_test[:n], np.float32)

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(pixels(batch)), -1).numpy()
'''

CONFIG = """# Multinomial logistic regression on scikit-learn's digits, validated by recipes.logreg.LogRegConfig.
tiny:
  data:
    stage: digits
    suite: image_classification
    expect:
      height: 8
      width: 8
      channels: 1
      dtype: uint8
      value_range: [0, 255]
      classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
      min_share: 0.5
      max_share: 1.5
      min_images_per_split: 100
  train:
    steps: 100
    lr: 0.1
  evaluate:
    latency_batch: 16
    latency_runs: 2
    latency_warmup: 1
"""


def git(root: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-c", "user.name=paperops", "-c", "user.email=paperops@localhost", *arguments],
                          cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """The project's files as git has them (tracked and not ignored: no datasets, no state), plus the two files."""
    copy = tmp_path_factory.mktemp("twelfth-paper") / "project"
    for name in git(PROJECT_ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0"):
        if name and (PROJECT_ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, copy / name)
    assert not (copy / "recipes" / f"{PAPER}.py").exists() and not (copy / "configs" / f"{PAPER}.yaml").exists()
    (copy / "recipes" / f"{PAPER}.py").write_text(RECIPE)
    (copy / "configs" / f"{PAPER}.yaml").write_text(CONFIG)
    git(copy, "init", "--quiet")
    git(copy, "add", "--all")
    git(copy, "commit", "--quiet", "-m", "a twelfth paper: one recipe file and one config file")
    return copy


@pytest.fixture(scope="module")
def in_the_copy(project_copy: Path) -> Iterator[Path]:
    """This process as if started in the copy: its project root, and its recipes/ as the recipes package's path."""
    from recipes.base import _RECIPES

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPEROPS_ROOT", str(project_copy))
        patch.setattr(recipes, "__path__", [str(project_copy / "recipes")])
        try:
            yield project_copy
        finally:
            _RECIPES.pop(PAPER, None)
            sys.modules.pop(f"recipes.{PAPER}", None)


@pytest.fixture(scope="module")
def twelfth_run(in_the_copy: Path, prefect_api) -> dict[str, Any]:
    from flows.pipeline import paper_pipeline

    return paper_pipeline(PAPER, "tiny")


def test_the_new_paper_runs_through_the_pipeline_and_is_registered_and_promoted(twelfth_run):
    from tasks.record import VersionRecord
    from tasks.tracking import configure_tracking

    steps = twelfth_run["steps"]
    assert steps["prepare-data"] == steps["validate"] == steps["train"] == steps["register"] == "Completed"
    assert steps["compress"] == "Skipped (not applicable)"
    version = configure_tracking().get_model_version(f"paperops-{PAPER}", twelfth_run["versions"]["parent_version"])
    record = VersionRecord.model_validate(mlflow.artifacts.load_dict(version.tags["record.artifact"]))
    assert (record.paper, record.dataset_stage, record.gx_success) == (PAPER, "digits", True)
    assert record.primary_value > 80.0  # a linear model on 8x8 digits, well above chance
    assert record.compression_skipped.startswith("a 64 x 10 linear map")
    assert twelfth_run["promotion"]["promoted"], twelfth_run["promotion"]["reasons"]


def test_the_new_paper_shows_in_paperops_list_and_gets_a_deployment(twelfth_run, monkeypatch):
    from paperops.cli import app

    listed = CliRunner().invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if f" {PAPER} " in line)
    assert "top1" in row and "tiny" in row
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    printed = CliRunner().invoke(app, ["deploy", "--print"])
    assert printed.exit_code == 0, printed.output
    deployment = next(d for d in yaml.safe_load(printed.output)["deployments"] if d["name"] == PAPER)
    assert deployment["parameters"]["paper"] == PAPER and deployment["work_pool"] == {"name": "gpu"}
    assert deployment["tags"] == ["paperops", "vision", PAPER]
