"""The few_shot_classes GX suite accepts the real glyph dataset and rejects each kind of bad few-shot data."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.fewshot import FEWSHOT_FILE, SPLITS, FewShotSuiteSpec, build_glyphs, load_fewshot_dataset
from data.fewshot_suite import FEW_SHOT_CLASSES
from data.suites import SUITES
from tasks.validate import validate_dataset

SPEC = FewShotSuiteSpec(height=32, width=32, classes_per_split={"base": 6, "val": 3, "novel": 4},
                        min_images_per_class=8)
BETWEEN, UNIQUE = "expect_column_values_to_be_between", "expect_column_values_to_be_unique"


@pytest.fixture(scope="module")
def glyph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_glyphs(tmp_path_factory.mktemp("data") / "glyphs", {"base": 6, "val": 3, "novel": 4},
                        images_per_class=8, seed=0)


def _variant(source: Path, target: Path, **arrays: np.ndarray) -> Path:
    data = load_fewshot_dataset(source)
    target.mkdir()
    shutil.copy(source / "meta.json", target / "meta.json")
    stored = {f"{p}_{s}": (data.x if p == "x" else data.y)[s] for s in SPLITS for p in ("x", "y")} | arrays
    np.savez(target / FEWSHOT_FILE, **stored)
    return target


def _failed(report) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in report.failed}


def test_the_suite_is_registered_for_configs():
    assert SUITES["few_shot_classes"] is FEW_SHOT_CLASSES and FEW_SHOT_CLASSES.spec is FewShotSuiteSpec


def test_real_glyph_dataset_passes_every_expectation(glyph_dir: Path) -> None:
    report = validate_dataset(FEW_SHOT_CLASSES, glyph_dir, SPEC)
    assert report.success, report.failed
    # 10 per-image expectations x 3 splits + 2 per class table x 3 splits + class disjointness + leakage
    assert (report.evaluated, report.successful) == (38, 38)
    json.dumps(report.result)


def test_a_class_in_two_splits_is_rejected(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    y_novel = data.y["novel"].copy()
    y_novel[y_novel == y_novel[0]] = data.y["base"][0]  # a base class reappears among the novel classes
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "overlap", y_novel=y_novel), SPEC)
    assert not report.success
    assert (UNIQUE, "label") in _failed(report)
    disjoint = next(f for f in report.failed if f.column == "label")
    assert str(int(data.y["base"][0])) in disjoint.details


def test_a_leaked_image_is_rejected(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    x_val = data.x["val"].copy()
    x_val[0] = data.x["novel"][3]
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "leak", x_val=x_val), SPEC)
    assert _failed(report) == {(UNIQUE, "image_sha1")}


def test_blank_images_and_too_few_images_per_class_are_rejected(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    x_base = data.x["base"].copy()
    x_base[:2] = 0  # two blank renders (a missing glyph draws nothing)
    keep = np.ones(len(data.y["novel"]), dtype=bool)
    keep[:3] = False  # the first novel class loses 3 of its 8 images
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "bad", x_base=x_base,
                                               x_novel=data.x["novel"][keep], y_novel=data.y["novel"][keep]), SPEC)
    assert _failed(report) == {(BETWEEN, "ink_fraction"), (BETWEEN, "count")}
    details = " ".join(f.details for f in report.failed)
    assert "[base]" in details and "[novel]" in details


def test_a_faint_glyph_is_ink_but_an_inverted_render_is_not(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    x_base = data.x["base"].copy()
    x_base[:2] = x_base[:2] // 2  # thin eroded strokes: every pixel below mid-grey, the glyph still legible
    assert (x_base[:2] <= 127).all()
    faint = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "faint", x_base=x_base), SPEC)
    assert faint.success, faint.failed
    x_val = data.x["val"].copy()
    x_val[0] = 255 - x_val[0]  # black on white
    inverted = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "inverted", x_val=x_val), SPEC)
    assert _failed(inverted) == {(BETWEEN, "ink_fraction")}
    assert "[val]" in inverted.failed[0].details


def test_wrong_class_count_nan_pixels_and_size_are_rejected(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    x_val = data.x["val"].astype(np.float32)
    x_val[1, 2, 3] = np.nan
    keep = data.y["base"] != data.y["base"][0]  # one base class dropped: 5 classes where 6 are declared
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "bad2", x_val=x_val,
                                               x_base=data.x["base"][keep][:, :31], y_base=data.y["base"][keep]),
                                      SPEC)
    failed = _failed(report)
    assert ("expect_table_row_count_to_equal", None) in failed
    assert (BETWEEN, "nonfinite_pixel_count") in failed and (BETWEEN, "height") in failed
    assert ("expect_column_values_to_be_in_set", "dtype") in failed


def test_an_empty_val_split_is_rejected(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "noval", x_val=data.x["val"][:0],
                                                         y_val=data.y["val"][:0]), SPEC)
    assert _failed(report) == {("expect_table_row_count_to_be_between", None),
                               ("expect_table_row_count_to_equal", None)}
    assert all(f.details.startswith("[val]") for f in report.failed)


def test_a_val_image_that_is_a_base_image_is_a_leak(glyph_dir: Path, tmp_path: Path) -> None:
    data = load_fewshot_dataset(glyph_dir)
    x_val = data.x["val"].copy()
    x_val[2] = data.x["base"][5]
    report = validate_dataset(FEW_SHOT_CLASSES, _variant(glyph_dir, tmp_path / "leak", x_val=x_val), SPEC)
    assert _failed(report) == {(UNIQUE, "image_sha1")}
    assert report.failed[0].details.startswith("[base+val+novel]")


def test_an_empty_archive_fails_validation_naming_it(glyph_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(glyph_dir, tmp_path / "empty")
    (copy / FEWSHOT_FILE).write_bytes(b"")
    report = validate_dataset(FEW_SHOT_CLASSES, copy, SPEC)
    assert _failed(report) == {("dataset_files_readable", None)}
    assert f"{copy / FEWSHOT_FILE} is not a readable .npz archive" in report.failed[0].details
