"""`paperops reproduce` for real, at smoke size: two seeds of one paper as parallel paper-pipeline subflow runs on a
real Prefect API, aggregated into one reproduction run in a real MLflow store; then `paperops report` builds the
results page from that store, and the page is checked against the runs (the t intervals recomputed here with
scipy from the seeds' own pipeline summaries)."""
from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from recipes import get_recipe
from settings import tracking_uri
from tasks.tracking import registered_model_name

PAPER = "ppt"  # the cheapest smoke pipeline that compresses, so every step a seed skips is exercised
SEEDS = 2


def t95(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval (df n - 1); at smoke size seeds may agree exactly (a zero-width interval)."""
    mean = float(np.mean(values))
    half = float(scipy_stats.t.ppf(0.975, df=len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


@pytest.fixture(scope="module")
def reproduction(prefect_api) -> dict:
    from flows.reproduce import reproduce

    return reproduce(PAPER, "tiny", SEEDS, list(get_recipe(PAPER).smoke_overrides), concurrency=2)


@pytest.fixture(scope="module")
def seed_summaries(reproduction) -> dict[int, dict]:
    return {int(seed): mlflow.artifacts.load_dict(f"runs:/{run_id}/pipeline/summary.json")
            for seed, run_id in reproduction["pipeline_run_ids"].items()}


def client() -> MlflowClient:
    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def figure(summary: dict, variant: str, metric: str) -> float:
    return next(row[metric] for row in summary["variants"] if row["variant"] == variant)


def test_each_seed_ran_its_own_pipeline_that_registered_nothing(reproduction, seed_summaries):
    assert sorted(seed_summaries) == list(range(SEEDS))
    registered = {v.tags.get("paperops.pipeline_run_id")
                  for v in client().search_model_versions(f"name='{registered_model_name(PAPER)}'")}
    for seed, summary in seed_summaries.items():
        run = client().get_run(summary["pipeline_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["seed"] == str(seed)
        assert run.data.tags["paperops.registers"] == "false"
        assert run.data.tags["paperops.reproduction_run_id"] == reproduction["run_id"]
        assert summary["registered"] is False and summary["versions"] == {} and summary["promotion"] == {}
        assert summary["steps"]["train"] == "Completed" and summary["steps"]["evaluate"] in ("Completed", "Cached")
        assert summary["steps"]["register"] == "Skipped (reproduction run: not registered)"
        assert summary["pipeline_run_id"] not in registered
    # Different seeds train different models: their training curves differ.
    curves = []
    for summary in seed_summaries.values():
        (train,) = client().search_runs([client().get_run(summary["pipeline_run_id"]).info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{summary['pipeline_run_id']}' and "
                                        "tags.`paperops.step` = 'train'")
        curves.append(train.data.metrics)
    assert curves[0] != curves[1]


def test_the_reproduction_run_holds_every_variants_t_interval_over_the_seeds(reproduction, seed_summaries):
    recipe = get_recipe(PAPER)
    run = client().get_run(reproduction["run_id"])
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["paperops.step"], tags["paperops.paper"], tags["paperops.profile"]) == ("reproduction", PAPER, "tiny")
    assert run.info.experiment_id == client().get_experiment_by_name(f"paperops-{PAPER}").experiment_id
    first = client().get_run(seed_summaries[0]["pipeline_run_id"]).data.tags
    assert tags["dataset.md5"] == first["dataset.md5"] and reproduction["data"]["dataset.md5"] == first["dataset.md5"]
    assert reproduction["seeds"] == list(range(SEEDS))
    for row in seed_summaries[0]["variants"]:
        values = [figure(seed_summaries[s], row["variant"], recipe.primary_metric) for s in range(SEEDS)]
        mean, low, high = t95(values)
        prefix = f"{row['variant']}.{recipe.primary_metric}"
        assert (metrics[f"{prefix}.mean"], metrics[f"{prefix}.low"], metrics[f"{prefix}.high"]) == pytest.approx(
            (mean, low, high))


def test_each_decisive_criterion_is_judged_on_the_paired_per_seed_differences(reproduction, seed_summaries):
    cfg_criteria = reproduction["criteria"]
    assert [c["name"] for c in cfg_criteria] == list(get_recipe(PAPER).config_model.model_validate(
        mlflow.artifacts.load_dict(f"runs:/{seed_summaries[0]['pipeline_run_id']}/config/resolved.json")).decisive)
    metrics = client().get_run(reproduction["run_id"]).data.metrics
    for criterion in cfg_criteria:
        diffs = [figure(seed_summaries[s], criterion["method"], criterion["metric"])
                 - figure(seed_summaries[s], criterion["baseline"], criterion["metric"]) for s in range(SEEDS)]
        mean, low, high = t95(diffs)
        prefix = f"decisive.{criterion['name']}"
        assert (metrics[f"{prefix}.estimate"], metrics[f"{prefix}.low"], metrics[f"{prefix}.high"]) == \
            pytest.approx((mean, low, high))
        worse_end = low if criterion["higher_is_better"] else -high  # the interval's end on the losing side
        # "better": the interval excludes 0; "not_worse": it excludes a loss larger than the margin
        holds = worse_end > 0 if criterion["claim"] == "better" else worse_end >= -criterion["margin"]
        assert criterion["holds"] is holds and metrics[f"{prefix}.holds"] == float(holds)


def test_the_report_page_says_what_the_runs_say(reproduction, seed_summaries, tmp_path):
    from paperops.cli import app

    recipe = get_recipe(PAPER)
    out = tmp_path / "results.md"
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    headline = recipe.headline
    for variant in (headline.method_variant, headline.baseline_variant):
        mean, low, high = t95([figure(seed_summaries[s], variant, headline.metric) for s in range(SEEDS)])
        assert f"{mean:.4g} [{low:.4g}, {high:.4g}] ({variant})" in page  # the cross-paper row
    assert f"Reproduction run `{reproduction['run_id']}`" in page
    assert f"seeds {SEEDS} ({', '.join(str(s) for s in range(SEEDS))})" in page
    assert f"`dataset.md5` {reproduction['data']['dataset.md5']}" in page
    for seed, summary in seed_summaries.items():
        assert f"seed {seed} `{summary['pipeline_run_id']}`" in page
    for criterion in reproduction["criteria"]:
        assert f"| {criterion['name']} |" in page and f"| {criterion['outcome']} |" in page
    assert f"| {PAPER} | {headline.metric} " in page
