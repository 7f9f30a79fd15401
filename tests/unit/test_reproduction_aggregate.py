"""The reproduction's plan and aggregation on hand-made per-seed figures (tasks/reproduce.py), and the results page
rendered from hand-made reproduction data (tasks/report.py)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from recipes import config_path, get_recipe, load_config
from settings.config import ConfigError
from tasks.reproduce import (
    ReproductionError, _shared_data_tags, aggregate, reproduction_plan, seed_figures,
)

# Five seeds of a run: top-1 of the method, its baseline and the parent, and one paper figure.
PPT = [94.0, 94.6, 93.8, 94.9, 94.2]
TOME = [93.5, 93.9, 93.6, 94.0, 93.4]
DENSE = [94.5, 94.8, 94.1, 95.0, 94.6]


def per_seed(method=PPT, baseline=TOME) -> dict[int, dict[str, dict[str, float]]]:
    return {s: {"dense": {"top1": DENSE[s]}, "ppt": {"top1": method[s], "macs_ratio": 0.68},
                "tome_equal_budget": {"top1": baseline[s]}} for s in range(len(method))}


def t95(values: list[float]) -> tuple[float, float]:
    return scipy_stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))


def test_every_variant_gets_its_mean_and_t_interval_over_the_seeds():
    recipe, cfg = get_recipe("ppt"), load_config("ppt", "tiny").config
    result, _, _ = aggregate(recipe, cfg, per_seed(), {s: {"macs_reduction_pct": 31.0 + s} for s in range(5)})
    ppt = result["variants"]["ppt"]["top1"]
    assert ppt["values"] == {str(s): PPT[s] for s in range(5)}
    assert ppt["interval"]["estimate"] == pytest.approx(np.mean(PPT))
    assert (ppt["interval"]["low"], ppt["interval"]["high"]) == pytest.approx(t95(PPT))
    assert ppt["interval"]["method"] == "Student t over 5 values (df 4)"
    assert set(result["variants"]) == {"dense", "ppt", "tome_equal_budget"}
    assert "macs_ratio" not in ppt  # only the primary and the headline metric are aggregated per variant
    ours = result["ours"]["macs_reduction_pct"]["interval"]
    assert ours["estimate"] == pytest.approx(33.0) and (ours["low"], ours["high"]) == pytest.approx(
        t95([31.0, 32.0, 33.0, 34.0, 35.0]))


def _tome_criterion(result, criteria):
    """The row and judgement of PPT's criterion against ToMe (the seeds here measure dense, PPT and ToMe only)."""
    index = next(i for i, row in enumerate(result["criteria"]) if row["name"] == "ppt_beats_tome_equal_budget")
    return result["criteria"][index], criteria[index]


def test_the_criteria_and_the_headline_are_judged_on_the_paired_per_seed_differences():
    recipe, cfg = get_recipe("ppt"), load_config("ppt", "tiny").config
    result, criteria, headline = aggregate(recipe, cfg, per_seed(), {})
    diffs = np.subtract(PPT, TOME)  # 0.5, 0.7, 0.2, 0.9, 0.8: every seed gains
    row, judgement = _tome_criterion(result, criteria)
    assert judgement.holds is True
    assert row["interval"]["estimate"] == pytest.approx(diffs.mean())
    assert (row["interval"]["low"], row["interval"]["high"]) == pytest.approx(t95(list(diffs)))
    assert row["interval"]["low"] > 0 and row["outcome"] == "holds"
    assert row["verdict"].startswith("beats tome_equal_budget (+0.62 [")
    assert "Student t of paired differences over 5 seeds (df 4)" in row["verdict"]
    assert row["per_seed"] == {str(s): [PPT[s], TOME[s]] for s in range(5)}
    assert result["headline"]["interval"] == row["interval"] and headline.holds is True


def test_a_gain_in_some_seeds_only_is_a_tie_not_a_win():
    recipe, cfg = get_recipe("ppt"), load_config("ppt", "tiny").config
    mixed = [93.5 + d for d in (0.9, -0.6, 0.8, -0.5, 0.4)]  # mean gain +0.2, the seeds disagree
    result, criteria, _ = aggregate(recipe, cfg, per_seed(method=mixed, baseline=[93.5] * 5), {})
    row, judgement = _tome_criterion(result, criteria)
    assert row["interval"]["estimate"] == pytest.approx(0.2)
    assert row["interval"]["low"] < 0 < row["interval"]["high"]
    assert judgement.holds is False and row["outcome"] == "does not hold"
    assert row["verdict"].startswith("no difference from tome_equal_budget")


def test_a_variant_missing_from_a_seed_makes_the_criterion_not_measured():
    recipe, cfg = get_recipe("ppt"), load_config("ppt", "tiny").config
    figures = per_seed()
    del figures[3]["tome_equal_budget"]
    result, criteria, _ = aggregate(recipe, cfg, figures, {})
    row, judgement = _tome_criterion(result, criteria)
    assert judgement.holds is None and "seed(s) [3]" in row["outcome"]
    assert result["variants"]["tome_equal_budget"]["top1"]["interval"]["n"] == 4  # aggregated over its 4 seeds


def test_seed_figures_take_the_numbers_of_a_pipeline_summary():
    summary = {"variants": [{"variant": "ppt", "role": "method", "method": "ppt", "run_id": "r", "top1": 94.0,
                             "batch_size": 64, "delta_vs_parent_interval": {"low": -1.0, "high": 0.5}}]}
    assert seed_figures(summary) == {"ppt": {"top1": 94.0, "batch_size": 64.0}}


def test_the_plan_runs_seeds_0_to_n_minus_1_after_the_profiles_reproduce_overrides(tmp_path, monkeypatch):
    profiles = yaml.safe_load(config_path("ppt").read_text())
    profiles["tiny"]["reproduce"] = {"seeds": 3, "overrides": ["evaluate.latency_runs=3"]}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ppt.yaml").write_text(yaml.safe_dump(profiles))
    monkeypatch.setenv("PAPEROPS_ROOT", str(tmp_path))
    plan = reproduction_plan("ppt", "tiny", None, ["train.epochs=1"])
    assert plan.seeds == [0, 1, 2]
    assert plan.overrides == ["evaluate.latency_runs=3", "train.epochs=1"]
    assert plan.seed_overrides(2) == ["evaluate.latency_runs=3", "train.epochs=1", "seed=2"]
    seeded = [load_config("ppt", "tiny", plan.seed_overrides(s)) for s in plan.seeds]
    assert len({r.digest() for r in seeded}) == 3  # each seed is its own run
    assert {r.digest(excluding=("seed",)) for r in seeded} == {plan.config_digest}  # of one config
    assert reproduction_plan("ppt", "tiny", 2, []).seeds == [0, 1]
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        reproduction_plan("ppt", "tiny", 1, [])
    with pytest.raises(ConfigError, match="train.epochz"):
        reproduction_plan("ppt", "tiny", 2, ["train.epochz=1"])


def test_seeds_on_different_data_are_not_one_reproduction():
    same = {"dataset.md5": "a" * 32 + ".dir", "dataset.stage": "mnist5k", "dataset.path": "/x", "gx.success": "true"}
    assert _shared_data_tags({0: same, 1: same | {"dataset.path": "/y"}}) == {
        "dataset.md5": "a" * 32 + ".dir", "dataset.stage": "mnist5k"}
    with pytest.raises(ReproductionError, match="different data: dataset.md5"):
        _shared_data_tags({0: same, 1: same | {"dataset.md5": "b" * 32 + ".dir"}})


def test_the_results_page_says_what_the_reproduction_says():
    from tasks.report import Champion, PaperResults, results_page

    recipe, cfg = get_recipe("ppt"), load_config("ppt", "tiny").config
    result, _, _ = aggregate(recipe, cfg, per_seed(), {s: {"macs_reduction_pct": 31.0 + s} for s in range(5)})
    result |= {"paper": "ppt", "profile": "tiny", "seeds": [0, 1, 2, 3, 4], "overrides": ["train.epochs=1"],
               "config_digest": "0123456789abcdef", "git_commit": "c" * 40, "run_id": "reprorun",
               "started": "2030-01-02 03:04 UTC",
               "data": {"dataset.md5": "d" * 32 + ".dir", "dataset.stage": "mnist5k"},
               "pipeline_run_ids": {str(s): f"seedrun{s}" for s in range(5)}}
    champion = Champion("paperops-ppt", "champion", "7", "tiny", "top1", 94.25, -0.5,
                        (-1.25, 0.25, "paired bootstrap"))
    unreproduced = PaperResults("cbq", "CBQ", "ppl_shakespeare", False, get_recipe("cbq").headline,
                                get_recipe("cbq").paper_figures, None, None)
    page = results_page([PaperResults("ppt", recipe.title, "top1", True, recipe.headline, recipe.paper_figures,
                                      result, champion), unreproduced], dt.datetime(2030, 1, 3, 12, 0), "tiny")
    lo, hi = t95(PPT)
    mean = f"{np.mean(PPT):.4g} [{lo:.4g}, {hi:.4g}]"
    assert f"| ppt | top1 ↑ | {mean} (ppt) |" in page  # the cross-paper row: ours with its interval
    lo, hi = t95(TOME)
    assert f"| baseline in the same runs: tome_equal_budget | {np.mean(TOME):.4g} [{lo:.4g}, {hi:.4g}] |" in page
    assert "| verdict (paired per-seed differences) | beats tome_equal_budget (+0.62 [" in page
    lo, hi = t95(list(np.subtract(PPT, TOME)))
    assert (f"| ppt_beats_tome_equal_budget | ppt better than tome_equal_budget on top1 | +0.62 [{lo:+.4g}, {hi:+.4g}] "
            "(Student t of paired differences over 5 seeds (df 4)) |") in page
    assert "| 94 / 93.5, 94.6 / 93.9, 93.8 / 93.6, 94.9 / 94, 94.2 / 93.4 | holds |" in page
    assert "Reproduction run `reprorun`, 2030-01-02 03:04 UTC: profile `tiny`, seeds 5 (0, 1, 2, 3, 4)" in page
    assert "config digest `0123456789abcdef`" in page and "`train.epochs=1`" in page
    assert f"`dataset.md5` {'d' * 32}.dir" in page and "seed 4 `seedrun4`" in page
    figure = next(f for f in recipe.paper_figures if f.metric == "macs_reduction_pct")
    lo, hi = t95([31.0, 32.0, 33.0, 34.0, 35.0])
    assert f"| macs_reduction_pct | {figure.value:.4g} | {figure.source} | {figure.note} | 33 [{lo:.4g}, {hi:.4g}] |" \
        in page
    assert "`paperops-ppt@champion` is v7 (profile `tiny`): top1 94.25, Δ vs parent -0.5 [-1.25, +0.25]" in page
    assert "| cbq | ppl_shakespeare ↓ |  |  | no reproduction run |" in page
    assert "No reproduction run of this profile yet: `paperops reproduce cbq` makes one." in page
    assert page.startswith("# Results\n\nGenerated by `paperops report` on 2030-01-03 12:00 UTC")
