"""The Recipe: what a paper contributes to the generic pipeline, and the config schema every recipe builds on.

A recipe adapts pure method code (models/) to the platform: its config schema, how it reads its datasets, its
experiment protocol (method, baselines, ablations), its report figures and its serving I/O. It builds, trains,
compresses and evaluates torch modules and reads its datasets through the views the platform hands each step
(data/views.py: train and compress never see a test split); tasks/ moves the results between steps as files
(safetensors + JSON) and logs them; flows/ wires the steps. Adding a paper = one recipes/<paper>.py with a
Recipe subclass decorated with @register_recipe, plus one configs/<paper>.yaml.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from data.views import DatasetViews
from models.common.reporting import Reporter


class Section(BaseModel):
    """Every config section rejects unknown keys, so a typo in --set or YAML is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(Section):
    stage: str = Field(description="DVC stage in dvc.yaml that builds the dataset (output: data/<stage>)")
    suite: str = Field(description="Great Expectations suite the dataset must pass before training")
    expect: dict[str, Any] = Field(default_factory=dict, description="what the suite checks (suite-specific)")


class SlaRule(Section):
    """One alias and the rule that picks its version among the front."""

    alias: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    rule: Literal["best_under_latency", "best_above_throughput", "best_under_size"]
    bound: float = Field(gt=0, description="ms for latency, items/s for throughput, bytes for size")


class PromotionSection(Section):
    """Thresholds of the promotion gate, in the units of the recipe's primary metric."""

    max_metric_drop: float = Field(0.5, ge=0, description="largest allowed worsening of the primary metric vs "
                                   "the parent version, in its units (top-1 points; perplexity)")
    max_cost_ratio: float = Field(0.70, gt=0, description="compressed/dense cost ratio (MACs or bits) to pass")
    alias: str = "champion"
    sla: tuple[SlaRule, ...] = Field((), description="aliases set from the Pareto front by rule after promotion")


class LatencySection(Section):
    """How an evaluation times a model: one batch of `latency_batch` test items, `latency_warmup` untimed passes,
    then `latency_runs` timed ones (models/common/profiling.py: measure_latency)."""

    latency_batch: int = Field(64, ge=1)
    latency_runs: int = Field(10, ge=1)
    latency_warmup: int = Field(2, ge=0)


class RuntimeSection(Section):
    """Wall-clock limits of the heavy steps: a hung job fails and frees its GPU slot instead of holding it.
    They change where and how long a step may run, never its result, so no cache key or config hash reads them."""

    train_timeout_s: float = Field(6 * 3600, gt=0)
    compress_timeout_s: float = Field(4 * 3600, gt=0)
    evaluate_timeout_s: float = Field(2 * 3600, gt=0)
    expected_minutes: float | None = Field(None, gt=0, description="wall minutes the whole run took when last "
                                           "measured, one thread on the 2-core machine: `run all --concurrency` "
                                           "starts the longest first, so the longest does not end up running alone")


class DecisiveCriterion(Section):
    """One decisive claim of the paper, written into the config before the run: `method` compared with `baseline`
    on `metric`, both variants as the recipe's evaluate names them. The platform judges it after evaluate with
    models/common/stats.py (claim_holds): in one run on the paired per-item scores, in `paperops reproduce` on the
    paired per-seed figures. It is reported as it comes out; a criterion that cannot be measured says so."""

    metric: str = Field(min_length=1, description="a metric both variants report (per item, for a single run)")
    method: str = Field(min_length=1, description="the variant the claim is about")
    baseline: str = Field(min_length=1, description="the variant it is compared with")
    claim: Literal["better", "not_worse"] = Field(description="better: the interval of method − baseline excludes "
                                                  "zero on the good side; not_worse: its worse end is within margin")
    margin: float = Field(0.0, ge=0, description="not_worse only: how much worse, in the metric's units, still "
                          "counts as not worse")
    higher_is_better: bool | None = Field(None, description="the metric's direction; default: the recipe's "
                                          "(Recipe.higher_is_better), set it for a metric that goes the other way")

    @model_validator(mode="after")
    def _margin_only_for_not_worse(self) -> "DecisiveCriterion":
        if self.claim == "better" and self.margin != 0:
            raise ValueError(f"margin {self.margin} applies to claim not_worse only; claim better has no margin")
        return self


class ReproduceSection(Section):
    """What `paperops reproduce` runs besides the profile itself: how many seeds (0..seeds-1, one pipeline run each)
    and `key=value` overrides that only a reproduction applies (more test episodes, a longer schedule)."""

    seeds: int = Field(5, ge=2, description="seeds of a reproduction: an interval over seeds needs two at least")
    overrides: tuple[str, ...] = ()

    @field_validator("overrides")
    @classmethod
    def _overrides_are_key_value(cls, overrides: tuple[str, ...]) -> tuple[str, ...]:
        for text in overrides:
            key, sep, _ = text.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{text!r} is not key=value")
            if key.strip().split(".")[0] in ("seed", "reproduce"):
                raise ValueError(f"{text!r}: a reproduction sets the seed itself and cannot change its own block")
        return overrides


CRITERION_NAME = r"^[a-z][a-z0-9_]*$"


class RecipeConfig(Section):
    """Base of every recipe's resolved config. Subclasses add the paper's own sections."""

    seed: int = 0
    data: DataSection
    promote: PromotionSection = PromotionSection()
    runtime: RuntimeSection = RuntimeSection()
    decisive: dict[str, DecisiveCriterion] = Field(default_factory=dict, description="the paper's decisive "
                                                   "criteria by name, fixed before the run")
    reproduce: ReproduceSection = ReproduceSection()

    @field_validator("decisive")
    @classmethod
    def _criterion_names(cls, decisive: dict[str, DecisiveCriterion]) -> dict[str, DecisiveCriterion]:
        bad = [name for name in decisive if not re.match(CRITERION_NAME, name)]
        if bad:
            raise ValueError(f"criterion names {bad} must match {CRITERION_NAME} (they name logged metrics)")
        return decisive


@dataclass(frozen=True)
class PaperFigure:
    """A headline number as the paper reports it, next to which our figure is logged."""

    metric: str
    value: float
    source: str
    note: str = ""
    higher_is_better: bool = True

    def verdict(self, ours: float | None) -> str:
        """Whether our figure is at least as good as the paper's, in the figure's own direction."""
        if ours is None or ours != ours:  # missing or NaN
            return "not measured"
        meets = ours >= self.value if self.higher_is_better else ours <= self.value
        return "meets the paper" if meets else "short of the paper"


# A column of the run summary: (metric, header, scale of the shown number), e.g. ("macs_per_image", "MMACs/img", 1e-6).
SummaryColumn = tuple[str, str, float]


@dataclass(frozen=True)
class Headline:
    """The one comparison the cross-paper summary shows: the paper's method against its main baseline, measured in
    the same run, beside the paper's own figure for the method (its setting, usually a larger one, in the note)."""

    metric: str  # a metric every variant reports
    method_variant: str
    baseline_variant: str
    paper_value: float | None
    paper_note: str


@dataclass
class Companion:
    """A model a step trains or compresses besides the one it registers (a trained baseline, an ablation, the weak
    teacher, "dense + the same fine-tune"). The step saves it with its run and the evaluate step rebuilds it
    (`Recipe.companion_module`), so every model of a comparison is scored there, on the test split, in one place."""

    module: nn.Module
    knobs: dict[str, Any] | None = None  # a compression `restore_compression` re-applies when it is rebuilt


@dataclass
class TrainResult:
    """What `train` hands on besides the model it trained in place (the parent): its metrics (training statistics
    and validation figures) and the run's other trained models."""

    metrics: dict[str, float]
    companions: dict[str, Companion] = field(default_factory=dict)


@dataclass
class CompressionResult:
    model: nn.Module
    method: str
    knobs: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    companions: dict[str, Companion] = field(default_factory=dict)


@dataclass
class RunModels:
    """What `evaluate` compares, rebuilt from the train and compress steps' runs: the registered parent, its
    compressed child (None when the recipe does not compress), the steps' companions by name, and what `train`
    returned as metrics."""

    dense: nn.Module
    compressed: nn.Module | None
    companions: dict[str, nn.Module]
    train_metrics: dict[str, float]


@dataclass(frozen=True)
class VariantResult:
    """One evaluated model of a paper's comparison: the method, its parent, its baselines, its ablations.

    `per_item` holds, for every metric a decisive criterion, the headline or the gate compares, the variant's score
    on each test item, the same items in the same order for every variant (top-1: 100 · correct per image; few-shot:
    accuracy per episode; a language model: mean NLL per window, with the metric = exp(mean) declared in
    `Recipe.per_item_transforms`). The platform logs them and computes every paired interval from them."""

    name: str
    role: str  # "parent" | "method" | "baseline" | "ablation"
    method: str
    knobs: dict[str, Any]
    metrics: dict[str, float]
    per_item: dict[str, np.ndarray] = field(default_factory=dict)


# Metrics every recipe names the same: each measured variant's cost (models/common/profiling.py: measure_latency,
# size_on_disk) and what compare_to_parent adds. The platform reads these by name; a paper's own metrics it reads
# only through the recipe's declarations (primary_metric, cost_metric, summary_columns, ...).
COMMON_METRICS = ("latency_p50_ms", "latency_p95_ms", "batch_size", "throughput_per_s", "peak_memory_bytes",
                  "size_bytes", "delta_vs_parent", "throughput_ratio")


def compare_to_parent(variants: list[VariantResult], primary_metric: str) -> None:
    """Adds to every non-parent variant its primary-metric delta and throughput ratio vs the parent (in place):
    the figures the promotion gate and the compression record read, named the same for every recipe."""
    parent = next(v for v in variants if v.role == "parent").metrics
    for v in variants:
        if v.role != "parent":
            v.metrics["delta_vs_parent"] = v.metrics[primary_metric] - parent[primary_metric]
            if "throughput_per_s" in v.metrics and "throughput_per_s" in parent:
                v.metrics["throughput_ratio"] = v.metrics["throughput_per_s"] / parent["throughput_per_s"]


@dataclass
class Evaluation:
    variants: list[VariantResult]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


# The name of `cfg.data` among a recipe's datasets (Recipe.datasets): the one the `dataset.*` and `gx.*` tags name.
MAIN_DATASET = "data"


class Recipe(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    compression: ClassVar[str | None]  # None: the paper's model is not compressible by our methods (say why below)
    compression_skip_reason: ClassVar[str] = ""  # recorded on the version and in the lineage when compression is None
    config_model: ClassVar[type[RecipeConfig]]
    primary_metric: ClassVar[str]
    cost_metric: ClassVar[str]  # metric holding compressed/dense cost (MACs, bits, bytes): the gate's ratio
    higher_is_better: ClassVar[bool] = True  # of the primary metric: accuracy yes, perplexity no
    # Metrics that are a function of their items' mean rather than the mean itself, with that function (vectorised):
    # {"ppl": np.exp} when per_item holds NLL per window. The paired intervals apply it to every resampled mean.
    per_item_transforms: ClassVar[dict[str, Callable[[np.ndarray], np.ndarray]]] = {}
    serving_params: ClassVar[dict[str, Any]] = {}  # inference parameters a request may set, with defaults
    paper_figures: ClassVar[tuple[PaperFigure, ...]] = ()
    headline: ClassVar[Headline | None] = None
    # What the platform shows and deploys, read by paperops/cli.py, tasks/ and `paperops deploy`; platform code
    # names no paper and no paper metric (tests/unit/test_platform_names.py).
    summary_columns: ClassVar[tuple[SummaryColumn, ...]]  # the paper's metrics in the run summary, in order
    macs_per_item_metric: ClassVar[str | None] = None  # metric holding one input's MACs (record: macs_per_item)
    weight_bits_knob: ClassVar[str | None] = None  # dotted knob holding a version's stored weight bits; None: 32
    smoke_overrides: ClassVar[tuple[str, ...]]  # `key=value`s that shrink the tiny profile to a seconds-scale run
    deployment_description: ClassVar[str]  # one line: what the paper's Prefect deployment runs
    deployment_tags: ClassVar[tuple[str, ...]] = ()  # besides `paperops` and the paper's name

    def datasets(self, cfg: RecipeConfig) -> dict[str, DataSection]:
        """Every dataset the recipe trains or evaluates on, by name: the pipeline prepares (DVC) and validates (GX)
        each one before training, records each stage and md5, and hands `load_data` a view of each under these names.
        "data" is `cfg.data`, the main dataset; a paper with more data adds entries (OVOR: its pre-training set)."""
        return {MAIN_DATASET: cfg.data}

    @abstractmethod
    def load_data(self, datasets: DatasetViews, cfg: RecipeConfig) -> Any:
        """The recipe's data, read through `datasets` (by the names of `datasets()`) with the family's loader
        (load_image_dataset, load_text_dataset, load_fewshot_dataset), never from a path. In train and compress the
        views withhold every test split: the data object then carries `Withheld` stand-ins for the test arrays, which
        raise TestSplitAccessError when used, and every choice is made on the val split."""

    @abstractmethod
    def build_model(self, cfg: RecipeConfig) -> nn.Module: ...

    @abstractmethod
    def train(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Reporter) -> TrainResult:
        """Trains `model` in place, and the paper's trained baselines and ablations beside it (as companions)."""

    @abstractmethod
    def compress(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Reporter) -> CompressionResult:
        """Compresses `model` in place (patch, then optional fine-tune) and records the knobs."""

    @abstractmethod
    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        """Re-applies a recorded compression to a freshly built model whose weights were loaded."""

    @abstractmethod
    def evaluate(self, models: RunModels, data: Any, cfg: RecipeConfig, reporter: Reporter) -> Evaluation:
        """Measures the parent, the compressed model and every companion (the paper's baselines and ablations)
        side by side, in one run, on the same test items."""

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        """Our values of the paper's headline figures (same names as `paper_figures`), from one evaluation."""
        return {}

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        """The knobs a reviewer filters versions by (bits, granularity, r, ...), as flat registry tags."""
        return {}

    def weight_bits(self, knobs: dict[str, Any] | None) -> int:
        """Bits per stored weight of a version made with `knobs` (None: a trained, uncompressed version): the knob
        `weight_bits_knob` names, or 32 when the recipe declares none or the version has no knobs."""
        if not knobs or self.weight_bits_knob is None:
            return 32
        value: Any = knobs
        for key in self.weight_bits_knob.split("."):
            value = value[key]
        return int(value)

    def model_files(self, model: nn.Module) -> dict[str, str]:
        """Named text files the module needs besides its tensors (e.g. a tokenizer), saved with the model."""
        return {}

    def module_for_loading(self, cfg: RecipeConfig, files: dict[str, str],
                           knobs: dict[str, Any] | None) -> nn.Module:
        """An architecture-only module, compression re-applied, whose state dict the saved tensors fill."""
        module = self.build_model(cfg)
        return self.restore_compression(module, knobs) if knobs else module

    def companion_module(self, name: str, cfg: RecipeConfig, knobs: dict[str, Any] | None) -> nn.Module:
        """The architecture of companion `name`, whose saved tensors the platform loads into it: by default the
        recipe's own model with the companion's compression re-applied. A recipe whose companions have another
        architecture (a weak teacher) says so here."""
        return self.module_for_loading(cfg, {}, knobs)

    @abstractmethod
    def input_example(self, data: Any, n: int = 2) -> Any:
        """A batch of real inputs in the served format (numpy images, a list of prompts), used as MLflow input
        example and smoke request: val items, never test items (train and compress, which log it, see no test)."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Any, params: dict[str, Any] | None = None) -> Any:
        """The served prediction for a batch in the input_example format; `params` as in `serving_params`."""

    def check_config(self, cfg: RecipeConfig) -> None:
        """Raises ValueError, naming the dotted key and its bound, when a knob does not fit the model `cfg` builds (a
        PPT r above the tokens a block has, a LoRA rank above the smallest linear): what the schema cannot bound
        alone. The platform calls it before any data is prepared (recipes.check_config); by default nothing."""

    def architecture(self, cfg: RecipeConfig) -> nn.Module:
        """`build_model(cfg)` as shapes only (meta tensors: no memory, no weights) with the global random state left
        as it was: what check_config measures knobs against."""
        numpy_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = self.build_model(cfg)
        np.random.set_state(numpy_state)
        return model


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


_RECIPES: dict[str, type[Recipe]] = {}


# What a recipe must declare (no default in Recipe): without one the platform could not run, show or deploy it.
REQUIRED_DECLARATIONS = ("name", "title", "compression", "config_model", "primary_metric", "cost_metric",
                         "summary_columns", "smoke_overrides", "deployment_description")


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    missing = [attribute for attribute in REQUIRED_DECLARATIONS if not hasattr(cls, attribute)]
    if missing:
        raise TypeError(f"recipe {cls.__module__}.{cls.__qualname__} does not declare {', '.join(missing)} "
                        "(see the class attributes of recipes.base.Recipe)")
    if cls.name in _RECIPES and _RECIPES[cls.name] is not cls:
        raise ValueError(f"recipe name {cls.name!r} registered twice ({_RECIPES[cls.name].__module__}, {cls.__module__})")
    _RECIPES[cls.name] = cls
    return cls


def registered_recipes() -> dict[str, type[Recipe]]:
    """The recipes registered so far (recipes.available_recipes imports every recipe module first)."""
    return dict(sorted(_RECIPES.items()))
