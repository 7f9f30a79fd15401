"""Adding a paper takes one recipe file and one config file, checked by doing it with the two files
docs/adding-a-paper.md shows.

A copy of the project as git has it gets exactly those two files, recipes/<paper>.py and configs/<paper>.yaml, as
the page prints them. This process then runs the copy the way a fresh interpreter started in it would
(PAPEROPS_ROOT is the copy, the `recipes` package reads its modules from the copy's recipes/), and the new paper
goes through the real paper_pipeline at the smoke size it declares: its DVC stage is built and validated by GX,
it trains in seconds, registers, passes the gate, and shows in `paperops list` and among the deployments
`paperops deploy` would register. No other file of the project was touched."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from guide_paper import FILES, PAPER, copy_project_with_the_guides_paper, git, running_in


def test_the_guide_shows_exactly_one_recipe_file_and_its_config_file():
    assert sorted(FILES) == [f"configs/{PAPER}.yaml", f"recipes/{PAPER}.py"], sorted(FILES)


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    return copy_project_with_the_guides_paper(tmp_path_factory.mktemp("new-paper") / "project")


@pytest.fixture(scope="module")
def in_the_copy(project_copy: Path) -> Iterator[Path]:
    with running_in(project_copy) as copy:
        yield copy


@pytest.fixture(scope="module")
def new_paper_run(in_the_copy: Path, prefect_api) -> dict[str, Any]:
    from flows.pipeline import paper_pipeline
    from recipes import get_recipe

    return paper_pipeline(PAPER, "tiny", list(get_recipe(PAPER).smoke_overrides))


def test_the_new_paper_runs_through_the_pipeline_and_is_registered_and_promoted(new_paper_run, in_the_copy):
    from recipes import get_recipe, load_config
    from tasks.record import VersionRecord
    from tasks.tracking import configure_tracking

    recipe = get_recipe(PAPER)
    assert type(recipe).__module__ == f"recipes.{PAPER}" and recipe.title
    steps = new_paper_run["steps"]
    assert steps["prepare-data"] == steps["validate"] == steps["train"] == steps["register"] == "Completed"
    assert steps["compress"] == ("Completed" if recipe.compression else "Skipped (not applicable)")
    version = configure_tracking().get_model_version(f"paperops-{PAPER}", new_paper_run["versions"]["parent_version"])
    record = VersionRecord.model_validate(mlflow.artifacts.load_dict(version.tags["record.artifact"]))
    stage = load_config(PAPER, "tiny").config.data.stage
    assert (record.paper, record.dataset_stage, record.gx_success) == (PAPER, stage, True)
    assert record.git_commit == git(in_the_copy, "rev-parse", "HEAD").strip()  # the copy's code made it
    assert new_paper_run["promotion"]["promoted"], new_paper_run["promotion"]["reasons"]
    # The guide's decisive criterion was judged from the per-item scores (whichever way it came out), not skipped.
    [criterion] = new_paper_run["decisive"]
    assert criterion["outcome"] in ("holds", "does not hold") and criterion["interval"]["n"] > 100


def test_the_new_paper_shows_in_paperops_list_and_gets_a_deployment(new_paper_run, monkeypatch):
    from paperops.cli import app
    from recipes import get_recipe

    recipe = get_recipe(PAPER)
    listed = CliRunner().invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if f" {PAPER} " in line)
    assert recipe.primary_metric in row and "tiny" in row
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    printed = CliRunner().invoke(app, ["deploy", "--print"])
    assert printed.exit_code == 0, printed.output
    deployment = next(d for d in yaml.safe_load(printed.output)["deployments"] if d["name"] == PAPER)
    assert deployment["parameters"]["paper"] == PAPER and deployment["work_pool"] == {"name": "gpu"}
    assert deployment["description"] == recipe.deployment_description
