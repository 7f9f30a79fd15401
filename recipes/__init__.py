"""The recipe registry: every module in recipes/ that registers a Recipe is a paper the platform runs. Paper name =
recipe module = config file (configs/<paper>.yaml), so the platform finds a paper's config by its name."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Sequence

from data.suites import suite_spec
from data.views import DatasetViews, step_views
from recipes.base import MAIN_DATASET, Recipe, RecipeConfig, registered_recipes
from settings import project_root
from settings.config import ConfigError, ResolvedConfig, read_profile, validate

# Modules of this package that hold shared schema and helpers, not a paper.
_NOT_PAPERS = frozenset({"base", "ppt_section", "quant_section"})


def available_recipes() -> dict[str, type[Recipe]]:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_PAPERS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return registered_recipes()


def get_recipe(name: str) -> Recipe:
    recipes = available_recipes()
    if name not in recipes:
        raise KeyError(f"unknown paper {name!r}; registered papers: {', '.join(recipes) or 'none'}")
    return recipes[name]()


def config_path(paper: str, config_dir: Path | None = None) -> Path:
    return (config_dir or project_root() / "configs") / f"{paper}.yaml"


def load_config(paper: str, profile: str = "tiny", overrides: Sequence[str] = (),
                config_dir: Path | None = None) -> ResolvedConfig:
    """configs/<paper>.yaml's `profile` block with the overrides applied, validated by the paper's recipe schema."""
    recipe = get_recipe(paper)
    path = config_path(paper, config_dir)
    if not path.is_file():
        raise ConfigError(f"no config for paper {paper!r}: {path} does not exist")
    data = read_profile(path, profile, overrides)
    config = validate(recipe.config_model, data, f"{path} profile {profile!r}")
    return ResolvedConfig(paper=paper, profile=profile, source=str(path), config=config)


def check_config(resolved: ResolvedConfig) -> None:
    """What the schema cannot check alone, before any data is prepared or model trained: each dataset's `expect`
    fits its suite, and the recipe's model-dependent knobs fit the model the config builds (Recipe.check_config).
    A ConfigError names the file, the profile, the key and the bound."""
    recipe = get_recipe(resolved.paper)
    where = f"{resolved.source} profile {resolved.profile!r}"
    for key, section in recipe.datasets(resolved.config).items():
        try:
            suite_spec(section.suite, section.expect)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {'' if key == MAIN_DATASET else f'dataset {key!r}: '}{exc}") from exc
    try:
        recipe.check_config(resolved.config)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def built_dataset_views(recipe: Recipe, config: RecipeConfig, step: str) -> DatasetViews:
    """The recipe's datasets as their DVC stages left them in the working tree, by Recipe.datasets name, as pipeline
    step `step` may read them (what `load_data` takes), for scripts that run a recipe without the pipeline
    (benchmarks/); the pipeline itself prepares and validates them."""
    paths = {}
    for key, section in recipe.datasets(config).items():
        path = project_root() / "data" / section.stage
        if not path.is_dir():
            raise ConfigError(f"{path} is not built: run `make data` (or `dvc repro {section.stage}`) first")
        paths[key] = path
    return step_views(paths, step)
