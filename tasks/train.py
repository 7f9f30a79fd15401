"""Train the recipe's dense model and log it to MLflow as the parent of every compressed variant."""
from __future__ import annotations

from typing import Any

from prefect import task

from tasks.data import SPLITS_READ_TAG, DatasetRef, dataset_views, splits_read
from tasks.record import data_tag
from tasks.scaleout import HEAVY_STEP_OPTIONS, gpu_slot
from tasks.refs import ModelRef
from tasks.tracking import (
    child_run, compute_device, configure_tracking, log_companions, log_paper_model, log_params_flat,
    recipe_and_config,
)


@task(name="train", **HEAVY_STEP_OPTIONS)
def train_model(paper: str, config: dict[str, Any], step_key: str, datasets: dict[str, DatasetRef],
                parent_run_id: str) -> ModelRef:
    """`step_key` = the digest of every config section training reads plus the models/ source digest; with every
    dataset's md5 (in `datasets`) it makes the cache key, so nothing else re-trains the model."""
    with gpu_slot():
        client = configure_tracking()
        recipe, cfg = recipe_and_config(paper, config)
        tags = {"paperops.step": "train", "paperops.role": "parent", "paperops.paper": paper,
                "paperops.step_key": step_key,
                **{f"paperops.{data_tag('dataset', key, 'md5')}": ref.md5 for key, ref in datasets.items()}}
        with child_run(client, parent_run_id, "train-dense", tags) as reporter:
            log_params_flat(client, reporter.run_id, config)
            views = dataset_views(datasets, "train")
            data = recipe.load_data(views, cfg)
            client.set_tag(reporter.run_id, SPLITS_READ_TAG, splits_read(views))
            module = recipe.build_model(cfg).to(compute_device())
            result = recipe.train(module, data, cfg, reporter)
            reporter.log_metrics(result.metrics)
            companions = log_companions(client, reporter.run_id, result.companions)
            module = module.cpu().eval()
            model_uri = log_paper_model(recipe, cfg, module, recipe.input_example(data), None, reporter.run_id)
        return ModelRef(run_id=reporter.run_id, model_uri=model_uri, role="parent", metrics=result.metrics,
                        companions=companions)
