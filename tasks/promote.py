"""The promotion gate: a compressed version becomes `@champion` only when its data passed validation, its primary
metric worsened no more than allowed vs its parent (the configured threshold on the point estimate; the reasons quote
the delta's item-level interval and verdict beside it), its cost ratio is below the threshold, and it loads from the
registry and answers a serving smoke request in its logged signature. Otherwise the alias stays where it was and
the version records why it was rejected. The pipeline runs it on the version it registered; `paperops promote`
(flows/promote.py) runs it on any version."""
from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os

import numpy as np

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from models.common.stats import Interval, verdict
from recipes import get_recipe
from recipes.base import PromotionSection
from tasks.ownership import registry_lock
from tasks.pareto import tag_float
from tasks.record import delta_interval_from_tags
from tasks.refs import PromotionDecision
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, load_pyfunc_model, registered_model_name


def delta_evidence(primary_metric: str, delta: float, reference: str, higher_is_better: bool = True,
                   interval: tuple[float, float, str] | None = None) -> str:
    """The primary metric's change vs `reference` as the gate quotes it: the point estimate its threshold applies to,
    with the interval paired over the test items and its verdict when the version has one."""
    sentence = (f"{primary_metric} changed by {delta:+.2f} vs {reference} "
                f"({'higher' if higher_is_better else 'lower'} is better)")
    if interval is None:
        return sentence + ", no item-level interval (no per-item scores for this comparison)"
    low, high, method = interval
    words = {"better": f"better than {reference}", "tie": f"no difference from {reference}",
             "worse": f"worse than {reference}"}
    judged = verdict(Interval(delta, low, high, n=0, method=method), higher_is_better)
    return (sentence + f", 95 % interval [{low:+.2f}, {high:+.2f}] ({method}): {words[judged]} at 95 %")


def promotion_failures(metrics: dict[str, float], gate: PromotionSection, primary_metric: str, cost_metric: str,
                       data_passed: bool, higher_is_better: bool = True, reference: str = "the parent",
                       check_cost: bool = True, interval: tuple[float, float, str] | None = None) -> list[str]:
    """Every check that fails, as a sentence naming the figure and the threshold; empty = promote.
    `metrics["delta_vs_parent"]` is the change vs `reference`, `interval` its item-level interval (low, high, how)
    when there is one: quoted in the reason, while the rule stays the threshold on the point estimate.
    `check_cost` is off for uncompressed recipes."""
    failures = []
    if not data_passed:
        failures.append("dataset did not pass its validation suite")
    delta = metrics.get("delta_vs_parent", math.nan)
    worsening = -delta if higher_is_better else delta
    if not worsening <= gate.max_metric_drop:  # written so NaN fails
        failures.append(delta_evidence(primary_metric, delta, reference, higher_is_better, interval)
                        + f"; the gate allows {gate.max_metric_drop:.2f} worse at most (its rule: the threshold on "
                          "the point estimate)")
    cost = metrics.get(cost_metric, math.nan)
    if check_cost and not cost <= gate.max_cost_ratio:
        failures.append(f"{cost_metric} is {cost:.3f}; the gate requires <= {gate.max_cost_ratio:.3f}")
    return failures


class PromotionRequestError(LookupError):
    """The version to promote does not exist or was not registered by a paperops pipeline."""


def candidate_role(paper: str) -> str:
    """The role of the versions the gate decides on: compressed ones, or trained ones for a recipe that does not
    compress."""
    return "method" if get_recipe(paper).compression else "parent"


def newest_candidate_version(paper: str) -> str:
    client = configure_tracking()
    name = registered_model_name(paper)
    role = candidate_role(paper)
    candidates = [int(v.version) for v in client.search_model_versions(f"name='{name}'")
                  if v.tags.get("paperops.role") == role]
    if not candidates:
        raise PromotionRequestError(f"{name} has no {'compressed' if role == 'method' else 'trained'} version: "
                                    f"run `paperops run {paper}` first")
    return str(max(candidates))


def delta_vs_champion(client: MlflowClient, name: str, version: str, primary_metric: str,
                      alias: str) -> tuple[float, str]:
    """For an uncompressed recipe there is no parent to compare with: the candidate must not be worse than the
    current champion, when both were measured on the same data and profile (a figure on another dataset version
    says nothing about this one). Returns (change of the primary metric, what it was compared with)."""
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return 0.0, "no champion yet"
    if str(champion.version) == str(version):
        return 0.0, "itself (already the champion)"
    tags = client.get_model_version(name, version).tags
    for key in ("dataset.md5", "paperops.profile"):
        if champion.tags.get(key) != tags.get(key):
            return 0.0, f"no comparable champion (v{champion.version} has another {key})"
    return (tag_float(tags, f"metrics.{primary_metric}") - tag_float(champion.tags, f"metrics.{primary_metric}"),
            f"the champion v{champion.version}")


def version_profile(paper: str, version: str) -> str:
    client = configure_tracking()
    name = registered_model_name(paper)
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException as exc:
        raise PromotionRequestError(f"{name} has no version {version}") from exc
    if "paperops.profile" not in tags:
        raise PromotionRequestError(f"{name} v{version} was not registered by a paperops pipeline")
    return tags["paperops.profile"]


def serving_smoke_failure(model_uri: str) -> str | None:
    """Loads the version from the registry as a server would (pickle deserialization off), sends its logged input
    example, and checks the answer against the logged output signature. None = it answered correctly."""
    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    try:
        model = load_pyfunc_model(model_uri)
        example = model.input_example
        if example is None:
            return "the model has no logged input example to send as a smoke request"
        prediction = model.predict(example)
        outputs = model.metadata.get_output_schema()
    except Exception as exc:  # any failure to load or answer is the finding, reported verbatim
        return f"serving smoke request failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
    n_inputs = len(example)
    if outputs is None:
        return "the model has no logged output signature to check the answer against"
    if outputs.is_tensor_spec():
        expected = outputs.inputs[0].shape
        got = np.asarray(prediction).shape
        if len(got) != len(expected) or any(e not in (-1, g) for e, g in zip(expected, got, strict=True)) \
                or got[0] != n_inputs:
            return f"serving smoke answer has shape {got}; the signature says {expected} for {n_inputs} inputs"
    elif len(prediction) != n_inputs:
        return f"serving smoke answer has {len(prediction)} rows for {n_inputs} inputs"
    return None


@task(name="promote", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def promote_version(paper: str, version: str, gate: PromotionSection, actor: str = "pipeline") -> PromotionDecision:
    """The gate on one registered compressed version, read entirely from the registry: its data passed
    validation, its primary metric is within the threshold of its parent's, its cost ratio is below the threshold,
    and it loads and answers a serving smoke request. Passing moves `@challenger` then `gate.alias` to it (the
    old champion is restored if recording the approval fails); failing tags it rejected with every reason.
    The paper's registry lock is held throughout, so two promotions at once do not both judge against, and
    replace, the same champion."""
    with registry_lock(paper):
        return _promote_version(paper, version, gate, actor)


def _promote_version(paper: str, version: str, gate: PromotionSection, actor: str) -> PromotionDecision:
    client = configure_tracking()
    recipe = get_recipe(paper)
    name = registered_model_name(paper)
    mv = client.get_model_version(name, version)
    tags = mv.tags
    compresses = recipe.compression is not None
    if compresses:
        delta, reference = tag_float(tags, "metrics.delta_vs_parent"), "the parent"
        interval = delta_interval_from_tags(tags, recipe.primary_metric)
    else:  # the champion was measured in another run: no paired items to build an interval on
        delta, reference = delta_vs_champion(client, name, version, recipe.primary_metric, gate.alias)
        interval = None
    metrics = {"delta_vs_parent": delta, recipe.cost_metric: tag_float(tags, f"metrics.{recipe.cost_metric}")}
    failures = promotion_failures(metrics, gate, recipe.primary_metric, recipe.cost_metric,
                                  tags.get("gx.success") == "true", recipe.higher_is_better, reference, compresses,
                                  interval)
    evidence = delta_evidence(recipe.primary_metric, delta, reference, recipe.higher_is_better, interval)
    role = candidate_role(paper)
    if tags.get("paperops.role") != role:
        failures.append(f"v{version} is a {tags.get('paperops.role', 'untracked')} version, not a "
                        f"{'compressed' if role == 'method' else 'trained'} one")
    smoke = serving_smoke_failure(f"models:/{name}/{version}")
    if smoke is not None:
        failures.append(smoke)
    try:
        previous = str(client.get_model_version_by_alias(name, gate.alias).version)
    except MlflowException:
        previous = None
    checked_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if failures:
        client.set_model_version_tag(name, version, "validation_status", "rejected")
        client.set_model_version_tag(name, version, "promotion.reasons", " | ".join(failures))
        client.set_model_version_tag(name, version, "promotion.checked_at", checked_at)
        return PromotionDecision(name, version, gate.alias, False, failures, previous, evidence)
    cost_check = (f"{recipe.cost_metric} <= {gate.max_cost_ratio}" if compresses
                  else f"no cost check (not compressed: {recipe.compression_skip_reason})")
    checks = (f"data valid ({tags['gx.suite']}), {recipe.primary_metric} worse by <= {gate.max_metric_drop} vs "
              f"{reference} on the point estimate ({evidence}), {cost_check}, serving smoke request answered")
    client.set_registered_model_alias(name, "challenger", version)
    client.set_registered_model_alias(name, gate.alias, version)
    try:
        client.set_model_version_tag(name, version, "validation_status", "approved")
        client.set_model_version_tag(name, version, "promotion.audit",
                                     f"@{gate.alias} set by paperops {actor} ({getpass.getuser()}) at {checked_at}, "
                                     f"replacing {('v' + previous) if previous else 'nothing'}; checks: {checks}")
        history = json.loads(client.get_registered_model(name).tags.get("promotion.history", "[]"))
        history.append({"version": version, "alias": gate.alias, "at": checked_at, "by": actor,
                        "replaced": previous})
        client.set_registered_model_tag(name, "promotion.history", json.dumps(history[-50:]))
    except BaseException:
        # The alias must not point at a version whose approval was not recorded: put the old one back.
        if previous is None:
            client.delete_registered_model_alias(name, gate.alias)
        else:
            client.set_registered_model_alias(name, gate.alias, previous)
        raise
    return PromotionDecision(name, version, gate.alias, True, [], previous, evidence)
