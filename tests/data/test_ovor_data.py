"""OVOR's data: the image suite, with the expect block of configs/ovor.yaml (tiny), accepts the real MNIST-5k
stream and rejects streams the recipe must not train on; the glyph pre-training set is real, deterministic and
disjoint from the digit stream."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


import numpy as np
import pytest

from recipes import load_config
from data import ImageSuiteSpec, load_image_dataset
from data.glyphs import CANDIDATES, glyph_source, render_glyphs
from tasks.validate import validate_image_dataset


@pytest.fixture(scope="module")
def spec() -> ImageSuiteSpec:
    return ImageSuiteSpec.model_validate(load_config("ovor", "tiny").config.data.expect)




def _columns(report) -> set[str | None]:
    return {f.column for f in report.failed}


def test_the_real_stream_passes(spec, mnist_dir):
    report = validate_image_dataset(mnist_dir, spec)
    assert report.success, report.failed


def test_a_label_outside_the_stream_is_rejected(spec, mnist_dir, tmp_path, variant):
    y_train = load_image_dataset(mnist_dir).y_train.copy()
    y_train[:5] = 10  # an 11th class would have no head row and no task
    report = validate_image_dataset(variant(mnist_dir, tmp_path / "label", y_train=y_train), spec)
    assert not report.success and "label" in _columns(report)


def test_a_digit_missing_from_the_test_split_is_rejected(spec, mnist_dir, tmp_path, variant):
    data = load_image_dataset(mnist_dir)
    keep = data.y_test != 9  # task 4 could not be evaluated
    report = validate_image_dataset(
        variant(mnist_dir, tmp_path / "missing", x_test=data.x_test[keep], y_test=data.y_test[keep]), spec)
    assert not report.success
    assert {f.expectation for f in report.failed} >= {"expect_column_distinct_values_to_contain_set"}


def test_wrongly_sized_images_are_rejected(spec, mnist_dir, tmp_path, variant):
    data = load_image_dataset(mnist_dir)
    report = validate_image_dataset(variant(mnist_dir, tmp_path / "size", x_train=data.x_train[:, :27, :27]), spec)
    assert not report.success and {"height", "width"} <= _columns(report)


def test_glyphs_are_deterministic_disjoint_from_digits_and_pass_the_image_checks():
    a, b = render_glyphs(12, 3, size=28, seed=5), render_glyphs(12, 3, size=28, seed=5)
    assert np.array_equal(a.images, b.images) and a.characters == b.characters
    assert not set("0123456789") & set(CANDIDATES)
    assert a.images.dtype == np.uint8 and a.images.shape == (36, 28, 28)
    assert np.bincount(a.labels).tolist() == [3] * 12
    assert all(a.images[a.labels == k].max() > 128 for k in range(12))  # every class draws something
    assert not np.array_equal(a.images[0], a.images[1])  # renders of one class differ (jitter)
    assert glyph_source()["package"] == "matplotlib"
    with pytest.raises(ValueError, match="num_classes"):
        render_glyphs(1000, 1)
