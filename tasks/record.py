"""The registry record: one pydantic schema for what every registered version carries. It is validated when a
version is registered, written as flat queryable tags (`tags()`: e.g. `search_model_versions("name='paperops-<paper>'
and tags.`gx.success` = 'true'")`) and as the JSON artifact `registry/v<N>.json` of the version's run."""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from recipes.base import MAIN_DATASET

SCHEMA_VERSION = 1
MD5_PATTERN = r"^[0-9a-f]{32}(\.dir)?$"


def data_tag(group: Literal["dataset", "gx"], dataset: str, field: str) -> str:
    """Tag name of a dataset's `field`: `dataset.md5` for the main dataset (`cfg.data`), `dataset.<name>.md5`
    for a recipe's other datasets (`Recipe.datasets`); likewise `gx.suite` / `gx.<name>.suite`."""
    return f"{group}.{field}" if dataset == MAIN_DATASET else f"{group}.{dataset}.{field}"


def extra_datasets_in(tags: dict[str, str]) -> list[str]:
    """The names of the datasets besides the main one that a version's tags record (`dataset.<name>.stage`)."""
    return sorted(key.split(".")[1] for key in tags if key.startswith("dataset.") and key.count(".") == 2
                  and key.endswith(".stage"))


def validation_artifact(dataset: str, suite: str) -> str:
    """Where the GX result of a recipe's dataset is logged in the pipeline run."""
    return f"validation/{suite}.json" if dataset == MAIN_DATASET else f"validation/{dataset}/{suite}.json"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompressionRecord(Record):
    parent_version: str
    method: str
    knobs: dict[str, Any]
    summary: dict[str, str] = Field(default_factory=dict, description="the recipe's filterable knobs")


class DeltaInterval(Record):
    """The interval of a version's primary-metric delta vs its parent, paired over the test items (computed at
    evaluation, tasks/evidence.py); the gate quotes it beside the point estimate its threshold applies to."""

    estimate: float
    low: float
    high: float
    level: float = Field(gt=0, lt=1)
    n: int = Field(ge=1, description="test items the interval rests on")
    method: str


class DatasetRecord(Record):
    """A dataset beside the main one (e.g. a pre-training set): its DVC stage and md5 and its GX verdict."""

    name: str
    stage: str
    md5: str = Field(pattern=MD5_PATTERN, description="DVC md5 of the stage output")
    gx_suite: str
    gx_success: bool
    gx_data_change_accepted: bool = False

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_default_acceptance(self, handler(self))


def _without_default_acceptance(record: DatasetRecord | VersionRecord, data: dict[str, Any]) -> dict[str, Any]:
    """A record reads as before unless the user accepted a drifted dataset (`paperops run --accept-data-change`)."""
    if not record.gx_data_change_accepted:
        data.pop("gx_data_change_accepted", None)
    return data


class VersionRecord(Record):
    schema_version: Literal[1] = SCHEMA_VERSION
    paper: str
    recipe: str
    profile: str
    role: Literal["parent", "method"]
    variant: str
    model_uri: str
    dataset_name: str
    dataset_stage: str
    dataset_md5: str = Field(pattern=MD5_PATTERN, description="DVC md5 of the stage output")
    gx_suite: str
    gx_success: bool
    gx_data_change_accepted: bool = Field(False, description="the dataset drifted beyond its bounds from its last "
                                          "validated version and the user accepted it (--accept-data-change)")
    config_hash: str
    git_commit: str
    pipeline_run_id: str
    training_run_id: str = Field(description="the run that produced the weights: training, or compression")
    evaluation_run_id: str
    primary_metric: str
    higher_is_better: bool
    primary_value: float
    delta_vs_parent: float | None = None
    delta_vs_parent_interval: DeltaInterval | None = Field(None, description="of delta_vs_parent, paired over the "
                                                           "test items; None when the recipe logs no per-item scores")
    cost_metric: str
    cost_ratio: float | None = Field(None, description="compressed / parent MACs or bytes; None for parents")
    macs_per_item: float | None = None
    weight_bits: int = Field(ge=1, le=32, description="bits per stored decoder weight: 32 for FP parents")
    latency_p50_ms: float
    latency_p95_ms: float
    latency_batch: int = Field(ge=1)
    throughput_per_s: float
    peak_memory_bytes: int | None = Field(None, ge=0, description="peak allocator bytes of one forward (GPU only)")
    size_bytes: int = Field(ge=0, description="bytes of the version's weights file")
    device: dict[str, str]
    metrics: dict[str, float] = Field(description="every metric of the version's evaluated variant")
    compression: CompressionRecord | None = None
    compression_skipped: str | None = Field(None, description="why the recipe's model is not compressed (the "
                                            "version is then the gate's candidate itself)")
    extra_datasets: dict[str, DatasetRecord] = Field(default_factory=dict, description="the recipe's datasets "
                                                     "besides the main one, by their Recipe.datasets name")

    @model_serializer(mode="wrap")
    def _without_empty_optional_parts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A one-dataset paper's record reads as it did before papers could have several datasets, and a version
        without per-item scores as it did before deltas had intervals."""
        data = handler(self)
        if not self.extra_datasets:
            data.pop("extra_datasets", None)
        if self.delta_vs_parent_interval is None:
            data.pop("delta_vs_parent_interval", None)
        return _without_default_acceptance(self, data)

    def tags(self) -> dict[str, str]:
        """The record as registry tags (the names the UI, the gate and `paperops lineage` read)."""
        tags = {
            "record.schema_version": str(self.schema_version),
            "paperops.paper": self.paper, "paperops.recipe": self.recipe, "paperops.profile": self.profile,
            "paperops.role": self.role, "paperops.variant": self.variant, "paperops.model_uri": self.model_uri,
            "paperops.config_hash": self.config_hash, "paperops.git_commit": self.git_commit,
            "paperops.pipeline_run_id": self.pipeline_run_id, "paperops.training_run_id": self.training_run_id,
            "paperops.evaluation_run_id": self.evaluation_run_id,
            "dataset.name": self.dataset_name, "dataset.stage": self.dataset_stage, "dataset.md5": self.dataset_md5,
            "gx.suite": self.gx_suite, "gx.success": str(self.gx_success).lower(),
            "primary_metric": self.primary_metric, "record.weight_bits": str(self.weight_bits),
            "record.size_bytes": str(self.size_bytes), "record.latency_batch": str(self.latency_batch),
            **{f"metrics.{k}": f"{v:.6g}" for k, v in sorted(self.metrics.items())},
            **{f"device.{k}": v for k, v in self.device.items()},
        }
        for key, extra in self.extra_datasets.items():
            tags |= {data_tag("dataset", key, "name"): extra.name, data_tag("dataset", key, "stage"): extra.stage,
                     data_tag("dataset", key, "md5"): extra.md5, data_tag("gx", key, "suite"): extra.gx_suite,
                     data_tag("gx", key, "success"): str(extra.gx_success).lower()}
            if extra.gx_data_change_accepted:
                tags[data_tag("gx", key, "data_change_accepted")] = "true"
        if self.gx_data_change_accepted:
            tags["gx.data_change_accepted"] = "true"
        if self.peak_memory_bytes is not None:
            tags["record.peak_memory_bytes"] = str(self.peak_memory_bytes)
        if self.compression_skipped:
            tags["compression.skipped"] = self.compression_skipped
        if self.compression is not None:
            c = self.compression
            tags |= {
                "compression.parent_version": c.parent_version, "compression.method": c.method,
                "compression.knobs": json.dumps(c.knobs, sort_keys=True),
                **{f"compression.{k}": v for k, v in c.summary.items()},
                f"compression.delta_{self.primary_metric}": _fixed(self.delta_vs_parent),
                f"compression.{self.cost_metric}": _fixed(self.cost_ratio),
                "compression.throughput_ratio": _fixed(self.metrics.get("throughput_ratio")),
                "compression.latency_p50_ms": _fixed(self.latency_p50_ms),
            }
            if self.delta_vs_parent_interval is not None:
                interval = self.delta_vs_parent_interval
                tags[delta_interval_tag(self.primary_metric)] = f"[{_fixed(interval.low)}, {_fixed(interval.high)}]"
                tags[f"{delta_interval_tag(self.primary_metric)}_method"] = interval.method
        return tags


def delta_interval_tag(primary_metric: str) -> str:
    """The tag holding a compressed version's delta interval, `[low, high]` in the primary metric's units."""
    return f"compression.delta_{primary_metric}_ci"


def delta_interval_from_tags(tags: dict[str, str], primary_metric: str) -> tuple[float, float, str] | None:
    """(low, high, how it was computed) of a version's delta vs its parent, from its tags; None when it has none."""
    text = tags.get(delta_interval_tag(primary_metric))
    if text is None:
        return None
    low, high = json.loads(text)
    return float(low), float(high), tags.get(f"{delta_interval_tag(primary_metric)}_method", "")


def _fixed(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"
