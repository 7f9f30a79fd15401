"""The paper's pipeline run in MLflow: opened before any step, it carries the resolved config, every dataset (DVC
md5 tag + `log_input`) and its GX result, and at the end the summary and status; every step is its child run."""
from __future__ import annotations

import json
import subprocess
import warnings
from typing import Any

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from prefect import task
from prefect.cache_policies import DEFAULT, NONE

from recipes.base import MAIN_DATASET
from settings.config import ResolvedConfig
from settings import project_root
from tasks.data import DatasetRef
from tasks.record import data_tag, validation_artifact
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, ensure_experiment, log_params_flat, source_digest
from tasks.validate import ValidationReport

# Each step's cache key covers the config sections it reads: later steps' sections are left out.
STEP_EXCLUDED_SECTIONS = {
    "train": ("compress", "evaluate", "promote"),
    "compress": ("evaluate", "promote"),
    "evaluate": ("promote",),
}


def step_keys(resolved: ResolvedConfig) -> dict[str, str]:
    code = source_digest("models", "data", "recipes")
    return {step: f"{resolved.digest(excluding=sections)}-{code}" for step, sections in STEP_EXCLUDED_SECTIONS.items()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "uncommitted"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Cached per flow run and persisted: a retried flow run (its worker died) continues the same pipeline run.
@task(name="open-pipeline-run", cache_policy=DEFAULT, persist_result=True, **IO_RETRIES,
      retry_condition_fn=retry_on_infrastructure_errors)
def open_pipeline_run(resolved: ResolvedConfig, overrides: list[str], flow_run_id: str | None,
                      registers: bool = True) -> str:
    """`registers` False: a reproduction's seed run, tagged `paperops.registers=false` (it registers nothing)."""
    client = configure_tracking()
    experiment_id = ensure_experiment(client, resolved.paper)
    run = client.create_run(experiment_id, run_name=f"{resolved.paper}-{resolved.profile}", tags={
        "paperops.paper": resolved.paper, "paperops.profile": resolved.profile, "paperops.step": "pipeline",
        "paperops.config_hash": resolved.digest(), "paperops.config_source": resolved.source,
        "paperops.overrides": json.dumps(overrides), "paperops.git_commit": git_commit(),
        "paperops.prefect_flow_run_id": flow_run_id or "", "paperops.registers": str(registers).lower(),
    })
    log_params_flat(client, run.info.run_id, resolved.as_dict())
    return run.info.run_id


@task(name="close-abandoned-steps", cache_policy=NONE, **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def close_abandoned_steps(parent_run_id: str) -> list[str]:
    """Closes as KILLED the step runs an earlier attempt of this flow run left RUNNING; returns their ids.

    A retried flow run reuses its pipeline run (open-pipeline-run's result is cached per flow run), so when this
    runs, before any step of this attempt, a running child can only belong to an attempt whose worker died
    mid-step — nothing else would ever close it."""
    client = configure_tracking()
    parent = client.get_run(parent_run_id)
    abandoned = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                                                                "and attributes.status = 'RUNNING'")
    for run in abandoned:
        client.set_tag(run.info.run_id, "paperops.error", "abandoned: the flow-run attempt running this step died "
                                                          "(worker lost); the retry redoes it")
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in abandoned]


@task(name="record-dataset", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def record_dataset(parent_run_id: str, key: str, dataset: DatasetRef) -> None:
    """Tags and `log_input` of the recipe's dataset `key` (a Recipe.datasets name): `dataset.md5` for the main
    dataset, `dataset.<key>.md5` for another."""
    client = configure_tracking()
    for field, value in (("name", dataset.name), ("stage", dataset.stage), ("md5", dataset.md5),
                         ("path", dataset.path)):
        client.set_tag(parent_run_id, data_tag("dataset", key, field), value)
    # A metadata-only dataset: the bytes stay in DVC; MLflow records where they are and their DVC md5.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow registers the local-path source twice and warns about it
        source = resolve_dataset_source(dataset.path)
    meta = MetaDataset(source=source, name=dataset.name, digest=dataset.md5[:36])
    context = "training" if key == MAIN_DATASET else key
    client.log_inputs(parent_run_id, datasets=[DatasetInput(meta._to_mlflow_entity(),
                                                            tags=[InputTag("mlflow.data.context", context)])])


@task(name="record-validation", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def record_validation(parent_run_id: str, key: str, report: ValidationReport) -> None:
    client = configure_tracking()
    client.set_tag(parent_run_id, data_tag("gx", key, "suite"), report.suite)
    client.set_tag(parent_run_id, data_tag("gx", key, "success"), str(report.success).lower())
    client.log_metric(parent_run_id, data_tag("gx", key, "evaluated_expectations"), report.evaluated)
    client.log_metric(parent_run_id, data_tag("gx", key, "successful_expectations"), report.successful)
    client.log_dict(parent_run_id, report.result, validation_artifact(key, report.suite))
    if report.failed:
        client.set_tag(parent_run_id, data_tag("gx", key, "failed"),
                       "; ".join(f"{f.expectation}({f.column})" for f in report.failed))


@task(name="close-pipeline-run", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def close_pipeline_run(parent_run_id: str, summary: dict[str, Any], failed: BaseException | None) -> None:
    client = configure_tracking()
    client.log_dict(parent_run_id, summary, "pipeline/summary.json")
    if failed is not None:
        client.set_tag(parent_run_id, "paperops.error", f"{type(failed).__name__}: {failed}"[:5000])
    client.set_terminated(parent_run_id, status="FAILED" if failed is not None else "FINISHED")
