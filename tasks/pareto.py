"""The accuracy × cost Pareto front over a registered model's versions, and SLA aliases chosen from it by rule.

The front and the rules are pure functions on plain records; `update_pareto_front` reads the versions from the
registry, calls them, and writes the tags and aliases back.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from recipes import get_recipe
from recipes.base import SlaRule
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, registered_model_name


@dataclass(frozen=True)
class VersionPoint:
    version: str
    metric: float                    # the recipe's primary metric (top-1, perplexity, ...)
    latency_ms: float                # p50 at the recorded batch
    size_bytes: float
    throughput_per_s: float


COSTS = {"latency": lambda p: p.latency_ms, "size": lambda p: p.size_bytes}


def _better_or_equal(a: float, b: float, higher_is_better: bool) -> bool:
    return a >= b if higher_is_better else a <= b


def pareto_front(points: list[VersionPoint], cost: Literal["latency", "size"] = "latency",
                 higher_is_better: bool = True) -> list[str]:
    """Versions no other version dominates: none is at least as good on the metric and at most as costly, and
    strictly better on one of the two. Points with a non-finite metric or cost are never on the front. Ordered by
    cost, cheapest first."""
    cost_of = COSTS[cost]
    finite = [p for p in points if math.isfinite(p.metric) and math.isfinite(cost_of(p))]

    def dominated(p: VersionPoint) -> bool:
        return any(_better_or_equal(q.metric, p.metric, higher_is_better) and cost_of(q) <= cost_of(p)
                   and (q.metric != p.metric or cost_of(q) < cost_of(p)) for q in finite)

    return [p.version for p in sorted(finite, key=cost_of) if not dominated(p)]


def sla_aliases(points: list[VersionPoint], rules: tuple[SlaRule, ...],
                higher_is_better: bool = True) -> dict[str, str | None]:
    """For each rule, the best-metric version of the front that meets its bound (None: no version does). Ties on
    the metric go to the cheaper version, then to the newer one."""
    chosen: dict[str, str | None] = {}
    for rule in rules:
        cost = "size" if rule.rule == "best_under_size" else "latency"
        front = set(pareto_front(points, cost, higher_is_better))
        if rule.rule == "best_above_throughput":
            # throughput is not the front's cost axis: any version may qualify, the best metric wins
            eligible = [p for p in points if p.throughput_per_s >= rule.bound and math.isfinite(p.metric)]
        else:
            eligible = [p for p in points if p.version in front and COSTS[cost](p) <= rule.bound]
        sign = -1.0 if higher_is_better else 1.0
        eligible.sort(key=lambda p: (sign * p.metric, COSTS[cost](p), -int(p.version)))
        chosen[rule.alias] = eligible[0].version if eligible else None
    return chosen


def tag_float(tags: dict[str, str], key: str) -> float:
    """A numeric registry tag; NaN when it is missing or not a number (every check then fails on it)."""
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return math.nan


def _points(client: MlflowClient, name: str, profile: str, metric: str) -> list[VersionPoint]:
    """Candidates of one profile: dense parents and compressed versions the gate approved."""
    points = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags
        if tags.get("paperops.profile") != profile:
            continue
        if tags.get("paperops.role") != "parent" and tags.get("validation_status") != "approved":
            continue
        points.append(VersionPoint(str(mv.version), *(tag_float(tags, f"metrics.{key}") for key in (
            metric, "latency_p50_ms", "size_bytes", "throughput_per_s"))))
    return points


@task(name="pareto-front", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def update_pareto_front(paper: str, profile: str, rules: tuple[SlaRule, ...]) -> dict[str, object]:
    """Recomputes the latency and size fronts of a profile's versions, tags every candidate with its membership,
    stores the fronts as registered-model tags, and points each SLA alias at its rule's choice (an alias whose
    rule no version meets is removed, never left pointing at a version that no longer qualifies)."""
    client = configure_tracking()
    recipe = get_recipe(paper)
    name = registered_model_name(paper)
    points = _points(client, name, profile, recipe.primary_metric)
    fronts = {cost: pareto_front(points, cost, recipe.higher_is_better) for cost in ("latency", "size")}
    for point in points:
        for cost, front in fronts.items():
            client.set_model_version_tag(name, point.version, f"pareto.{cost}_front", str(point.version in front).lower())
    for cost, front in fronts.items():
        client.set_registered_model_tag(name, f"pareto.{profile}.{cost}_front", json.dumps(front))
    aliases = sla_aliases(points, rules, recipe.higher_is_better)
    for alias, version in aliases.items():
        if version is not None:
            client.set_registered_model_alias(name, alias, version)
            continue
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass  # it was not set
    return {"fronts": fronts, "aliases": aliases}
