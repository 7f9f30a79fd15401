"""OVOR's data: the image suite, with the expect block of configs/ovor.yaml (tiny), accepts the real MNIST-5k
stream and rejects streams the recipe must not train on; the glyph pre-training set is real, deterministic and
disjoint from the digit stream, and its DVC stage (dejavu_letters) holds the jittered renders split train / val / test
per letter, and passes (or fails) the suite pretrain.data declares."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.common.vit import images_to_input
from recipes import get_recipe, load_config
from data import ImageSuiteSpec, load_image_dataset
from data.glyphs import CANDIDATES, build_letters, glyph_source, render_glyphs
from data.images_suite import IMAGE_CLASSIFICATION
from data.views import TestSplitAccessError, step_views
from tasks.validate import validate_dataset


@pytest.fixture(scope="module")
def spec() -> ImageSuiteSpec:
    return ImageSuiteSpec.model_validate(load_config("ovor", "tiny").config.data.expect)


def _columns(report) -> set[str | None]:
    return {f.column for f in report.failed}


def test_the_real_stream_passes(spec, mnist_dir):
    report = validate_dataset(IMAGE_CLASSIFICATION, mnist_dir, spec)
    assert report.success, report.failed


def test_a_label_outside_the_stream_is_rejected(spec, mnist_dir, tmp_path, variant):
    y_train = load_image_dataset(mnist_dir).y_train.copy()
    y_train[:5] = 10  # an 11th class would have no head row and no task
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(mnist_dir, tmp_path / "label", y_train=y_train), spec)
    assert not report.success and "label" in _columns(report)


def test_a_digit_missing_from_the_test_split_is_rejected(spec, mnist_dir, tmp_path, variant):
    data = load_image_dataset(mnist_dir)
    keep = data.y_test != 9  # task 4 could not be evaluated
    bad = variant(mnist_dir, tmp_path / "missing", x_test=data.x_test[keep], y_test=data.y_test[keep])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, spec)
    assert not report.success
    assert {f.expectation for f in report.failed} >= {"expect_column_distinct_values_to_contain_set"}


def test_wrongly_sized_images_are_rejected(spec, mnist_dir, tmp_path, variant):
    data = load_image_dataset(mnist_dir)
    bad = variant(mnist_dir, tmp_path / "size", x_train=data.x_train[:, :27, :27])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, spec)
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


# ------------------------------------------------------------------------------------- pre-training stage

# The letters OVOR's tiny profile pre-trains on (params.yaml, at model.img_size 28).
RECIPE_RENDER = {"classes": 50, "per_class": 120, "val_per_class": 10, "test_per_class": 10, "size": 28, "seed": 0}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def letters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage's output, built with the parameters params.yaml gives it."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["datasets"]["dejavu_letters"]
    assert params == RECIPE_RENDER
    return build_letters(tmp_path_factory.mktemp("data") / "dejavu_letters", params["classes"], params["per_class"],
                         params["val_per_class"], params["test_per_class"], params["size"], params["seed"])


@pytest.fixture(scope="module")
def letters_spec() -> ImageSuiteSpec:
    section = load_config("ovor", "tiny").config.pretrain.data
    assert (section.stage, section.suite) == ("dejavu_letters", "image_classification")
    return ImageSuiteSpec.model_validate(section.expect)


def test_the_stage_splits_every_letters_renders_into_train_val_and_test(letters_dir, mnist_dir):
    p = RECIPE_RENDER
    renders = p["per_class"] + p["val_per_class"] + p["test_per_class"]
    glyphs = render_glyphs(p["classes"], renders, p["size"], p["seed"])
    rank = np.arange(len(glyphs.labels)) % renders
    train, test = rank < p["per_class"], rank >= p["per_class"] + p["val_per_class"]
    val = ~train & ~test
    stored = load_image_dataset(letters_dir)
    assert np.array_equal(stored.x_train, glyphs.images[train]) and stored.x_train.dtype == np.uint8
    assert np.array_equal(stored.y_train, glyphs.labels[train]) and stored.y_train.dtype == np.int64
    assert np.array_equal(stored.x_val, glyphs.images[val]) and np.array_equal(stored.y_val, glyphs.labels[val])
    assert np.array_equal(stored.x_test, glyphs.images[test]) and np.array_equal(stored.y_test, glyphs.labels[test])
    assert stored.meta["counts"] == {"train": 6000, "val": 500, "test": 500}
    assert stored.meta["class_names"] == list(glyphs.characters) and stored.meta["source"] == glyph_source()
    # Pre-training (the train step) reads the train renders and measures on the val renders; test is withheld.
    cfg = load_config("ovor", "tiny").config
    views = step_views({"data": mnist_dir, "pretrain": letters_dir}, "train")
    data = get_recipe("ovor").load_data(views, cfg)
    x, y = images_to_input(glyphs.images, cfg.model.img_size), torch.as_tensor(glyphs.labels)
    assert torch.equal(data.glyph_x_train, x[train]) and torch.equal(data.glyph_y_train, y[train])
    assert torch.equal(data.glyph_x_val, x[val]) and torch.equal(data.glyph_y_val, y[val])
    assert views["pretrain"].reads == [("train", "fit"), ("val", "val")]
    with pytest.raises(TestSplitAccessError, match="split 'test' of dataset 'pretrain' is withheld from the train"):
        len(data.glyphs.x_test)


def test_the_recipe_declares_both_datasets_and_needs_a_backbone_source(mnist_dir):
    recipe = get_recipe("ovor")
    tiny, full = load_config("ovor", "tiny").config, load_config("ovor", "full").config
    assert {k: s.stage for k, s in recipe.datasets(tiny).items()} == {"data": "mnist5k", "pretrain": "dejavu_letters"}
    assert {k: s.stage for k, s in recipe.datasets(full).items()} == {"data": "imagenet_r"}  # checkpoint instead
    with pytest.raises(ValueError, match="model.checkpoint is null and pretrain.data names no glyph dataset"):
        recipe.load_data(step_views({"data": mnist_dir}, "train"), tiny)


def test_the_real_pretraining_set_passes_its_suite(letters_dir, letters_spec):
    report = validate_dataset(IMAGE_CLASSIFICATION, letters_dir, letters_spec)
    assert report.success, report.failed
    assert report.evaluated == 37


def test_a_letter_missing_from_val_and_a_render_in_two_splits_are_rejected(letters_dir, letters_spec, tmp_path,
                                                                           variant):
    data = load_image_dataset(letters_dir)
    keep = data.y_val != 7  # the val renders of one letter are gone: its glyph top-1 could not be measured
    x_val, y_val = data.x_val[keep].copy(), data.y_val[keep].copy()
    x_val[0] = data.x_train[0]  # and a training render is also a val render
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(letters_dir, tmp_path / "bad", x_val=x_val,
                                                            y_val=y_val), letters_spec)
    failed = {(f.expectation, f.column) for f in report.failed}
    assert failed == {("expect_column_distinct_values_to_contain_set", "label"),
                      ("expect_table_row_count_to_be_between", None),
                      ("expect_column_values_to_be_between", "share"),
                      ("expect_column_values_to_be_unique", "image_sha1")}
    assert all(f.details.startswith(("[val]", "[train+val+test]")) for f in report.failed)
