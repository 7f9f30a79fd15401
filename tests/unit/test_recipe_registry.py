"""The recipe registry imports `models.<pkg>.recipe` for each package under models/ and skips packages that have
none (models/apiserve is a serving method, not a training pipeline)."""
import sys

import models
from models.common import recipe


def test_packages_without_a_recipe_module_are_skipped(tmp_path, monkeypatch):
    (tmp_path / "servingonly").mkdir()
    (tmp_path / "servingonly" / "__init__.py").write_text("")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "__init__.py").write_text("")
    (tmp_path / "trained" / "recipe.py").write_text("IMPORTED = True\n")
    monkeypatch.setattr(models, "__path__", [str(tmp_path)])
    for name in ("models.servingonly", "models.trained", "models.trained.recipe"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    recipe._import_recipe_packages()
    assert sys.modules["models.trained.recipe"].IMPORTED
    assert "models.servingonly.recipe" not in sys.modules
    for name in ("models.servingonly", "models.trained", "models.trained.recipe"):
        sys.modules.pop(name, None)


def test_the_apiserve_package_has_no_recipe():
    import importlib.util

    assert importlib.util.find_spec("models.apiserve") is not None
    assert importlib.util.find_spec("models.apiserve.recipe") is None
