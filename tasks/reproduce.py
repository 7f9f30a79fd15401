"""`paperops reproduce`: a paper's profile over seeds 0..N-1, one pipeline run per seed that registers nothing, and
one `reproduction` MLflow run that aggregates them with models/common/stats.py.

The reproduction run (experiment `paperops-<paper>`, tag `paperops.step=reproduction`) carries, over the seeds:
every variant's mean and Student-t interval of the primary metric and of the headline metric
(`<variant>.<metric>.mean/.low/.high`), our value of each paper figure (`ours.<figure>.mean/.low/.high`), every
decisive criterion and the headline judged on the paired per-seed differences (`decisive.<name>.*`, `headline.*`,
tasks/evidence.py), the seeds' pipeline run ids, the data md5s, the profile, the overrides and the config digest
(without the seed: the same for every seed run); `reproduction.json` holds all of it with the per-seed figures.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import mlflow
from prefect import task

from models.common.stats import t_interval
from recipes import get_recipe, load_config
from recipes.base import Recipe, RecipeConfig
from settings.config import ConfigError
from tasks.evidence import Judgement, comparisons, headline_comparison, judge_seeds, log_judgements
from tasks.lineage import git_commit
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, ensure_experiment

REPRODUCTION_STEP = "reproduction"
REPRODUCTION_ARTIFACT = "reproduction.json"


class ReproductionError(RuntimeError):
    """A seed's pipeline did not complete, or the seeds do not form one reproduction; the message says which."""


@dataclass(frozen=True)
class ReproductionPlan:
    paper: str
    profile: str
    seeds: list[int]
    overrides: list[str]  # the profile's `reproduce.overrides`, then the caller's: what every seed run applies
    config_digest: str  # of the resolved config without its seed: the same for every seed run

    def seed_overrides(self, seed: int) -> list[str]:
        return [*self.overrides, f"seed={seed}"]


def reproduction_plan(paper: str, profile: str, seeds: int | None, overrides: Sequence[str]) -> ReproductionPlan:
    """Seeds 0..N-1 (N: `seeds`, or the profile's `reproduce.seeds`) and the overrides every seed run applies; every
    seed's config is validated here, before anything runs."""
    block = load_config(paper, profile, overrides).config.reproduce
    count = block.seeds if seeds is None else seeds
    if count < 2:
        raise ConfigError(f"a reproduction needs at least 2 seeds (an interval over seeds needs two), got {count}")
    applied = [*block.overrides, *overrides]
    resolved = load_config(paper, profile, applied)
    for seed in range(count):
        load_config(paper, profile, [*applied, f"seed={seed}"])
    return ReproductionPlan(paper, profile, list(range(count)), applied, resolved.digest(excluding=("seed",)))


def reproduction_idempotency_key(plan: ReproductionPlan, seed: int) -> str:
    """The deployed seed run's key: the paper's pipeline key for the seed's config, marked as a reproduction's so a
    registered run of the same config is not taken for it."""
    from tasks.scaleout import pipeline_idempotency_key

    return f"{pipeline_idempotency_key(plan.paper, plan.profile, plan.seed_overrides(seed))}:{REPRODUCTION_STEP}"


def seed_figures(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """variant -> metric -> figure of one seed's pipeline summary."""
    return {row["variant"]: {k: float(v) for k, v in row.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for row in summary["variants"]}


def interval_over_seeds(values: dict[int, float]) -> dict[str, Any]:
    """{"values": seed -> figure, "interval": Student-t interval of their mean as a dict}."""
    ordered = [values[seed] for seed in sorted(values)]
    return {"values": {str(seed): values[seed] for seed in sorted(values)}, "interval": asdict(t_interval(ordered))}


def aggregate(recipe: Recipe, cfg: RecipeConfig, per_seed: dict[int, dict[str, dict[str, float]]],
              ours: dict[int, dict[str, float]]) -> tuple[dict[str, Any], list[Judgement], Judgement | None]:
    """The reproduction from each seed's figures (`per_seed`: seed -> variant -> metric -> figure; `ours`: seed ->
    paper figure -> our value): per variant the mean and t interval over seeds of the primary and headline metrics,
    the same for our paper figures, and every decisive criterion and the headline on the paired per-seed
    differences. A variant or figure is aggregated over the seeds that measured it (its interval says how many)."""
    metrics = [recipe.primary_metric]
    if recipe.headline is not None and recipe.headline.metric not in metrics:
        metrics.append(recipe.headline.metric)
    names = sorted({name for variants in per_seed.values() for name in variants})
    variants: dict[str, dict[str, Any]] = {}
    for name in names:
        for metric in metrics:
            values = {seed: v[name][metric] for seed, v in per_seed.items()
                      if metric in v.get(name, {}) and math.isfinite(v[name][metric])}
            if values:
                variants.setdefault(name, {})[metric] = interval_over_seeds(values)
    figures = sorted({figure for values in ours.values() for figure in values})
    ours_over_seeds = {figure: interval_over_seeds({seed: v[figure] for seed, v in ours.items()
                                                    if figure in v and math.isfinite(v[figure])})
                       for figure in figures}
    criteria = [judge_seeds(c, per_seed) for c in comparisons(recipe, cfg)]
    headline = headline_comparison(recipe)
    headline_judgement = judge_seeds(headline, per_seed) if headline is not None else None

    def row(judgement: Judgement) -> dict[str, Any]:
        c = judgement.comparison
        pairs = {str(seed): [v.get(c.method, {}).get(c.metric), v.get(c.baseline, {}).get(c.metric)]
                 for seed, v in sorted(per_seed.items())}
        return judgement.as_dict() | {"per_seed": pairs}  # seed -> [method, baseline]

    result = {"variants": variants, "ours": ours_over_seeds, "criteria": [row(j) for j in criteria],
              "headline": row(headline_judgement) if headline_judgement is not None else None}
    return result, criteria, headline_judgement


@task(name="prepare-tracking", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def prepare_tracking(paper: str) -> str:
    """The paper's experiment (and a fresh store's tables), made once before the seed runs start: parallel seed
    processes would otherwise race to create them."""
    return ensure_experiment(configure_tracking(), paper)


def pipeline_run_of_flow_run(paper: str, flow_run_id: str) -> str:
    """The pipeline MLflow run a (deployed) paper-pipeline flow run opened."""
    from tasks.tracking import experiment_name

    client = configure_tracking()
    experiment = client.get_experiment_by_name(experiment_name(paper))
    runs = client.search_runs([experiment.experiment_id] if experiment else [],
                              f"tags.`paperops.prefect_flow_run_id` = '{flow_run_id}' and "
                              "tags.`paperops.step` = 'pipeline'") if experiment else []
    if not runs:
        raise ReproductionError(f"flow run {flow_run_id} opened no pipeline run in {experiment_name(paper)}")
    return runs[0].info.run_id


def _shared_data_tags(tags_by_seed: dict[int, dict[str, str]]) -> dict[str, str]:
    """The data tags (`dataset.*` md5, stage, name; `gx.*` suite and result) every seed run shares; seeds that ran
    on different data are not one reproduction."""
    data_keys = {k for tags in tags_by_seed.values() for k in tags
                 if k.startswith("dataset.") and k.rsplit(".", 1)[-1] in ("md5", "stage", "name")}
    shared = {}
    for key in sorted(data_keys):
        values = {seed: tags.get(key) for seed, tags in tags_by_seed.items()}
        if len(set(values.values())) != 1:
            raise ReproductionError(f"the seeds ran on different data: {key} is {values}")
        shared[key] = next(iter(values.values()))
    return shared


@task(name="record-reproduction", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def record_reproduction(plan: ReproductionPlan, pipeline_run_ids: dict[int, str]) -> dict[str, Any]:
    """Aggregates the seeds' pipeline runs into one reproduction run and returns what it logged
    (`reproduction.json` plus its run id)."""
    from mlflow.entities import Metric, RunTag

    client = configure_tracking()
    recipe = get_recipe(plan.paper)
    cfg = load_config(plan.paper, plan.profile, plan.overrides).config
    summaries, tags_by_seed, ours = {}, {}, {}
    for seed, run_id in sorted(pipeline_run_ids.items()):
        summaries[seed] = mlflow.artifacts.load_dict(f"runs:/{run_id}/pipeline/summary.json")
        tags_by_seed[seed] = client.get_run(run_id).data.tags
        evaluation = client.get_run(summaries[seed]["evaluation_run_id"]).data.metrics
        ours[seed] = {k.removeprefix("ours."): v for k, v in evaluation.items() if k.startswith("ours.")}
    data = _shared_data_tags(tags_by_seed)
    per_seed = {seed: seed_figures(summary) for seed, summary in summaries.items()}
    result, criteria, headline = aggregate(recipe, cfg, per_seed, ours)
    result |= {"paper": plan.paper, "profile": plan.profile, "seeds": plan.seeds, "overrides": plan.overrides,
               "config_digest": plan.config_digest, "git_commit": git_commit(), "data": data,
               "pipeline_run_ids": {str(seed): run_id for seed, run_id in sorted(pipeline_run_ids.items())}}
    run = client.create_run(ensure_experiment(client, plan.paper), run_name=f"reproduce-{plan.paper}-{plan.profile}",
                            tags={"paperops.step": REPRODUCTION_STEP, "paperops.paper": plan.paper,
                                  "paperops.profile": plan.profile, "paperops.seeds": json.dumps(plan.seeds),
                                  "paperops.overrides": json.dumps(plan.overrides),
                                  "paperops.config_digest": plan.config_digest,
                                  "paperops.git_commit": result["git_commit"],
                                  "paperops.pipeline_run_ids": json.dumps(result["pipeline_run_ids"]), **data})
    run_id = run.info.run_id
    try:
        figures: dict[str, float] = {}
        for name, by_metric in result["variants"].items():
            for metric, over_seeds in by_metric.items():
                i = over_seeds["interval"]
                figures |= {f"{name}.{metric}.mean": i["estimate"], f"{name}.{metric}.low": i["low"],
                            f"{name}.{metric}.high": i["high"]}
        for figure, over_seeds in result["ours"].items():
            i = over_seeds["interval"]
            figures |= {f"ours.{figure}.mean": i["estimate"], f"ours.{figure}.low": i["low"],
                        f"ours.{figure}.high": i["high"]}
        client.log_batch(run_id, metrics=[Metric(k, v, int(run.info.start_time), 0) for k, v in figures.items()
                                          if math.isfinite(v)])  # one seed's figure has no interval: JSON only
        log_judgements(client, run_id, criteria, headline)
        client.log_dict(run_id, result, REPRODUCTION_ARTIFACT)
        for seed_run in pipeline_run_ids.values():
            client.log_batch(seed_run, tags=[RunTag("paperops.reproduction_run_id", run_id)])
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return result | {"run_id": run_id}
