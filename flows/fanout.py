"""all_papers: the parent flow that fans out to every paper's deployment on the GPU pool.

It runs on the CPU pool; each paper's pipeline runs on a GPU worker through `run_deployment`, keyed by
paper + profile + data md5 + config hash, so retrying or re-triggering the parent never duplicates a child.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from recipes import available_recipes
from tasks.scaleout import pipeline_idempotency_key, run_paper_deployment


class FanOutError(RuntimeError):
    """At least one paper's pipeline did not complete; the message lists which and their flow runs."""


@flow(name="all-papers", flow_run_name="all-papers-{profile}", validate_parameters=True)
def all_papers(profile: str = "tiny", papers: list[str] | None = None,
               overrides: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """`papers`: default every registered paper; `overrides`: per paper, `--set`-style config overrides."""
    names = list(papers or sorted(available_recipes()))
    overrides = overrides or {}
    unknown = sorted((set(names) | set(overrides)) - set(available_recipes()))
    if unknown:
        raise ValueError(f"unknown papers {unknown}; registered: {sorted(available_recipes())}")
    futures = [run_paper_deployment.submit(paper, profile, overrides.get(paper, []),
                                           pipeline_idempotency_key(paper, profile, overrides.get(paper, [])))
               for paper in names]
    runs = [asdict(future.result()) for future in futures]
    failed = [run for run in runs if run["state"] != "Completed"]
    if failed:
        raise FanOutError("; ".join(f"{run['paper']}: {run['state']} (flow run {run['flow_run_id']})"
                                    for run in failed))
    return runs
