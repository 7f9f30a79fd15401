"""The reference of drift: the profile of the last validated version of a dataset, kept under PAPEROPS_HOME by the
validate task, compared with the next version, replaced only by a version that passes (an accepted change
included); and the drift statistics themselves on small inputs."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data import load_image_dataset
from data.drift import ClassDriftBounds, TextDriftBounds, class_drift, class_profile, dense_class_profile, \
    grid_mean_image, text_drift, text_profile
from data.images import ARRAY_KEYS, ImageSuiteSpec
from data.text import TextSuiteSpec
from recipes.base import DataSection
from tasks.data import DatasetRef
from tasks.validate import DataReferenceError, load_reference, reference_file, validate_data

EXPECT = {"height": 28, "width": 28, "classes": list(range(10)), "min_images_per_split": 400}
SECTION = DataSection(stage="mnist5k", suite="image_classification", expect=EXPECT)


def test_grid_mean_image_averages_blocks_and_sees_a_turn() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    image[0, :, 0] = 8  # a vertical bar on the left
    assert grid_mean_image(image, cells=2) == [4.0, 0.0, 4.0, 0.0]
    assert grid_mean_image(np.rot90(image, axes=(1, 2)), cells=2) == [0.0, 0.0, 4.0, 4.0]  # now a bar at the bottom


def test_class_drift_scores_each_statistic_per_split_and_class() -> None:
    images = np.zeros((4, 2, 2), dtype=np.uint8)
    images[:, 0, 0] = 100  # every image: one bright pixel, top left
    labels = np.array([0, 0, 1, 1])
    reference = class_profile({"train": (images, labels)})
    turned = images.copy()
    turned[2:] = np.rot90(images[2:], axes=(1, 2))  # class 1 turned: its bright pixel is now bottom left
    spec = ImageSuiteSpec(height=2, width=2, classes=[0, 1], value_range=(0, 200))
    parts = dict((part.name, batch.frame) for part, batch in
                 class_drift(reference, "m" * 32, class_profile({"train": (turned, labels)}), spec))
    assert parts["drift_mean_image"].to_dict(orient="records") == [
        {"split": "train", "label": 0, "shift": 0.0},
        # mean image [100, 0, 0, 0] -> [0, 0, 100, 0]: RMS sqrt(2 * 100^2 / 4) = 70.71, over the range 200.
        {"split": "train", "label": 1, "shift": pytest.approx(0.35355, abs=1e-5)}]
    assert parts["drift_pixel_mean"]["shift"].tolist() == [0.0, 0.0]  # a turn keeps every pixel value

    vanished = class_profile({"train": (images[:2], labels[:2])})  # class 1 gone: class 0 holds the whole split
    shares = dict((p.name, b.frame) for p, b in class_drift(reference, "m" * 32, vanished, spec))["drift_share"]
    # share 0.5 -> 1.0 and 0.5 -> 0, in units of the uniform share 1/2.
    assert shares.to_dict(orient="records") == [{"split": "train", "label": 0, "shift": 1.0},
                                                {"split": "train", "label": 1, "shift": 1.0}]


def test_the_dense_profile_describes_each_label_maps_class_by_its_pixels() -> None:
    images = np.full((1, 2, 2, 3), 40, dtype=np.uint8)
    images[0, 0, 0] = 10  # the one pixel of class 0, top left
    labels = np.array([[[0, 1], [1, 1]]])
    profile = dense_class_profile({"train": (images, labels)})
    assert profile == {"kind": "classes", "rows": [
        {"split": "train", "label": 0, "share": 0.25, "pixel_mean": 10.0, "pixel_std": 0.0,
         "mean_image": [10.0, 0.0, 0.0, 0.0]},
        {"split": "train", "label": 1, "share": 0.75, "pixel_mean": 40.0, "pixel_std": 0.0,
         "mean_image": [0.0, 40.0, 40.0, 40.0]}]}
    brighter = images.copy()
    brighter[labels == 1] = 91  # class 1 brightened by 51 = 0.2 of the value range
    spec = ImageSuiteSpec(height=2, width=2, classes=[0, 1], channels=3)
    frames = {part.name: batch.frame for part, batch in
              class_drift(profile, "m" * 32, dense_class_profile({"train": (brighter, labels)}), spec)}
    assert frames["drift_pixel_mean"]["shift"].tolist() == [0.0, pytest.approx(0.2)]
    assert frames["drift_share"]["shift"].tolist() == [0.0, 0.0]
    assert dense_class_profile({"train": (images, labels[:, :1])}) == {"kind": "classes", "rows": []}  # misshapen


def test_text_drift_measures_characters_line_lengths_and_empty_lines() -> None:
    reference = text_profile({"val": "ab\nab\n"})  # lines "ab", "ab": none empty, mean length 2
    current = text_profile({"val": "abab\n\n\n"})  # "abab", "", "": 2/3 empty, mean length 4
    frames = {part.name: batch.frame for part, batch in
              text_drift(reference, "m" * 32, current, TextSuiteSpec(splits=["train", "val"]))}
    # a, b, newline: 1/3 each -> 2/7, 2/7, 3/7; half the sum of the differences is 2/21.
    assert frames["drift_char_distribution"]["shift"].tolist() == [pytest.approx(2 / 21)]
    assert frames["drift_line_length"]["shift"].tolist() == [1.0]
    assert frames["drift_empty_lines"]["shift"].tolist() == [pytest.approx(2 / 3)]


def test_bounds_are_checked_where_they_are_configured() -> None:
    with pytest.raises(ValueError, match="mean_image"):
        ImageSuiteSpec(height=2, width=2, classes=[0], drift={"mean_image": 0})
    with pytest.raises(ValueError, match="line_lenght"):
        TextSuiteSpec(drift={"line_lenght": 0.1})
    assert ImageSuiteSpec(height=2, width=2, classes=[0]).drift == ClassDriftBounds()
    assert TextSuiteSpec().drift == TextDriftBounds()


def _copy(source: Path, target: Path, rotate: int | None = None) -> Path:
    """A copy of `source` with the images of class `rotate` turned by 90 degrees in every split."""
    dataset = load_image_dataset(source)
    target.mkdir()
    shutil.copy(source / "meta.json", target / "meta.json")
    arrays = {key: getattr(dataset, key).copy() for key in ARRAY_KEYS}
    if rotate is not None:
        for split in ("train", "val", "test"):
            members = arrays[f"y_{split}"] == rotate
            arrays[f"x_{split}"][members] = np.rot90(arrays[f"x_{split}"][members], axes=(1, 2))
    np.savez(target / "images.npz", **arrays)
    return target


def test_the_reference_is_recorded_on_a_pass_and_replaced_only_by_a_pass(mnist_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPEROPS_HOME", str(tmp_path / "home"))
    clean = DatasetRef("mnist5k", "mnist5k", str(mnist_dir), "a" * 32 + ".dir")
    rotated = DatasetRef("mnist5k", "mnist5k", str(_copy(mnist_dir, tmp_path / "rotated", rotate=3)), "b" * 32 + ".dir")
    stored = reference_file("mnist5k", "image_classification")
    assert stored == tmp_path / "home" / "data-references" / "image_classification" / "mnist5k.json"

    first = validate_data.fn(clean, SECTION, pipeline_run_id="run-1")
    assert first.success and first.result["drift"]["reference"] is None
    assert "first validated version" in first.result["drift"]["note"]
    assert load_reference("mnist5k", "image_classification").md5 == clean.md5

    refused = validate_data.fn(rotated, SECTION, pipeline_run_id="run-2")
    assert not refused.success and refused.drift_exceeded == refused.failed
    assert "split=train, label=3" in refused.failed[0].details and f"md5 {clean.md5}" in refused.failed[0].details
    assert json.loads(stored.read_text())["md5"] == clean.md5  # a failed version never becomes the reference

    accepted = validate_data.fn(rotated, SECTION, accept_data_change=True, pipeline_run_id="run-3")
    assert accepted.success and accepted.data_change_accepted
    assert json.loads(stored.read_text())["pipeline_run_id"] == "run-3"
    assert load_reference("mnist5k", "image_classification").md5 == rotated.md5
    again = validate_data.fn(rotated, SECTION)  # the accepted version is the new reference: no drift left
    assert again.success and again.drift_exceeded == [] and not again.data_change_accepted


def test_an_unreadable_reference_stops_validation_naming_the_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPEROPS_HOME", str(tmp_path))
    stored = reference_file("mnist5k", "image_classification")
    stored.parent.mkdir(parents=True)
    stored.write_text("{not json")
    with pytest.raises(DataReferenceError, match=f"dataset 'mnist5k' \\({stored}\\) cannot be read"):
        load_reference("mnist5k", "image_classification")
