"""What pipeline steps hand each other: references to things stored elsewhere (MLflow runs and models,
DVC outputs), never tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.common.stats import Interval


@dataclass(frozen=True)
class ModelRef:
    run_id: str
    model_uri: str
    role: str  # "parent" (dense) | "method" (compressed)
    metrics: dict[str, float] = field(default_factory=dict)
    knobs: dict[str, Any] | None = None
    companions: dict[str, Any] = field(default_factory=dict)  # name -> knobs of the models saved beside it


@dataclass(frozen=True)
class VariantRef:
    name: str
    role: str
    method: str
    run_id: str
    knobs: dict[str, Any]
    metrics: dict[str, float]
    per_item_metrics: list[str] = field(default_factory=list)  # saved as per_item/<name>.npz in the evaluate run
    delta_interval: Interval | None = None  # of metrics["delta_vs_parent"], paired over the test items


@dataclass(frozen=True)
class EvaluationRef:
    run_id: str
    variants: dict[str, VariantRef]
    device: dict[str, Any]


@dataclass(frozen=True)
class RegisteredVersions:
    model_name: str
    parent_version: str
    method_version: str | None  # None when the recipe has no compression
    created: bool  # False when every version already existed for the same data, config and code

    @property
    def candidate_version(self) -> str:
        """The version the promotion gate decides on: the compressed one, or the trained one when the recipe
        does not compress."""
        return self.method_version or self.parent_version


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    version: str
    alias: str
    promoted: bool
    reasons: list[str]
    previous_version: str | None
    evidence: str = ""  # the primary metric's delta vs the reference, with its item-level interval when it has one


@dataclass(frozen=True)
class ServedModel:
    model_name: str
    alias: str
    version: str
    model_uri: str          # models:/<name>/<version>: pinned, not the moving alias
