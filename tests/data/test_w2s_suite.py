"""The w2s tiny profile's data contract: the image suite, with the expectations configs/w2s.yaml declares,
accepts the real MNIST-5k stage and rejects bad data before any teacher or student is trained."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from pathlib import Path

import numpy as np
import pytest

from models.w2s.model import w2s_split
from recipes import load_config
from data import ImageSuiteSpec, load_image_dataset
from data.images_suite import IMAGE_CLASSIFICATION
from tasks.validate import validate_dataset

SPEC = ImageSuiteSpec(**load_config("w2s", "tiny").config.data.expect)




def test_real_mnist5k_passes_and_every_class_reaches_both_training_splits(mnist_dir: Path) -> None:
    report = validate_dataset(IMAGE_CLASSIFICATION, mnist_dir, SPEC)
    assert report.success, report.failed
    dataset = load_image_dataset(mnist_dir)
    cfg = load_config("w2s", "tiny").config
    splits = w2s_split(dataset.y_train, cfg.split.weak_fraction, cfg.split.seed)
    for part in (splits.weak, splits.w2s):
        assert set(np.unique(dataset.y_train[part])) == set(SPEC.classes)


def test_a_test_image_leaked_into_w2s_train_is_rejected(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    cfg = load_config("w2s", "tiny").config
    w2s_index = w2s_split(dataset.y_train, cfg.split.weak_fraction, cfg.split.seed).w2s[7]
    x_train, y_train = dataset.x_train.copy(), dataset.y_train.copy()
    x_train[w2s_index], y_train[w2s_index] = dataset.x_test[3], dataset.y_test[3]
    bad = variant(mnist_dir, tmp_path / "leak", x_train=x_train, y_train=y_train)
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, SPEC)
    assert not report.success
    assert {(f.expectation, f.column) for f in report.failed} == {("expect_column_values_to_be_unique", "image_sha1")}


@pytest.mark.parametrize("bad", ["label", "shape", "nan"])
def test_bad_labels_shapes_and_pixels_are_rejected(mnist_dir: Path, tmp_path: Path, bad: str, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    if bad == "label":
        y_train = dataset.y_train.copy()
        y_train[0] = 10  # an eleventh class in a 10-class problem
        arrays = {"y_train": y_train}
        column = "label"
    elif bad == "shape":
        arrays = {"x_train": dataset.x_train[:, :, :27]}
        column = "width"
    else:
        x_train = dataset.x_train.astype(np.float32)
        x_train[5, 10, 10] = np.nan
        arrays = {"x_train": x_train}
        column = "nonfinite_pixel_count"
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(mnist_dir, tmp_path / bad, **arrays), SPEC)
    assert not report.success
    assert column in {f.column for f in report.failed}
