"""Compress the dense parent with the recipe's method (`Recipe.compression`) and log the result as a child model."""
from __future__ import annotations

from typing import Any

from prefect import task

from tasks.data import SPLITS_READ_TAG, DatasetRef, dataset_views, splits_read
from tasks.scaleout import HEAVY_STEP_OPTIONS, gpu_slot
from tasks.refs import ModelRef
from tasks.tracking import (
    child_run, compute_device, configure_tracking, load_paper_model, log_companions, log_paper_model,
    log_params_flat, recipe_and_config,
)


@task(name="compress", **HEAVY_STEP_OPTIONS)
def compress_model(paper: str, config: dict[str, Any], step_key: str, datasets: dict[str, DatasetRef],
                   dense: ModelRef, parent_run_id: str) -> ModelRef:
    with gpu_slot():
        client = configure_tracking()
        recipe, cfg = recipe_and_config(paper, config)
        tags = {"paperops.step": "compress", "paperops.role": "method", "paperops.paper": paper,
                "paperops.method": recipe.compression, "paperops.parent_run_id": dense.run_id,
                "paperops.parent_model_uri": dense.model_uri, "paperops.step_key": step_key}
        with child_run(client, parent_run_id, f"compress-{recipe.compression}", tags) as reporter:
            log_params_flat(client, reporter.run_id, config)
            views = dataset_views(datasets, "compress")
            data = recipe.load_data(views, cfg)
            client.set_tag(reporter.run_id, SPLITS_READ_TAG, splits_read(views))
            module = load_paper_model(dense.model_uri).to(compute_device())
            result = recipe.compress(module, data, cfg, reporter)
            reporter.log_metrics(result.metrics)
            client.log_dict(reporter.run_id, result.knobs, "compression/knobs.json")
            companions = log_companions(client, reporter.run_id, result.companions)
            compressed = result.model.cpu().eval()
            model_uri = log_paper_model(recipe, cfg, compressed, recipe.input_example(data), result.knobs,
                                        reporter.run_id)
        return ModelRef(run_id=reporter.run_id, model_uri=model_uri, role="method", metrics=result.metrics,
                        knobs=result.knobs, companions=companions)
