"""Companions (a step's other models) round-trip through the step's run: saved as safetensors, rebuilt by the recipe
with their compression re-applied from their knobs, filled strictly; and one name used by two steps is refused."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from recipes.base import Companion, CompressionResult, DataSection, Recipe, RecipeConfig, RunModels, TrainResult
from tasks.evaluate import _companions
from tasks.refs import ModelRef
from tasks.tracking import configure_tracking, load_companions, log_companions


class NarrowingRecipe(Recipe):
    """A two-layer MLP whose "compression" narrows its hidden layer: the compressed state dict only fits a module
    that was narrowed the same way, so loading it proves the knobs were re-applied. Not registered."""

    name = "narrowing"

    def load_data(self, datasets: Any, cfg: RecipeConfig) -> Any: ...

    def build_model(self, cfg: RecipeConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def train(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Any) -> TrainResult: ...

    def compress(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Any) -> CompressionResult: ...

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        model[0] = nn.Linear(4, knobs["hidden"])
        model[2] = nn.Linear(knobs["hidden"], 3)
        return model

    def evaluate(self, models: RunModels, data: Any, cfg: RecipeConfig, reporter: Any) -> Any: ...

    def input_example(self, data: Any, n: int = 2) -> Any: ...

    def predict(self, model: nn.Module, batch: Any, params: dict[str, Any] | None = None) -> Any: ...


CONFIG = RecipeConfig(data=DataSection(stage="none", suite="none"))


def step_run(name: str) -> str:
    client = configure_tracking()
    experiment = client.get_experiment_by_name("companions")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("companions")
    return client.create_run(experiment_id, run_name=name).info.run_id


def test_a_compressed_companion_comes_back_narrowed_by_its_knobs_with_its_weights():
    recipe = NarrowingRecipe()
    torch.manual_seed(0)
    narrowed = recipe.restore_compression(recipe.build_model(CONFIG), {"hidden": 2})
    run_id = step_run("compress")
    index = log_companions(configure_tracking(), run_id, {"narrow": Companion(narrowed, {"hidden": 2})})
    assert index == {"narrow": {"hidden": 2}}
    (loaded,) = load_companions(run_id, index, recipe, CONFIG).values()
    assert loaded[0].out_features == 2 and not loaded.training
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), narrowed(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):  # without its knobs the weights do not fit
        load_companions(run_id, {"narrow": None}, recipe, CONFIG)


def test_two_steps_saving_a_companion_under_one_name_are_refused():
    recipe = NarrowingRecipe()
    client = configure_tracking()
    refs = []
    for step, role in (("train", "parent"), ("compress", "method")):
        run_id = step_run(step)
        index = log_companions(client, run_id, {"baseline": Companion(recipe.build_model(CONFIG))})
        refs.append(ModelRef(run_id=run_id, model_uri=f"runs:/{run_id}/model", role=role, companions=index))
    assert set(_companions(refs[:1], recipe, CONFIG, "cpu")) == {"baseline"}
    with pytest.raises(ValueError, match="companion 'baseline' is saved by both the train and the compress step of "
                                         "narrowing: give each model of the run its own name"):
        _companions(refs, recipe, CONFIG, "cpu")
