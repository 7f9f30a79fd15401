"""The paper's pipeline run in MLflow: opened before any step, it carries the resolved config, every dataset (DVC
md5 tag + `log_input`) and its GX result, its owner process and heartbeat, and at the end the summary and status;
every step is its child run. Before its first step, a pipeline run closes the runs a dead process left RUNNING."""
from __future__ import annotations

import json
import subprocess
import time
import warnings
from typing import Any

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Run
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import DEFAULT, NONE

from recipes.base import MAIN_DATASET
from settings.config import ResolvedConfig
from settings import project_root
from tasks.data import DatasetRef
from tasks.ownership import Heartbeat, ProcessOwner, owner_liveness
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
    """The paper's pipeline run, created with its owner (this process) so that no other run ever sees it RUNNING
    without one. `registers` False: a reproduction's seed run, tagged `paperops.registers=false` (it registers
    nothing)."""
    client = configure_tracking()
    experiment_id = ensure_experiment(client, resolved.paper)
    run = client.create_run(experiment_id, run_name=f"{resolved.paper}-{resolved.profile}", tags={
        "paperops.paper": resolved.paper, "paperops.profile": resolved.profile, "paperops.step": "pipeline",
        "paperops.config_hash": resolved.digest(), "paperops.config_source": resolved.source,
        "paperops.overrides": json.dumps(overrides), "paperops.git_commit": git_commit(),
        "paperops.prefect_flow_run_id": flow_run_id or "", "paperops.registers": str(registers).lower(),
        **ProcessOwner.current().tags(),
    })
    log_params_flat(client, run.info.run_id, resolved.as_dict())
    return run.info.run_id


def hold_pipeline_run(pipeline_run_id: str) -> Heartbeat:
    """Records this process as the pipeline run's owner (a retried flow run takes over from the attempt that
    died) and starts its heartbeat; the caller stops it when the steps are done."""
    client = configure_tracking()
    for key, value in ProcessOwner.current().tags().items():
        client.set_tag(pipeline_run_id, key, value)
    return Heartbeat(client, pipeline_run_id)


@task(name="close-abandoned-runs", cache_policy=NONE, **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def close_abandoned_runs(pipeline_run_id: str) -> list[str]:
    """Closes as KILLED the runs of this paper that a dead process left RUNNING, tagged with why and by whom;
    returns their ids. Runs before any step of this run.

    Other pipeline runs (and their steps) are closed only on proof that their owner is gone
    (tasks/ownership.py: `owner_liveness`); a live one, such as an identical run started beside this one, and one
    that records no owner are left alone. This pipeline run's own running steps exist only when it is a retried
    flow run continuing the pipeline run of an attempt that died (open-pipeline-run is cached per flow run): they
    are closed unless that attempt's process is seen alive on this machine."""
    client = configure_tracking()
    own = client.get_run(pipeline_run_id)
    here, now = ProcessOwner.current(), time.time()
    running = client.search_runs([own.info.experiment_id], "attributes.status = 'RUNNING'")
    by_pipeline: dict[str, list[Run]] = {}
    for run in running:
        pipeline = (run.info.run_id if run.data.tags.get("paperops.step") == "pipeline"
                    else run.data.tags.get("mlflow.parentRunId"))
        if pipeline is not None:
            by_pipeline.setdefault(pipeline, []).append(run)
    closed = []
    for pipeline_id, runs in by_pipeline.items():
        if pipeline_id == pipeline_run_id:
            liveness = owner_liveness(own.data.tags, here, now)
            if liveness.alive and liveness.seen:
                continue  # else Prefect's verdict stands: it retries a flow run only after the attempt crashed
            runs = [run for run in runs if run.info.run_id != pipeline_run_id]  # this flow run continues it
            reason = (f"abandoned: the attempt of this flow run that ran this step died ({liveness.reason}); "
                      "the retry redoes it")
        else:
            try:
                pipeline = next((run for run in runs if run.info.run_id == pipeline_id), None) or \
                    client.get_run(pipeline_id)
            except MlflowException:
                continue  # a step whose pipeline run was deleted: nothing records its owner
            if pipeline.data.tags.get("paperops.step") != "pipeline":
                continue
            liveness = owner_liveness(pipeline.data.tags, here, now)
            if liveness.alive is not False:
                continue
            reason = f"abandoned: {liveness.reason}"
        # Steps first: a pipeline run is never closed while a step of it is still shown running.
        for run in sorted(runs, key=lambda r: r.info.run_id == pipeline_id):
            client.set_tag(run.info.run_id, "paperops.error", reason)
            client.set_tag(run.info.run_id, "paperops.closed_by", f"pipeline run {pipeline_run_id}, {here}")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


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
    reference = report.result.get("drift", {}).get("reference")
    client.set_tag(parent_run_id, data_tag("gx", key, "drift_reference"), reference["md5"] if reference else "none")
    if report.drift_exceeded:
        client.set_tag(parent_run_id, data_tag("gx", key, "drift_exceeded"),
                       "; ".join(f.details for f in report.drift_exceeded)[:5000])
    if report.data_change_accepted:
        client.set_tag(parent_run_id, data_tag("gx", key, "data_change_accepted"), "true")
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
