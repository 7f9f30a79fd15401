"""The evidence of a run: the config's decisive criteria and the recipe's headline, judged with
models/common/stats.py, and the per-item scores they are judged on.

One run compares variants on the paired per-item scores of its test split (paired bootstrap over items, the exact
McNemar test beside it when every item is scored 0 or 100); a reproduction compares them on their paired per-seed
figures (Student t over seeds, tasks/reproduce.py). Either way a comparison whose variants or scores are missing is
"not measured", never passed. The per-item scores of every variant are logged as `per_item/<variant>.npz` in the
evaluate run; the outcomes go on the pipeline run as `decisive.<name>.holds/.estimate/.low/.high` (metrics) and
`decisive.<name>.method/.outcome` (tags), the headline's as `headline.*`.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from mlflow import MlflowClient
from prefect import task

from models.common.stats import Claim, Interval, claim_holds, mcnemar, paired_bootstrap, seed_t_interval, verdict_phrase
from recipes.base import Recipe, RecipeConfig, VariantResult
from tasks.refs import EvaluationRef
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, recipe_and_config

PER_ITEM_DIR = "per_item"
HEADLINE = "headline"
NOT_MEASURED = "not measured"
# Per-item scores of a top-1 metric: 100 · correct. Only then is McNemar's test on the discordant items meaningful.
CORRECTNESS_POINTS = (0.0, 100.0)

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Comparison:
    """What a decisive criterion (or the headline) compares: `method` against `baseline` on `metric`."""

    name: str
    metric: str
    method: str
    baseline: str
    claim: Claim
    margin: float
    higher_is_better: bool


def comparisons(recipe: Recipe, cfg: RecipeConfig) -> list[Comparison]:
    """The config's decisive criteria, each with its metric's direction resolved (default: the recipe's)."""
    return [Comparison(name, c.metric, c.method, c.baseline, c.claim, c.margin,
                       recipe.higher_is_better if c.higher_is_better is None else c.higher_is_better)
            for name, c in cfg.decisive.items()]


def headline_comparison(recipe: Recipe) -> Comparison | None:
    """The recipe's headline as a comparison: its method must beat its baseline ("beats" needs the interval)."""
    h = recipe.headline
    if h is None:
        return None
    return Comparison(HEADLINE, h.metric, h.method_variant, h.baseline_variant, "better", 0.0,
                      recipe.higher_is_better)


@dataclass(frozen=True)
class Judgement:
    """A comparison as it came out: its interval of (method − baseline) and whether the claim holds; `holds` is
    None when it could not be measured, and `note` says why (or carries McNemar's table beside the interval)."""

    comparison: Comparison
    interval: Interval | None
    holds: bool | None
    note: str = ""
    mcnemar_p: float | None = None

    @property
    def outcome(self) -> str:
        if self.holds is None:
            return f"{NOT_MEASURED}: {self.note}"
        return "holds" if self.holds else "does not hold"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: what the summaries, the reproduction run and the report carry."""
        row: dict[str, Any] = asdict(self.comparison) | {"outcome": self.outcome, "holds": self.holds,
                                                          "note": self.note, "mcnemar_p": self.mcnemar_p}
        row["interval"] = asdict(self.interval) if self.interval is not None else None
        if self.interval is not None:
            row["verdict"] = verdict_phrase(self.interval, self.comparison.baseline,
                                            self.comparison.higher_is_better)
        return row


def judgement_text(row: dict[str, Any] | None) -> str:
    """What a summary or a report prints for a judgement row (`Judgement.as_dict()`): its verdict phrase ("beats the
    baseline (+1.2 [+0.4, +2.0], ...)": "beats" only when the interval excludes zero), or why it was not measured."""
    if row is None:
        return "no headline declared"
    return row["outcome"] if row["interval"] is None else row["verdict"]


def interval_text(row: dict[str, Any]) -> str:
    """A judgement row's method − baseline with its interval and how it was computed, McNemar's count beside it:
    "+1.2 [+0.4, +2.0] (paired bootstrap over 1000 items (10000 resamples); McNemar: ...)"; "" when not measured."""
    i = row["interval"]
    if i is None:
        return ""
    how = "; ".join(filter(None, [i["method"], row["note"]]))
    return f"{i['estimate']:+.4g} [{i['low']:+.4g}, {i['high']:+.4g}] ({how})"


def not_measured(comparison: Comparison, why: str) -> Judgement:
    return Judgement(comparison, None, None, why)


def judge_items(comparison: Comparison, per_item: dict[str, dict[str, np.ndarray]],
                transform: Transform | None = None) -> Judgement:
    """`comparison` on the paired per-item scores of one run (`per_item`: variant -> metric -> scores)."""
    scores = []
    for variant in (comparison.method, comparison.baseline):
        if variant not in per_item:
            return not_measured(comparison, f"variant {variant!r} was not evaluated in this run")
        if comparison.metric not in per_item[variant]:
            return not_measured(comparison, f"variant {variant!r} logged no per-item {comparison.metric!r} scores")
        scores.append(np.asarray(per_item[variant][comparison.metric], dtype=np.float64))
    a, b = scores
    if a.shape != b.shape:
        return not_measured(comparison, f"per-item {comparison.metric!r} of {comparison.method!r} and "
                                        f"{comparison.baseline!r} are not the same items ({len(a)} vs {len(b)})")
    interval = paired_bootstrap(a, b, transform=transform)
    holds = claim_holds(interval, comparison.claim, comparison.margin, comparison.higher_is_better)
    if transform is None and np.isin(a, CORRECTNESS_POINTS).all() and np.isin(b, CORRECTNESS_POINTS).all():
        table = mcnemar(a == 100.0, b == 100.0)
        note = (f"McNemar: {table.only_a_right} items only {comparison.method} got right, {table.only_b_right} only "
                f"{comparison.baseline}, exact p = {table.p_value:.3g}")
        return Judgement(comparison, interval, holds, note, table.p_value)
    return Judgement(comparison, interval, holds)


def judge_seeds(comparison: Comparison, per_seed: dict[int, dict[str, dict[str, float]]]) -> Judgement:
    """`comparison` on the paired per-seed figures of a reproduction (`per_seed`: seed -> variant -> metric ->
    figure): Student's t interval of the per-seed differences. Every seed must have measured both variants."""
    missing = sorted(seed for seed, variants in per_seed.items()
                     if not all(comparison.metric in variants.get(v, {})
                                for v in (comparison.method, comparison.baseline)))
    if missing:
        return not_measured(comparison, f"{comparison.method!r} or {comparison.baseline!r} has no "
                                        f"{comparison.metric!r} in seed(s) {missing}")
    seeds = sorted(per_seed)
    a = [per_seed[s][comparison.method][comparison.metric] for s in seeds]
    b = [per_seed[s][comparison.baseline][comparison.metric] for s in seeds]
    if not all(math.isfinite(x) for x in a + b):
        return not_measured(comparison, f"a seed's {comparison.metric!r} is not finite")
    interval = seed_t_interval(a, b)
    return Judgement(comparison, interval,
                     claim_holds(interval, comparison.claim, comparison.margin, comparison.higher_is_better))


def judgement_metrics(judgement: Judgement, prefix: str) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags a judgement is logged as: `<prefix>.holds/.estimate/.low/.high/.mcnemar_p` and
    `<prefix>.method/.verdict/.outcome` (prefix `decisive.<name>` for a criterion, `headline` for the headline)."""
    c = judgement.comparison
    tags = {f"{prefix}.outcome": judgement.outcome[:5000]}
    metrics: dict[str, float] = {}
    if judgement.interval is not None:
        i = judgement.interval
        metrics |= {f"{prefix}.estimate": i.estimate, f"{prefix}.low": i.low, f"{prefix}.high": i.high}
        tags[f"{prefix}.method"] = i.method
        tags[f"{prefix}.verdict"] = verdict_phrase(i, c.baseline, c.higher_is_better)
    if judgement.holds is not None:
        metrics[f"{prefix}.holds"] = float(judgement.holds)
    if judgement.mcnemar_p is not None:
        metrics[f"{prefix}.mcnemar_p"] = judgement.mcnemar_p
    return metrics, tags


def log_judgements(client: MlflowClient, run_id: str, criteria: Sequence[Judgement],
                   headline: Judgement | None) -> dict[str, Any]:
    """Logs every judgement on `run_id`; returns {"criteria": [...], "headline": ... or None} as `as_dict()`
    rows, what the summaries carry."""
    from mlflow.entities import Metric, RunTag

    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for judgement, prefix in [(j, f"decisive.{j.comparison.name}") for j in criteria] + (
            [(headline, HEADLINE)] if headline is not None else []):
        more_metrics, more_tags = judgement_metrics(judgement, prefix)
        metrics |= more_metrics
        tags |= more_tags
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    return {"criteria": [j.as_dict() for j in criteria], "headline": headline.as_dict() if headline else None}


def delta_intervals(variants: Sequence[VariantResult], primary_metric: str,
                    transform: Transform | None = None) -> dict[str, Interval]:
    """The interval of every non-parent variant's primary-metric delta vs the parent, paired over the test items
    (variants without per-item scores of the primary metric get none)."""
    parent = next(v for v in variants if v.role == "parent")
    if primary_metric not in parent.per_item:
        return {}
    return {v.name: paired_bootstrap(v.per_item[primary_metric], parent.per_item[primary_metric],
                                     transform=transform)
            for v in variants if v.role != "parent" and primary_metric in v.per_item}


def log_per_item(client: MlflowClient, run_id: str, variants: Sequence[VariantResult]) -> dict[str, list[str]]:
    """Saves each variant's per-item scores as `per_item/<variant>.npz` (one array per metric) in `run_id`;
    returns variant -> the metrics saved."""
    saved = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            if v.per_item:
                np.savez(Path(tmp) / f"{v.name}.npz", **{k: np.asarray(x) for k, x in v.per_item.items()})
                saved[v.name] = sorted(v.per_item)
        if saved:
            client.log_artifacts(run_id, tmp, PER_ITEM_DIR)
    return saved


def load_per_item(run_id: str, variant: str) -> dict[str, np.ndarray]:
    """The per-item scores `log_per_item` saved for `variant` in `run_id`."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{PER_ITEM_DIR}/{variant}.npz")
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def judge_run_comparisons(recipe: Recipe, cfg: RecipeConfig,
                          evaluation: EvaluationRef) -> tuple[list[Judgement], Judgement | None]:
    """Every decisive criterion of `cfg`, and the headline, on the per-item scores the evaluate run logged."""
    criteria = comparisons(recipe, cfg)
    headline = headline_comparison(recipe)
    names = {v for c in criteria + ([headline] if headline else []) for v in (c.method, c.baseline)}
    per_item = {name: load_per_item(evaluation.run_id, name) if evaluation.variants[name].per_item_metrics else {}
                for name in sorted(names) if name in evaluation.variants}

    def judge(c: Comparison) -> Judgement:
        return judge_items(c, per_item, recipe.per_item_transforms.get(c.metric))

    return [judge(c) for c in criteria], judge(headline) if headline else None


@task(name="decisive", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def judge_run(paper: str, config: dict[str, Any], evaluation: EvaluationRef, pipeline_run_id: str) -> dict[str, Any]:
    """Judges the run's decisive criteria and headline on its per-item scores and logs each outcome on the
    pipeline run; returns {"criteria": [...], "headline": ... or None} as `Judgement.as_dict()` rows."""
    recipe, cfg = recipe_and_config(paper, config)
    criteria, headline = judge_run_comparisons(recipe, cfg, evaluation)
    return log_judgements(configure_tracking(), pipeline_run_id, criteria, headline)
