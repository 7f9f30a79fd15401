"""The recipe registry: every module in recipes/ that registers a Recipe is a paper, named like its module and its
config file, and a new module dropped into the package is found without touching any other file."""
import sys

import pytest

import recipes
from recipes import available_recipes, config_path, get_recipe


def test_paper_name_is_recipe_module_is_config_file():
    for name, cls in available_recipes().items():
        assert cls.__module__ == f"recipes.{name}"
        assert config_path(name).is_file()


def test_a_new_recipe_module_is_registered_by_being_there(tmp_path, monkeypatch):
    (tmp_path / "toy.py").write_text(
        "from recipes.base import register_recipe\n"
        "from recipes.ppt import PPTRecipe\n"
        "@register_recipe\n"
        "class ToyRecipe(PPTRecipe):\n"
        "    name = 'toy'\n")
    monkeypatch.setattr(recipes, "__path__", [*recipes.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "recipes.toy", raising=False)
    try:
        assert type(get_recipe("toy")).__name__ == "ToyRecipe"
    finally:
        from recipes.base import _RECIPES

        _RECIPES.pop("toy", None)
        sys.modules.pop("recipes.toy", None)


def test_an_unknown_paper_names_the_registered_ones():
    with pytest.raises(KeyError, match="registered papers: cbq, feat"):
        get_recipe("nosuchpaper")


def test_a_recipe_that_leaves_out_a_declaration_is_refused_naming_it():
    from recipes.base import _RECIPES, Recipe, register_recipe

    class Undeclared(Recipe):
        name = "undeclared"
        title = "a recipe without its platform declarations"

    with pytest.raises(TypeError, match="does not declare compression, config_model, primary_metric, cost_metric, "
                                        "summary_columns, smoke_overrides, deployment_description"):
        register_recipe(Undeclared)
    assert "undeclared" not in _RECIPES


def test_weight_bits_come_from_the_declared_knob_and_are_32_without_one():
    cbq, ppt = get_recipe("cbq"), get_recipe("ppt")
    assert cbq.weight_bits({"method": "cbq", "weight": {"bits": 2, "granularity": "per_group"}}) == 2
    assert cbq.weight_bits(None) == 32           # the FP parent
    assert ppt.weight_bits({"method": "ppt", "r": 14}) == 32
