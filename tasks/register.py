"""Register the dense parent and the compressed model as versions of `paperops-<paper>`, each with its validated
record (tasks/record.py) as tags and as a JSON artifact: data (DVC md5, GX result of every dataset), config hash,
git commit, runs, metrics, cost, device, and for the compressed version its compression record (parent version,
method, knobs)."""
from __future__ import annotations

from dataclasses import asdict

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from recipes import get_recipe
from recipes.base import MAIN_DATASET, Recipe
from tasks.data import DatasetRef
from tasks.lineage import git_commit
from tasks.record import CompressionRecord, DatasetRecord, DeltaInterval, VersionRecord
from tasks.refs import EvaluationRef, ModelRef, RegisteredVersions
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, registered_model_name
from tasks.validate import ValidationReport


def _find_version(client: MlflowClient, name: str, model_uri: str) -> str | None:
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("paperops.model_uri") == model_uri:
            return str(version.version)
    return None


def version_record(recipe: Recipe, profile: str, config_hash: str, datasets: dict[str, DatasetRef],
                   validations: dict[str, ValidationReport], model: ModelRef, evaluation: EvaluationRef, variant: str,
                   pipeline_run_id: str, parent_version: str | None) -> VersionRecord:
    """The validated record of one version from what the pipeline steps handed over (`datasets` and `validations`
    by Recipe.datasets name)."""
    dataset, validation = datasets[MAIN_DATASET], validations[MAIN_DATASET]
    extra_datasets = {key: DatasetRecord(name=ref.name, stage=ref.stage, md5=ref.md5, gx_suite=validations[key].suite,
                                         gx_success=validations[key].success)
                      for key, ref in datasets.items() if key != MAIN_DATASET}
    metrics = evaluation.variants[variant].metrics
    interval = evaluation.variants[variant].delta_interval
    knobs = model.knobs or {}
    macs_metric = recipe.macs_per_item_metric
    compression = None
    if model.role == "method":
        assert parent_version is not None
        compression = CompressionRecord(parent_version=parent_version, method=recipe.compression, knobs=knobs,
                                        summary=recipe.compression_record(knobs))
    return VersionRecord(
        paper=recipe.name, recipe=recipe.name, profile=profile, role=model.role, variant=variant,
        model_uri=model.model_uri, dataset_name=dataset.name, dataset_stage=dataset.stage, dataset_md5=dataset.md5,
        gx_suite=validation.suite, gx_success=validation.success, config_hash=config_hash, git_commit=git_commit(),
        pipeline_run_id=pipeline_run_id, training_run_id=model.run_id, evaluation_run_id=evaluation.run_id,
        primary_metric=recipe.primary_metric, higher_is_better=recipe.higher_is_better,
        primary_value=metrics[recipe.primary_metric], delta_vs_parent=metrics.get("delta_vs_parent"),
        delta_vs_parent_interval=DeltaInterval(**asdict(interval)) if interval is not None else None,
        cost_metric=recipe.cost_metric, cost_ratio=metrics.get(recipe.cost_metric) if compression else None,
        macs_per_item=metrics.get(macs_metric) if macs_metric else None, weight_bits=recipe.weight_bits(knobs),
        latency_p50_ms=metrics["latency_p50_ms"], latency_p95_ms=metrics["latency_p95_ms"],
        latency_batch=int(metrics["batch_size"]), throughput_per_s=metrics["throughput_per_s"],
        peak_memory_bytes=int(metrics["peak_memory_bytes"]) if "peak_memory_bytes" in metrics else None,
        size_bytes=int(metrics["size_bytes"]), device={k: str(v) for k, v in evaluation.device.items()},
        metrics=metrics, compression=compression,
        compression_skipped=recipe.compression_skip_reason if recipe.compression is None else None,
        extra_datasets=extra_datasets)


@task(name="register", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def register_versions(paper: str, profile: str, config_hash: str, datasets: dict[str, DatasetRef],
                      validations: dict[str, ValidationReport], dense: ModelRef, compressed: ModelRef | None,
                      evaluation: EvaluationRef, parent_run_id: str) -> RegisteredVersions:
    """Idempotent: a model already registered (same logged model URI, i.e. same data, config and code through
    the step caches) is not registered again. On any error, versions created by this call are deleted."""
    client = configure_tracking()
    recipe = get_recipe(paper)
    name = registered_model_name(paper)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"paperops.paper": paper, "paperops.recipe": recipe.name},
                                       description=f"{recipe.title}. " + (
                                           f"Dense parents and {recipe.compression} compressed children; see each "
                                           "version's tags." if recipe.compression else
                                           f"Trained models, not compressed: {recipe.compression_skip_reason}"))
    created: list[str] = []
    try:
        versions: dict[str, str] = {}
        variant_of = {v.role: v.name for v in evaluation.variants.values() if v.role in ("parent", "method")}
        models = [(dense, variant_of["parent"])] + ([(compressed, variant_of["method"])] if compressed else [])
        for model, variant in models:
            existing = _find_version(client, name, model.model_uri)
            if existing is not None:
                versions[model.role] = existing
                continue
            record = version_record(recipe, profile, config_hash, datasets, validations, model, evaluation, variant,
                                    parent_run_id, versions.get("parent"))
            tags = record.tags() | {"validation_status": "pending"}
            version = str(mlflow.register_model(model.model_uri, name, tags=tags).version)
            created.append(version)
            versions[model.role] = version
            artifact = f"registry/v{version}.json"
            client.log_dict(model.run_id, record.model_dump(mode="json"), artifact)
            client.set_model_version_tag(name, version, "record.artifact", f"runs:/{model.run_id}/{artifact}")
    except BaseException:
        for version in created:
            client.delete_model_version(name, version)
        raise
    return RegisteredVersions(model_name=name, parent_version=versions["parent"],
                              method_version=versions.get("method"), created=bool(created))
