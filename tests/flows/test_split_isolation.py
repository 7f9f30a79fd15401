"""Training and compression never receive a test split, shown for every registered recipe at the size
its `smoke_overrides` declare: its train and compress run to the end on the views the platform gives those steps
(tasks.data.dataset_views), whose loaders hand out fit and val splits only and withhold every test split behind a
stand-in that raises on any use; the logged input example is made from what those steps read. Evaluate's view, on
the same datasets, hands out the test split. (The real tasks record what they were handed as the run tag
paperops.splits_read; test_recipe_smoke.py checks it on every recipe's smoke pipeline.)"""
from __future__ import annotations

import copy

import pytest

from models.common.reporting import RecordingReporter
from recipes import available_recipes, get_recipe, load_config
from settings import project_root
from tasks.data import dataset_views, reproduce_dataset

PAPERS = sorted(available_recipes())


def _read(views) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    return {name: view.roles_read() for name, view in views.items()}


@pytest.mark.parametrize("paper", PAPERS)
def test_train_and_compress_run_without_ever_reading_a_test_split(paper):
    recipe = get_recipe(paper)
    cfg = load_config(paper, "tiny", recipe.smoke_overrides).config
    datasets = {name: reproduce_dataset(section.stage, project_root(), push=False)
                for name, section in recipe.datasets(cfg).items()}
    reporter = RecordingReporter()

    train_views = dataset_views(datasets, "train")
    data = recipe.load_data(train_views, cfg)
    model = recipe.build_model(cfg)
    recipe.train(model, data, cfg, reporter)
    recipe.input_example(data)
    assert _read(train_views) == dict.fromkeys(datasets, {"fit", "val"})
    if recipe.compression is not None:
        compress_views = dataset_views(datasets, "compress")
        compressed = recipe.compress(copy.deepcopy(model), recipe.load_data(compress_views, cfg), cfg, reporter)
        recipe.input_example(recipe.load_data(compress_views, cfg))
        assert compressed.knobs
        assert _read(compress_views) == dict.fromkeys(datasets, {"fit", "val"})

    evaluate_views = dataset_views(datasets, "evaluate")
    recipe.load_data(evaluate_views, cfg)
    assert _read(evaluate_views) == dict.fromkeys(datasets, {"fit", "val", "test"})
