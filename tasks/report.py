"""`paperops report`: the results page (docs/results.md) built from the reproduction runs and the registry only,
never from typed numbers.

Per paper: the paper's own figures with their sources (the recipe's `headline` and `paper_figures`), our figure with
its interval over seeds and the baseline measured in the same runs (from the newest finished reproduction run of the
profile, tasks/reproduce.py), the verdict, every decisive criterion as it came out, the seeds, the profile, the data
md5s, the config digest, the run ids and the run's date; and the registry's current champion. `collect_results`
reads the tracking store, `results_page` renders what it read.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from recipes import available_recipes
from recipes.base import Headline, PaperFigure
from tasks.evidence import interval_text, judgement_text
from tasks.record import delta_interval_from_tags
from tasks.reproduce import REPRODUCTION_ARTIFACT, REPRODUCTION_STEP
from tasks.tracking import configure_tracking, experiment_name, registered_model_name


@dataclass(frozen=True)
class Champion:
    model_name: str
    alias: str
    version: str
    profile: str
    primary_metric: str
    value: float | None
    delta: float | None
    delta_interval: tuple[float, float, str] | None


@dataclass(frozen=True)
class PaperResults:
    """What the page shows of one paper: the recipe's declarations and what the tracking store holds."""

    paper: str
    title: str
    primary_metric: str
    higher_is_better: bool
    headline: Headline | None
    paper_figures: tuple[PaperFigure, ...]
    reproduction: dict[str, Any] | None  # reproduction.json of the newest reproduction run, with run_id, started
    champion: Champion | None


def newest_reproduction(paper: str, profile: str) -> dict[str, Any] | None:
    """reproduction.json of the paper's newest finished reproduction run of `profile`, with its run id and start."""
    client = configure_tracking()
    experiment = client.get_experiment_by_name(experiment_name(paper))
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`paperops.step` = '{REPRODUCTION_STEP}' and tags.`paperops.profile` = '{profile}' "
                              "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        return None
    run = runs[0]
    started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc)
    return mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{REPRODUCTION_ARTIFACT}") | {
        "run_id": run.info.run_id, "started": started.strftime("%Y-%m-%d %H:%M UTC")}


def current_champion(paper: str, primary_metric: str, alias: str = "champion") -> Champion | None:
    client = configure_tracking()
    name = registered_model_name(paper)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    tags = version.tags

    def number(key: str) -> float | None:
        return float(tags[key]) if key in tags else None

    return Champion(name, alias, str(version.version), tags.get("paperops.profile", "?"), primary_metric,
                    number(f"metrics.{primary_metric}"), number("metrics.delta_vs_parent"),
                    delta_interval_from_tags(tags, primary_metric))


def collect_results(profile: str = "tiny") -> list[PaperResults]:
    """Every registered paper's results as the tracking store holds them."""
    results = []
    for name, recipe in available_recipes().items():
        results.append(PaperResults(name, recipe.title, recipe.primary_metric, recipe.higher_is_better,
                                    recipe.headline, recipe.paper_figures, newest_reproduction(name, profile),
                                    current_champion(name, recipe.primary_metric)))
    return results


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def with_interval(over_seeds: dict[str, Any] | None) -> str:
    """`94.2 [93.9, 94.5]`: a mean over seeds with its 95 % t interval."""
    if over_seeds is None:
        return "not measured"
    i = over_seeds["interval"]
    return f"{fmt(i['estimate'])} [{fmt(i['low'])}, {fmt(i['high'])}]"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows), ""]


def seeds_text(seeds: list[int]) -> str:
    return f"{len(seeds)} ({', '.join(str(s) for s in seeds)})"


def summary_rows(results: list[PaperResults]) -> list[list[Any]]:
    rows = []
    for r in results:
        arrow = "↑" if r.higher_is_better else "↓"
        rep = r.reproduction
        if rep is None or r.headline is None:
            rows.append([r.paper, f"{r.headline.metric if r.headline else r.primary_metric} {arrow}", "", "",
                         "no reproduction run" if rep is None else "no headline declared", "", ""])
            continue
        h = r.headline
        method = rep["variants"].get(h.method_variant, {}).get(h.metric)
        base = rep["variants"].get(h.baseline_variant, {}).get(h.metric)
        held = sum(1 for c in rep["criteria"] if c["holds"])
        rows.append([r.paper, f"{h.metric} {arrow}", f"{with_interval(method)} ({h.method_variant})",
                     f"{with_interval(base)} ({h.baseline_variant})", judgement_text(rep["headline"]),
                     f"{held} of {len(rep['criteria'])} hold", len(rep["seeds"])])
    return rows


def paper_section(r: PaperResults) -> list[str]:
    lines = [f"## {r.title} (`{r.paper}`)", ""]
    rep = r.reproduction
    if rep is None:
        lines += ["No reproduction run of this profile yet: `paperops reproduce " + r.paper + "` makes one.", ""]
    else:
        data = ", ".join(f"`{k}` {v}" for k, v in sorted(rep["data"].items()) if k.endswith(("md5", "stage")))
        lines += [f"Reproduction run `{rep['run_id']}`, {rep['started']}: profile `{rep['profile']}`, seeds "
                  f"{seeds_text(rep['seeds'])}, config digest `{rep['config_digest']}` (without the seed), git commit "
                  f"`{rep['git_commit'][:12]}`, overrides {', '.join(f'`{o}`' for o in rep['overrides']) or 'none'}.",
                  "", f"Data: {data}.", "",
                  "Pipeline runs: " + ", ".join(f"seed {seed} `{run}`" for seed, run in rep["pipeline_run_ids"].items())
                  + ".", ""]
        if r.headline is not None:
            h = r.headline
            method = rep["variants"].get(h.method_variant, {}).get(h.metric)
            base = rep["variants"].get(h.baseline_variant, {}).get(h.metric)
            paper_value = (f"{h.paper_value:g}: " if h.paper_value is not None else "") + h.paper_note
            lines += table(["", f"{h.metric} ({'higher' if r.higher_is_better else 'lower'} is better)"], [
                ["the paper (its own setting)", paper_value],
                [f"ours: {h.method_variant}, mean [95 % interval] over seeds", with_interval(method)],
                [f"baseline in the same runs: {h.baseline_variant}", with_interval(base)],
                ["verdict (paired per-seed differences)", judgement_text(rep["headline"])]])
        if rep["criteria"]:
            lines += [f"Decisive criteria, fixed in `configs/{r.paper}.yaml` (profile `{rep['profile']}`) before the "
                      "runs, as they came out:", ""]
            lines += table(["criterion", "claim", "method − baseline [95 % interval]", "per seed (method / baseline)",
                            "outcome"],
                           [[c["name"], _claim(c), interval_text(c), _per_seed(c), c["outcome"]]
                            for c in rep["criteria"]])
    if r.paper_figures:
        ours = rep["ours"] if rep is not None else {}
        lines += ["The paper's own figures, beside ours (mean [95 % interval] over the seeds):", ""]
        lines += table(["figure", "the paper", "source", "the paper's setting", "ours"],
                       [[f.metric, f"{f.value:.4g}", f.source, f.note,
                         with_interval(ours.get(f.metric)) if rep is not None else "no reproduction run"]
                        for f in r.paper_figures])
    c = r.champion
    if c is None:
        lines += ["Registry: no `@champion` version.", ""]
    else:
        delta = "" if c.delta is None else f", Δ vs parent {c.delta:+.4g}"
        if c.delta is not None and c.delta_interval is not None:
            delta += f" [{c.delta_interval[0]:+.4g}, {c.delta_interval[1]:+.4g}] ({c.delta_interval[2]})"
        lines += [f"Registry: `{c.model_name}@{c.alias}` is v{c.version} (profile `{c.profile}`): "
                  f"{c.primary_metric} {fmt(c.value)}{delta}, one run.", ""]
    return lines


def _claim(row: dict[str, Any]) -> str:
    claim = f"{row['method']} {'better than' if row['claim'] == 'better' else 'not worse than'} {row['baseline']}"
    margin = f" by more than {row['margin']:g}" if row["claim"] == "not_worse" and row["margin"] else ""
    return f"{claim}{margin} on {row['metric']}"


def _per_seed(row: dict[str, Any]) -> str:
    return ", ".join(f"{fmt(pair[0])} / {fmt(pair[1])}" for pair in row["per_seed"].values())


def results_page(results: list[PaperResults], generated_at: dt.datetime, profile: str) -> str:
    lines = ["# Results", "",
             f"Generated by `paperops report` on {generated_at.strftime('%Y-%m-%d %H:%M UTC')} from the MLflow "
             f"tracking store: the newest reproduction run of each paper's `{profile}` profile and the registry. No "
             "figure on this page is typed by hand; to change it, rerun `paperops reproduce <paper>` and then "
             "`paperops report`.", "",
             "A reproduction runs the profile once per seed (each seed one pipeline run that registers nothing) and "
             "aggregates the runs: a figure is the mean over the seeds with its 95 % Student-t interval (seeds − 1 "
             "degrees of freedom); a comparison is the interval of the paired per-seed differences, and \"beats\" "
             "means that interval excludes zero on the good side. The paper's figures are its own setting, usually a "
             "larger one: context, not targets.", "",
             "## Every paper", ""]
    lines += table(["paper", "metric", "ours (method)", "baseline (same runs)", "verdict", "decisive criteria",
                    "seeds"], summary_rows(results))
    for r in results:
        lines += paper_section(r)
    return "\n".join(lines).rstrip() + "\n"
