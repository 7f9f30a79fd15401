"""`paperops reproduce <paper>`: the paper's profile over seeds 0..N-1 as parallel paper-pipeline flow runs that
register nothing, then one reproduction run aggregating them (tasks/reproduce.py).

In process (the default) each seed is a subflow run in its own worker process (ProcessPoolTaskRunner): threads
would share torch's and numpy's global random state, so a seed's figures would depend on its neighbour's. With
`deployed`, each seed is a `run_deployment` child on the gpu pool, as the all-papers fan-out runs papers.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.pipeline import paper_pipeline
from settings import shared_cores
from tasks.reproduce import (
    ReproductionError, pipeline_run_of_flow_run, prepare_tracking, record_reproduction,
    reproduction_idempotency_key, reproduction_plan,
)
from tasks.scaleout import run_paper_deployment

DEFAULT_CONCURRENCY = 2  # seeds at once in process: one per core of the development machine


@task(name="seed-pipeline", task_run_name="{paper}-seed-{seed}")
def seed_pipeline(paper: str, profile: str, overrides: list[str], seed: int) -> str:
    """One seed's pipeline, without registering; returns its pipeline run id."""
    return paper_pipeline(paper, profile, overrides, registers=False)["pipeline_run_id"]


@flow(name="reproduce", flow_run_name="reproduce-{paper}-{profile}", validate_parameters=True,
      task_runner=ProcessPoolTaskRunner(max_workers=DEFAULT_CONCURRENCY))
def reproduce_paper(paper: str, profile: str = "tiny", seeds: int | None = None,
                    overrides: list[str] | None = None, deployed: bool = False) -> dict[str, Any]:
    """`seeds`: default the profile's `reproduce.seeds`; `overrides`: applied after the profile's
    `reproduce.overrides` to every seed run."""
    plan = reproduction_plan(paper, profile, seeds, overrides or [])
    prepare_tracking(paper)
    if deployed:
        fanned = {seed: run_paper_deployment.submit(paper, profile, plan.seed_overrides(seed),
                                                    reproduction_idempotency_key(plan, seed), registers=False)
                  for seed in plan.seeds}
        runs = {seed: future.result() for seed, future in fanned.items()}
        failed = {seed: f"{run.state} (flow run {run.flow_run_id})" for seed, run in runs.items()
                  if run.state != "Completed"}
        run_ids = {} if failed else {seed: pipeline_run_of_flow_run(paper, run.flow_run_id)
                                     for seed, run in runs.items()}
    else:
        futures = {seed: seed_pipeline.submit(paper, profile, plan.seed_overrides(seed), seed) for seed in plan.seeds}
        for future in futures.values():
            future.wait()
        failed = {seed: f"{future.state.name}: {future.state.message}" for seed, future in futures.items()
                  if not future.state.is_completed()}
        run_ids = {} if failed else {seed: future.result() for seed, future in futures.items()}
    if failed:
        raise ReproductionError(f"{paper}: seeds did not complete, nothing was aggregated: "
                                + "; ".join(f"seed {seed}: {why}" for seed, why in sorted(failed.items())))
    return record_reproduction(plan, run_ids)


def reproduce(paper: str, profile: str = "tiny", seeds: int | None = None, overrides: list[str] | None = None,
              deployed: bool = False, concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, Any]:
    """`reproduce_paper` with `concurrency` seed processes in process; deployed, every seed's child at once (its
    thread only waits for the gpu pool)."""
    if deployed:
        return reproduce_paper.with_options(task_runner=ThreadPoolTaskRunner())(paper, profile, seeds, overrides, True)
    with shared_cores(concurrency):  # the seed processes inherit it
        runner = ProcessPoolTaskRunner(max_workers=concurrency)
        return reproduce_paper.with_options(task_runner=runner)(paper, profile, seeds, overrides, False)
