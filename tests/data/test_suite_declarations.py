"""Suites are declared in data/ as plain data (GX's serialized form), without importing Great Expectations or any
orchestration package; tasks/validate.py is the one runner and turns every declaration into a GX expectation."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pandas as pd
import pytest
from pydantic import BaseModel

from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between
from data.suites import SUITES

REPO_ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION = ("great_expectations", "prefect", "mlflow", "dvc")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names


def test_no_data_module_imports_great_expectations_or_orchestration():
    modules = sorted((REPO_ROOT / "data").glob("*.py"))
    assert {"expectations.py", "suites.py", "images_suite.py", "text_suite.py", "fewshot_suite.py",
            "dense_suite.py", "ultrasound_suite.py"} <= {
        m.name for m in modules}
    offending = {m.name: sorted(n for n in _imported_modules(m) if n.split(".")[0] in ORCHESTRATION)
                 for m in modules}
    assert {name: found for name, found in offending.items() if found} == {}
    # Nor indirectly: importing every data module (the suites included) loads none of them.
    code = ("import sys, importlib; from pathlib import Path\n"
            f"for m in sorted(Path({str(REPO_ROOT / 'data')!r}).glob('*.py')):\n"
            "    importlib.import_module('data' if m.stem == '__init__' else 'data.' + m.stem)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {ORCHESTRATION!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                          env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
    assert done.stdout.strip() == "[]"


def test_the_registry_keeps_the_suite_names_recorded_on_versions():
    assert list(SUITES) == ["image_classification", "text_corpus", "few_shot_classes", "dense_multitask",
                            "us_device_segmentation"]
    assert all(suite.name == name for name, suite in SUITES.items())
    assert {suite.spec.__name__ for suite in SUITES.values()} == {"ImageSuiteSpec", "TextSuiteSpec",
                                                                  "FewShotSuiteSpec", "DenseSuiteSpec",
                                                                  "UltrasoundSuiteSpec"}


def test_declarations_are_checked_when_made():
    with pytest.raises(ValueError, match="expect_"):
        Expectation("column_values_between", {"column": "x"}, "not a GX type")
    frame = pd.DataFrame({"x": [1]})
    with pytest.raises(ValueError, match=r"undeclared part\(s\) \['other'\]"):
        DeclaredSuite((SuitePart("rows", ()),), (Batch("other", "train", frame),))
    with pytest.raises(ValueError, match="distinct names"):
        DeclaredSuite((SuitePart("rows", ()), SuitePart("rows", ())), ())
    assert between("x", 0, None, description="d").kwargs == {"column": "x", "min_value": 0}


class _Spec(BaseModel):
    low: int


def _suite(*expectations: Expectation) -> DataSuite:
    def declare(path: Path, spec: _Spec) -> DeclaredSuite:
        frame = pd.DataFrame({"x": [spec.low, spec.low + 1, spec.low + 5], "name": ["a", "b", "c"]})
        return DeclaredSuite((SuitePart("rows", expectations, unexpected_index_column_names=("name",)),),
                             (Batch("rows", "all", frame),))
    return DataSuite("toy", _Spec, declare, {"all": "fit"}, lambda reference, md5, current, spec: [])


def test_the_runner_builds_any_declared_expectation_and_names_failing_rows(tmp_path: Path):
    from tasks.validate import validate_dataset

    suite = _suite(between("x", 0, 3, description="x within [0, 3]"),
                   Expectation("expect_table_row_count_to_equal", {"value": 3}, "three rows"))
    report = validate_dataset(suite, tmp_path, _Spec(low=1))
    assert (report.evaluated, report.successful) == (2, 1)
    [failure] = report.failed
    assert failure.expectation == "expect_column_values_to_be_between" and failure.column == "x"
    assert failure.details == "[all] expected x within [0, 3]; 1 of 3 rows unexpected: [x=6, name=c]"
    assert report.result["validations"][0]["suite"] == "toy.rows"
    assert report.result["spec"] == {"low": 1}


def test_an_expectation_gx_does_not_know_is_a_clear_error(tmp_path: Path):
    from tasks.validate import validate_dataset

    with pytest.raises(ValueError, match="suite 'toy.rows' declares an invalid expectation "
                                         "expect_column_values_to_be_purple"):
        validate_dataset(_suite(Expectation("expect_column_values_to_be_purple", {"column": "x"}, "purple")),
                         tmp_path, _Spec(low=0))
    with pytest.raises(ValueError, match="invalid expectation expect_column_values_to_be_between"):
        validate_dataset(_suite(Expectation("expect_column_values_to_be_between", {"colum": "x", "min_value": 0},
                                            "typo in a kwarg")), tmp_path, _Spec(low=0))


def test_a_spec_of_another_suite_is_refused(tmp_path: Path):
    from data.suites import suite_spec
    from tasks.validate import validate_dataset

    with pytest.raises(TypeError, match="takes a _Spec"):
        validate_dataset(_suite(), tmp_path, SUITES["text_corpus"].spec())
    with pytest.raises(ValueError, match="data.suite 'tabular' is unknown; suites: image_classification"):
        suite_spec("tabular", {})
    with pytest.raises(ValueError, match="data.expect does not fit suite 'image_classification'"):
        suite_spec("image_classification", {"height": 28})


def test_every_family_declares_a_role_for_each_of_its_splits():
    from data.views import ROLES

    assert {name: suite.split_roles for name, suite in SUITES.items()} == {
        "image_classification": {"train": "fit", "val": "val", "test": "test"},
        "text_corpus": {"train": "fit", "calib": "fit", "val": "val", "eval_shakespeare": "test",
                        "eval_milton": "test"},
        "few_shot_classes": {"base": "fit", "val": "val", "novel": "test"},
        "dense_multitask": {"train": "fit", "val": "val", "test": "test", "ood": "test"},
        "us_device_segmentation": {"train": "fit", "val": "val", "test_convex": "test", "test_phased": "test",
                                   "test_linear_smooth": "test"}}
    assert all(set(suite.split_roles.values()) == set(ROLES) for suite in SUITES.values())
