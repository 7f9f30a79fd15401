"""The promotion gate of a pipeline run: the compressed version becomes `@champion` only when its data passed
validation, its primary metric dropped no more than allowed vs its parent, and its cost ratio is below the
threshold. Otherwise the alias stays where it was and the version records why it was rejected."""
from __future__ import annotations

import datetime as dt
import getpass
import math

from mlflow.exceptions import MlflowException
from prefect import task

from models.common.recipe import PromotionSection, get_recipe
from tasks.refs import EvaluationRef, PromotionDecision, RegisteredVersions
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking
from tasks.validate import ValidationReport


def promotion_failures(metrics: dict[str, float], gate: PromotionSection, primary_metric: str, cost_metric: str,
                       data_passed: bool, higher_is_better: bool = True) -> list[str]:
    """Every check that fails, as a sentence naming the figure and the threshold; empty = promote."""
    failures = []
    if not data_passed:
        failures.append("dataset did not pass its validation suite")
    delta = metrics.get("delta_vs_parent", math.nan)
    worsening = -delta if higher_is_better else delta
    if not worsening <= gate.max_metric_drop:  # written so NaN fails
        failures.append(f"{primary_metric} changed by {delta:+.2f} vs the parent "
                        f"({'higher' if higher_is_better else 'lower'} is better); the gate allows "
                        f"{gate.max_metric_drop:.2f} worse at most")
    cost = metrics.get(cost_metric, math.nan)
    if not cost <= gate.max_cost_ratio:
        failures.append(f"{cost_metric} is {cost:.3f}; the gate requires <= {gate.max_cost_ratio:.3f}")
    return failures


@task(name="promote", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def promote_version(paper: str, versions: RegisteredVersions, evaluation: EvaluationRef,
                    validation: ValidationReport, gate: PromotionSection) -> PromotionDecision:
    client = configure_tracking()
    recipe = get_recipe(paper)
    name, version = versions.model_name, versions.method_version
    method_metrics = next(v for v in evaluation.variants.values() if v.role == "method").metrics
    failures = promotion_failures(method_metrics, gate, recipe.primary_metric, recipe.cost_metric,
                                  validation.success, recipe.higher_is_better)
    try:
        previous = str(client.get_model_version_by_alias(name, gate.alias).version)
    except MlflowException:
        previous = None
    checked_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if failures:
        client.set_model_version_tag(name, version, "validation_status", "rejected")
        client.set_model_version_tag(name, version, "promotion.reasons", " | ".join(failures))
        client.set_model_version_tag(name, version, "promotion.checked_at", checked_at)
        return PromotionDecision(name, version, gate.alias, False, failures, previous)
    client.set_registered_model_alias(name, gate.alias, version)
    try:
        client.set_model_version_tag(name, version, "validation_status", "approved")
        client.set_model_version_tag(name, version, "promotion.audit",
                                     f"{gate.alias} set by paperops pipeline ({getpass.getuser()}) at {checked_at}; "
                                     f"checks: data valid, {recipe.primary_metric} worse by <= {gate.max_metric_drop}, "
                                     f"{recipe.cost_metric} <= {gate.max_cost_ratio}")
    except BaseException:
        # The alias must not point at a version whose approval was not recorded: put the old one back.
        if previous is None:
            client.delete_registered_model_alias(name, gate.alias)
        else:
            client.set_registered_model_alias(name, gate.alias, previous)
        raise
    return PromotionDecision(name, version, gate.alias, True, [], previous)
