"""Register the dense parent and the compressed model as versions of `paperops-<paper>`, each with the record
a reviewer needs in the MLflow UI: data (DVC md5, GX result), config hash, runs, metrics, and for the compressed
version its compression record (parent version, method, knobs, deltas vs the parent, device)."""
from __future__ import annotations

import json
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from models.common.recipe import Recipe, get_recipe
from tasks.data import DatasetRef
from tasks.refs import EvaluationRef, ModelRef, RegisteredVersions
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, registered_model_name
from tasks.validate import ValidationReport


def _find_version(client: MlflowClient, name: str, model_uri: str) -> str | None:
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("paperops.model_uri") == model_uri:
            return str(version.version)
    return None


def _metric_tags(prefix: str, metrics: dict[str, float]) -> dict[str, str]:
    return {f"{prefix}.{k}": f"{v:.6g}" for k, v in sorted(metrics.items())}


def version_tags(paper: str, profile: str, config_hash: str, dataset: DatasetRef, validation: ValidationReport,
                 model: ModelRef, evaluation: EvaluationRef, variant: str, parent_run_id: str) -> dict[str, str]:
    recipe = get_recipe(paper)
    evaluated = evaluation.variants[variant]
    return {
        "paperops.paper": paper, "paperops.recipe": recipe.name, "paperops.profile": profile,
        "paperops.role": model.role, "paperops.variant": variant, "paperops.model_uri": model.model_uri,
        "paperops.config_hash": config_hash, "paperops.pipeline_run_id": parent_run_id,
        "paperops.training_run_id": model.run_id, "paperops.evaluation_run_id": evaluation.run_id,
        "dataset.name": dataset.name, "dataset.stage": dataset.stage, "dataset.md5": dataset.md5,
        "gx.suite": validation.suite, "gx.success": str(validation.success).lower(),
        "primary_metric": recipe.primary_metric,
        **_metric_tags("metrics", evaluated.metrics),
        **{f"device.{k}": str(v) for k, v in evaluation.device.items()},
        "validation_status": "pending",
    }


def compression_tags(parent_version: str, compressed: ModelRef, evaluation: EvaluationRef,
                     recipe: Recipe) -> dict[str, str]:
    m = next(v for v in evaluation.variants.values() if v.role == "method").metrics
    knobs = compressed.knobs or {}
    return {
        "compression.parent_version": parent_version,
        "compression.method": recipe.compression,
        "compression.knobs": json.dumps(knobs, sort_keys=True),
        **{f"compression.{k}": v for k, v in recipe.compression_record(knobs).items()},
        f"compression.delta_{recipe.primary_metric}": f"{m['delta_vs_parent']:.4f}",
        f"compression.{recipe.cost_metric}": f"{m[recipe.cost_metric]:.4f}",
        "compression.throughput_ratio": f"{m.get('throughput_ratio', float('nan')):.4f}",
        "compression.latency_p50_ms": f"{m.get('latency_p50_ms', float('nan')):.4f}",
    }


@task(name="register", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def register_versions(paper: str, profile: str, config_hash: str, dataset: DatasetRef, validation: ValidationReport,
                      dense: ModelRef, compressed: ModelRef, evaluation: EvaluationRef,
                      parent_run_id: str) -> RegisteredVersions:
    """Idempotent: a model already registered (same logged model URI, i.e. same data, config and code through
    the step caches) is not registered again. On any error, versions created by this call are deleted."""
    client = configure_tracking()
    recipe = get_recipe(paper)
    name = registered_model_name(paper)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"paperops.paper": paper, "paperops.recipe": recipe.name},
                                       description=f"{recipe.title}. Dense parents and {recipe.compression} "
                                                   "compressed children; see each version's tags.")
    created: list[str] = []
    try:
        versions: dict[str, str] = {}
        variant_of = {v.role: v.name for v in evaluation.variants.values() if v.role in ("parent", "method")}
        for model, variant in ((dense, variant_of["parent"]), (compressed, variant_of["method"])):
            existing = _find_version(client, name, model.model_uri)
            if existing is not None:
                versions[model.role] = existing
                continue
            tags = version_tags(paper, profile, config_hash, dataset, validation, model, evaluation, variant,
                                parent_run_id)
            if model.role == "method":
                tags.update(compression_tags(versions["parent"], model, evaluation, recipe))
            version = str(mlflow.register_model(model.model_uri, name, tags=tags).version)
            created.append(version)
            versions[model.role] = version
    except BaseException:
        for version in created:
            client.delete_model_version(name, version)
        raise
    return RegisteredVersions(model_name=name, parent_version=versions["parent"],
                              method_version=versions["method"], created=bool(created))
