"""The platform reads what a recipe declares: no registered paper's name and none of the metric or variant names
a recipe declares appears in platform code (tasks/, flows/, paperops/, settings/ and prefect.yaml).

How the check stays meaningful with generic names: a name is banned only when a recipe declares it (its name,
primary and cost metric, MACs metric, summary columns, headline metric and variants, paper figures) and it is
not one of the metrics every recipe reports under the same name (recipes.base.COMMON_METRICS: latency,
throughput, size, delta vs parent), which the platform may read. A name matches as a whole identifier (`top1`
matches `top1` and `"top1"`, not `top1_drop` or `top-1`), anywhere in the file, comments and docstrings
included: a paper named in a docstring goes stale as surely as one named in code. Paper names match in any case
(`PPT` in prose is the paper too); metric names match exactly. A future paper whose metric is an English word
("accuracy") bans that word from platform prose as well: rephrase the prose, or read the metric through the
declaration."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from recipes import available_recipes
from recipes.base import COMMON_METRICS, Recipe
from settings import PROJECT_ROOT

PLATFORM_DIRECTORIES = ("tasks", "flows", "paperops", "settings")
PLATFORM_FILES = [*sorted(p for directory in PLATFORM_DIRECTORIES for p in (PROJECT_ROOT / directory).rglob("*.py")),
                  PROJECT_ROOT / "prefect.yaml"]


def declared_names(recipe: type[Recipe]) -> set[str]:
    """The metric and variant names a recipe declares that are its own (not reported by every recipe)."""
    names = {recipe.primary_metric, recipe.cost_metric, recipe.macs_per_item_metric,
             *(metric for metric, _, _ in recipe.summary_columns), *(f.metric for f in recipe.paper_figures)}
    if recipe.headline is not None:
        names |= {recipe.headline.metric, recipe.headline.method_variant, recipe.headline.baseline_variant}
    return names - {None} - set(COMMON_METRICS)


def mentions(text: str, name: str, ignore_case: bool) -> list[int]:
    """Line numbers where `name` occurs as a whole identifier."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", re.IGNORECASE if ignore_case else 0)
    return [number for number, line in enumerate(text.splitlines(), 1) if pattern.search(line)]


def test_the_matcher_finds_whole_names_only():
    text = 'top1 = metrics["top1"]\nx = "paperops-ppt"  # PPT\nrows = top1_drop + topology + "top-1"\ndefeat\n'
    assert mentions(text, "top1", ignore_case=False) == [1]
    assert mentions(text, "ppt", ignore_case=True) == [2]
    assert mentions(text, "feat", ignore_case=True) == []


def test_the_scan_covers_the_platform_and_bans_every_papers_own_names():
    scanned = {str(path.relative_to(PROJECT_ROOT)) for path in PLATFORM_FILES}
    assert {"paperops/cli.py", "tasks/register.py", "tasks/pareto.py", "tasks/promote.py", "flows/pipeline.py",
            "settings/config.py", "prefect.yaml"} <= scanned
    for name, recipe in available_recipes().items():
        assert recipe.primary_metric in declared_names(recipe), f"{name}'s primary metric is exempt from the ban"
        assert {c[0] for c in recipe.summary_columns} - set(COMMON_METRICS) <= declared_names(recipe)


@pytest.mark.parametrize("paper", sorted(available_recipes()))
def test_platform_code_names_neither_the_paper_nor_its_declared_metrics(paper):
    recipe = available_recipes()[paper]
    found = []
    for path in PLATFORM_FILES:
        text = path.read_text()
        where = str(path.relative_to(PROJECT_ROOT))
        found += [f"{where}:{line}: paper name {paper!r}" for line in mentions(text, paper, ignore_case=True)]
        for name in sorted(declared_names(recipe)):
            found += [f"{where}:{line}: {paper}'s {name!r}" for line in mentions(text, name, ignore_case=False)]
    assert not found, "platform code must read these through the recipe's declarations:\n" + "\n".join(found)
