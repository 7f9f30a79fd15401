"""Evaluate the dense parent, the compressed model and the paper's baselines side by side, in one run on one
machine, and log every variant as a child run of the paper's run (the decisive comparison is one query away), its
per-item scores as `per_item/<variant>.npz` of the evaluate run, and its primary-metric delta vs the parent with the
interval paired over the test items (tasks/evidence.py)."""
from __future__ import annotations

from typing import Any

from prefect import task

from models.common.profiling import device_fingerprint
from recipes.base import Recipe, RecipeConfig, RunModels
from tasks.data import SPLITS_READ_TAG, DatasetRef, dataset_views, splits_read
from tasks.evidence import delta_intervals, log_per_item
from tasks.scaleout import HEAVY_STEP_OPTIONS, gpu_slot
from tasks.refs import EvaluationRef, ModelRef, VariantRef
from tasks.tracking import (
    child_run, compute_device, configure_tracking, load_companions, load_paper_model, recipe_and_config,
)


@task(name="evaluate", **HEAVY_STEP_OPTIONS)
def evaluate_models(paper: str, config: dict[str, Any], step_key: str, datasets: dict[str, DatasetRef],
                    dense: ModelRef, compressed: ModelRef | None, parent_run_id: str) -> EvaluationRef:
    """`compressed` is None for a recipe without compression. The train and compress steps' companions (the
    paper's trained baselines and ablations) are rebuilt from their runs and measured beside them."""
    with gpu_slot():
        client = configure_tracking()
        recipe, cfg = recipe_and_config(paper, config)
        device = compute_device()
        fingerprint = device_fingerprint()
        base_tags = {"paperops.paper": paper, "paperops.step_key": step_key,
                     "paperops.device": fingerprint["device_name"]}
        with child_run(client, parent_run_id, "evaluate", {"paperops.step": "evaluate", **base_tags}) as reporter:
            views = dataset_views(datasets, "evaluate")
            data = recipe.load_data(views, cfg)
            client.set_tag(reporter.run_id, SPLITS_READ_TAG, splits_read(views))
            models = RunModels(
                dense=load_paper_model(dense.model_uri).to(device),
                compressed=load_paper_model(compressed.model_uri).to(device) if compressed else None,
                companions=_companions([s for s in (dense, compressed) if s is not None], recipe, cfg, device),
                train_metrics=dense.metrics)
            evaluation = recipe.evaluate(models, data, cfg, reporter)
            for name, rows in evaluation.tables.items():
                reporter.log_table(name, rows)
            for name, figure in evaluation.figures.items():
                reporter.log_figure(name, figure)
            client.log_dict(reporter.run_id, fingerprint, "device.json")
            ours = recipe.our_figures(evaluation)
            reporter.log_table("paper_vs_ours", [
                {"metric": f.metric, "paper_figure": f.value, "ours": ours.get(f.metric), "source": f.source,
                 "paper_setting": f.note, "higher_is_better": f.higher_is_better,
                 "verdict": f.verdict(ours.get(f.metric))}
                for f in recipe.paper_figures])
            reporter.log_metrics({f"ours.{k}": v for k, v in ours.items()}
                                 | {f"paper_figure.{f.metric}": f.value for f in recipe.paper_figures})
            per_item = log_per_item(client, reporter.run_id, evaluation.variants)
            deltas = delta_intervals(evaluation.variants, recipe.primary_metric,
                                     recipe.per_item_transforms.get(recipe.primary_metric))
            variants: dict[str, VariantRef] = {}
            for v in evaluation.variants:
                tags = {"paperops.step": "evaluate-variant", "paperops.variant": v.name, "paperops.role": v.role,
                        "paperops.method": v.method, "paperops.evaluation_run_id": reporter.run_id, **base_tags}
                delta = deltas.get(v.name)
                if delta is not None:
                    tags["delta_vs_parent.method"] = delta.method
                with child_run(client, parent_run_id, f"variant-{v.name}", tags) as variant_reporter:
                    variant_reporter.log_metrics(v.metrics)
                    if delta is not None:
                        variant_reporter.log_metrics({"delta_vs_parent.low": delta.low,
                                                      "delta_vs_parent.high": delta.high})
                    client.log_dict(variant_reporter.run_id, v.knobs, "knobs.json")
                variants[v.name] = VariantRef(name=v.name, role=v.role, method=v.method,
                                              run_id=variant_reporter.run_id, knobs=v.knobs, metrics=v.metrics,
                                              per_item_metrics=per_item.get(v.name, []), delta_interval=delta)
                reporter.log_metrics({f"{v.name}.{k}": m for k, m in v.metrics.items()})
        return EvaluationRef(run_id=reporter.run_id, variants=variants, device=fingerprint)


def _companions(steps: list[ModelRef], recipe: Recipe, cfg: RecipeConfig, device: str) -> dict[str, Any]:
    """Every step's companions by name; a name two steps both use would hide one model behind the other."""
    modules: dict[str, Any] = {}
    for step in steps:
        for name, module in load_companions(step.run_id, step.companions, recipe, cfg).items():
            if name in modules:
                raise ValueError(f"companion {name!r} is saved by both the train and the compress step of "
                                 f"{recipe.name}: give each model of the run its own name")
            modules[name] = module.to(device)
    return modules
