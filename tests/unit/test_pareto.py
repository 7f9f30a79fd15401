"""tasks/pareto.py on hand-made versions with a known front."""
from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tasks.pareto import SlaRule, VersionPoint, pareto_front, sla_aliases

# metric (higher is better), latency ms, size bytes, throughput/s
VERSIONS = [
    VersionPoint("1", 90.0, 10.0, 400.0, 100.0),   # dense: best metric, slowest
    VersionPoint("2", 89.5, 6.0, 400.0, 170.0),    # on the latency front
    VersionPoint("3", 89.0, 7.0, 100.0, 140.0),    # dominated on latency by 2; cheapest on size
    VersionPoint("4", 85.0, 4.0, 400.0, 250.0),    # fastest
    VersionPoint("5", 85.0, 4.0, 400.0, 250.0),    # a copy of 4: neither dominates the other
    VersionPoint("6", math.nan, 1.0, 50.0, 999.0),  # failed evaluation: never on a front
]


def test_latency_front_is_known() -> None:
    assert pareto_front(VERSIONS, "latency") == ["4", "5", "2", "1"]


def test_size_front_is_known() -> None:
    assert pareto_front(VERSIONS, "size") == ["3", "1"]


def test_lower_is_better_metrics_flip_the_front() -> None:
    ppl = [VersionPoint("1", 20.0, 10.0, 400.0, 1.0), VersionPoint("2", 21.0, 5.0, 100.0, 2.0),
           VersionPoint("3", 25.0, 6.0, 100.0, 2.0)]
    assert pareto_front(ppl, "latency", higher_is_better=False) == ["2", "1"]
    assert pareto_front(ppl, "size", higher_is_better=False) == ["2", "1"]


def test_sla_aliases_follow_their_rules() -> None:
    rules = (SlaRule(alias="edge", rule="best_under_latency", bound=6.5),
             SlaRule(alias="throughput", rule="best_above_throughput", bound=150.0),
             SlaRule(alias="small", rule="best_under_size", bound=200.0),
             SlaRule(alias="impossible", rule="best_under_latency", bound=0.5))
    assert sla_aliases(VERSIONS, rules) == {"edge": "2", "throughput": "2", "small": "3", "impossible": None}


def test_sla_rule_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="bound"):
        SlaRule(alias="edge", rule="best_under_latency", bound=0)
    with pytest.raises(ValidationError, match="rule"):
        SlaRule(alias="edge", rule="fastest", bound=1)
