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
from tasks.ownership import registry_lock
from tasks.record import CompressionRecord, DatasetRecord, DeltaInterval, VersionRecord
from tasks.refs import EvaluationRef, ModelRef, RegisteredVersions
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, registered_model_name
from tasks.validate import ValidationReport


# The inputs a version was made from: its role, its step's key (the resolved config sections the step reads + the
# digest of the code) and every dataset's DVC md5. Runs with the same key register one version between them.
REGISTRATION_KEY_TAG = "paperops.registration_key"
STEP_OF_ROLE = {"parent": "train", "method": "compress"}


def registration_key(role: str, step_keys: dict[str, str], datasets: dict[str, DatasetRef]) -> str:
    md5s = ",".join(f"{key}={datasets[key].md5}" for key in sorted(datasets))
    return f"{role}|{step_keys[STEP_OF_ROLE[role]]}|{md5s}"


def registered_version(client: MlflowClient, name: str, key: str, model_uri: str) -> str | None:
    """The first (lowest) version registered for these inputs or for this very logged model; None if none is."""
    matches = [int(v.version) for v in client.search_model_versions(f"name='{name}'")
               if v.tags.get(REGISTRATION_KEY_TAG) == key or v.tags.get("paperops.model_uri") == model_uri]
    return str(min(matches)) if matches else None


def ensure_registered_model(client: MlflowClient, name: str, recipe: Recipe) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, tags={"paperops.paper": recipe.name, "paperops.recipe": recipe.name},
                                       description=f"{recipe.title}. " + (
                                           f"Dense parents and {recipe.compression} compressed children; see each "
                                           "version's tags." if recipe.compression else
                                           f"Trained models, not compressed: {recipe.compression_skip_reason}"))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else a run on another machine created it just now
            raise


def version_record(recipe: Recipe, profile: str, config_hash: str, datasets: dict[str, DatasetRef],
                   validations: dict[str, ValidationReport], model: ModelRef, evaluation: EvaluationRef, variant: str,
                   pipeline_run_id: str, parent_version: str | None) -> VersionRecord:
    """The validated record of one version from what the pipeline steps handed over (`datasets` and `validations`
    by Recipe.datasets name)."""
    dataset, validation = datasets[MAIN_DATASET], validations[MAIN_DATASET]
    extra_datasets = {key: DatasetRecord(name=ref.name, stage=ref.stage, md5=ref.md5, gx_suite=validations[key].suite,
                                         gx_success=validations[key].success,
                                         gx_data_change_accepted=validations[key].data_change_accepted)
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
        gx_suite=validation.suite, gx_success=validation.success,
        gx_data_change_accepted=validation.data_change_accepted, config_hash=config_hash, git_commit=git_commit(),
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
def register_versions(paper: str, profile: str, config_hash: str, step_keys: dict[str, str],
                      datasets: dict[str, DatasetRef], validations: dict[str, ValidationReport], dense: ModelRef,
                      compressed: ModelRef | None, evaluation: EvaluationRef, parent_run_id: str) -> RegisteredVersions:
    """Idempotent: a model whose inputs (data md5s, the config its step reads, the code: `registration_key`) or
    whose logged model is already registered is not registered again, so runs with nothing changed, however many
    at once, register one version per role. On any error, versions created by this call are deleted.

    The race it closes: two runs each find no version for their key, then each register one. On one machine (or
    machines sharing PAPEROPS_HOME) the registry lock makes look-up and registration one step. Runs on machines
    that share only the tracking server resolve it afterwards: each looks again after registering, and the
    lowest version of the key stands while a later one is deleted by its own run. The registry numbers versions in
    the order their registrations commit, so the run that registered later always sees the earlier version."""
    client = configure_tracking()
    recipe = get_recipe(paper)
    name = registered_model_name(paper)
    created: list[str] = []
    with registry_lock(paper):
        ensure_registered_model(client, name, recipe)
        try:
            versions: dict[str, str] = {}
            variant_of = {v.role: v.name for v in evaluation.variants.values() if v.role in ("parent", "method")}
            models = [(dense, variant_of["parent"])] + ([(compressed, variant_of["method"])] if compressed else [])
            for model, variant in models:
                key = registration_key(model.role, step_keys, datasets)
                existing = registered_version(client, name, key, model.model_uri)
                if existing is not None:
                    versions[model.role] = existing
                    continue
                record = version_record(recipe, profile, config_hash, datasets, validations, model, evaluation,
                                        variant, parent_run_id, versions.get("parent"))
                tags = record.tags() | {"validation_status": "pending", REGISTRATION_KEY_TAG: key}
                version = str(mlflow.register_model(model.model_uri, name, tags=tags).version)
                created.append(version)
                first = registered_version(client, name, key, model.model_uri)
                if first not in (None, version):  # a run on another machine registered the same inputs first
                    client.delete_model_version(name, version)
                    created.remove(version)
                    versions[model.role] = first
                    continue
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
