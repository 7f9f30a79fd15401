"""paper_pipeline: the one flow every paper runs through.

prepare data (DVC) -> validate (GX), for every dataset the recipe declares -> train -> compress -> evaluate ->
decisive criteria and headline judged -> register (MLflow) -> promote -> Pareto front and SLA aliases -> lineage
Thin wiring only: each step is a task in tasks/, steps hand each other references, and the paper's MLflow run
is closed FAILED with the error if any step raises. Before the first step, the runs a dead process left RUNNING
are closed; while the steps run, the paper's run records this process as its owner and keeps a heartbeat. A
reproduction's seed runs (`registers=False`) stop after the judgement: they add nothing to the registry. A dataset
that drifted beyond its bounds from its last validated version stops the run unless `accept_data_change`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from recipes import check_config, get_recipe
from recipes import load_config
from recipes.base import MAIN_DATASET
from tasks.compress import compress_model
from tasks.data import prepare_data
from tasks.evaluate import evaluate_models
from tasks.evidence import judge_run
from tasks.lineage import (
    close_abandoned_runs, close_pipeline_run, hold_pipeline_run, open_pipeline_run, record_dataset, record_validation,
    step_keys,
)
from tasks.lineage_view import store_lineage
from tasks.pareto import update_pareto_front
from tasks.promote import promote_version
from tasks.register import register_versions
from tasks.train import train_model
from tasks.validate import validate_data


@dataclass
class PipelineSummary:
    paper: str
    profile: str
    pipeline_run_id: str
    registered: bool = True  # False: a reproduction's seed run, which registers and promotes nothing
    evaluation_run_id: str = ""
    steps: dict[str, str] = field(default_factory=dict)  # step -> final state name ("Completed", "Cached", ...)
    variants: list[dict[str, Any]] = field(default_factory=list)
    decisive: list[dict[str, Any]] = field(default_factory=list)  # tasks.evidence.Judgement.as_dict() rows
    headline: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)


NOT_REGISTERED = "Skipped (reproduction run: not registered)"


def _run(summary: PipelineSummary, step: str, task_fn: Any, *args: Any, **kwargs: Any) -> Any:
    state = task_fn(*args, return_state=True, **kwargs)
    summary.steps[step] = state.name
    return state.result()


@flow(name="paper-pipeline", flow_run_name="{paper}-{profile}", validate_parameters=True)
def paper_pipeline(paper: str, profile: str = "tiny", overrides: list[str] | None = None,
                   registers: bool = True, accept_data_change: bool = False) -> dict[str, Any]:
    overrides = list(overrides or [])
    resolved = load_config(paper, profile, overrides)
    check_config(resolved)  # knobs that depend on the model, before anything is prepared or trained
    cfg, config, keys = resolved.config, resolved.as_dict(), step_keys(resolved)
    parent = open_pipeline_run(resolved, overrides, flow_run.get_id(), registers)
    close_abandoned_runs(parent)
    summary = PipelineSummary(paper=paper, profile=profile, pipeline_run_id=parent, registered=registers)
    recipe = get_recipe(paper)
    heartbeat = hold_pipeline_run(parent)
    try:
        datasets, reports = {}, {}
        # Every dataset is validated before a failed suite stops the run, so one run reports all the bad data.
        for key, section in recipe.datasets(cfg).items():
            step = "" if key == MAIN_DATASET else f":{key}"
            datasets[key] = _run(summary, f"prepare-data{step}", prepare_data, section.stage)
            record_dataset(parent, key, datasets[key])
            reports[key] = _run(summary, f"validate{step}", validate_data, datasets[key], section, accept_data_change,
                                parent)
            record_validation(parent, key, reports[key])
        for report in reports.values():
            report.raise_for_failure()
        limits = cfg.runtime
        train = train_model.with_options(timeout_seconds=limits.train_timeout_s)
        compress = compress_model.with_options(timeout_seconds=limits.compress_timeout_s)
        evaluate = evaluate_models.with_options(timeout_seconds=limits.evaluate_timeout_s)
        dense = _run(summary, "train", train, paper, config, keys["train"], datasets, parent)
        if recipe.compression is None:
            compressed = None
            summary.steps["compress"] = "Skipped (not applicable)"
        else:
            compressed = _run(summary, "compress", compress, paper, config, keys["compress"], datasets, dense,
                              parent)
        evaluation = _run(summary, "evaluate", evaluate, paper, config, keys["evaluate"], datasets, dense,
                          compressed, parent)
        summary.evaluation_run_id = evaluation.run_id
        summary.variants = [{"variant": v.name, "role": v.role, "method": v.method, "run_id": v.run_id, **v.metrics,
                             "delta_vs_parent_interval": asdict(v.delta_interval) if v.delta_interval else None}
                            for v in evaluation.variants.values()]
        judged = _run(summary, "decisive", judge_run, paper, config, evaluation, parent)
        summary.decisive, summary.headline = judged["criteria"], judged["headline"]
        if registers:
            versions = _run(summary, "register", register_versions, paper, profile, resolved.digest(), keys,
                            datasets, reports, dense, compressed, evaluation, parent)
            summary.versions = asdict(versions)
            decision = _run(summary, "promote", promote_version, paper, versions.candidate_version, cfg.promote)
            summary.promotion = asdict(decision)
            _run(summary, "pareto", update_pareto_front, paper, profile, cfg.promote.sla)
            _run(summary, "lineage", store_lineage, paper,
                 [v for v in (versions.parent_version, versions.method_version) if v is not None])
        else:
            summary.steps |= {step: NOT_REGISTERED for step in ("register", "promote", "pareto", "lineage")}
    except BaseException as exc:
        close_pipeline_run(parent, asdict(summary), exc)
        raise
    finally:
        heartbeat.stop()
    close_pipeline_run(parent, asdict(summary), None)
    return asdict(summary)
