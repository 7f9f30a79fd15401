"""The accuracy × cost Pareto front over a registered model's versions, and SLA aliases chosen from it by rule.

Pure functions on plain records: tasks/register.py reads the versions from MLflow, calls these, and writes the
tags and aliases back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from models.common.recipe import Section


@dataclass(frozen=True)
class VersionPoint:
    version: str
    metric: float                    # the recipe's primary metric (top-1, perplexity, ...)
    latency_ms: float                # p50 at the recorded batch
    size_bytes: float
    throughput_per_s: float


class SlaRule(Section):
    """One alias and the rule that picks its version among the front."""

    alias: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    rule: Literal["best_under_latency", "best_above_throughput", "best_under_size"]
    bound: float = Field(gt=0, description="ms for latency, items/s for throughput, bytes for size")


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
