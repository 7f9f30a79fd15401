"""USDevices (data/ultrasound.py): the generator is deterministic for a seed, its masks agree with the scene geometry
(through the fan warp too), the devices differ from the source as the severity says, the loader withholds the
unseen-device splits outside evaluate, the built data passes its suite and the suite stops bad data, and MI-SegNet's
paired transforms keep appearance and anatomy apart (a style transform never moves the mask; a spatial one moves
image and mask together)."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data.ultrasound import (
    DEFAULT_DEVICES, DEVICES, FIELDS, SOURCE_DEVICE, SPLIT_DEVICES, SPLITS, ULTRASOUND_FILE, Anatomy, DeviceParams,
    SpatialDraw, StyleDraw, UltrasoundParams, UltrasoundSuiteSpec, apply_spatial, apply_style, augment,
    build_ultrasound, contact_sheet, crop_anchor, device_at, device_sheet, draw_anatomy, draw_scene, echogenicity,
    fan_map, load_ultrasound_dataset, lumen_mask, main, paired_views, render, same_anchor, scan_convert, scene_rng,
    style_difference,
)
from data.ultrasound_suite import US_DEVICE_SEGMENTATION
from data.views import FIT, VAL, TestSplitAccessError, step_views
from tasks.validate import DataReference, ValidationReport, validate_dataset

COUNTS = {"train": 10, "val": 6, "test_convex": 6, "test_phased": 6, "test_linear_smooth": 6}
PARAMS = UltrasoundParams()
SPEC = UltrasoundSuiteSpec(height=64, width=64, min_images_per_split=6)


@pytest.fixture(scope="module")
def us_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ultrasound(tmp_path_factory.mktemp("data") / "us_devices", COUNTS, PARAMS, seed=0)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_scenes(us_dir: Path, tmp_path: Path) -> None:
    again = build_ultrasound(tmp_path / "again", COUNTS, PARAMS, seed=0)
    for name in (ULTRASOUND_FILE, "meta.json"):
        assert (again / name).read_bytes() == (us_dir / name).read_bytes()
    other = load_ultrasound_dataset(build_ultrasound(tmp_path / "other", COUNTS, PARAMS, seed=1))
    assert not np.array_equal(other.split("train").image, load_ultrasound_dataset(us_dir).split("train").image)


def test_a_scene_depends_only_on_seed_split_and_index(us_dir: Path) -> None:
    stored = load_ultrasound_dataset(us_dir).split("test_phased")
    image, mask, anatomy = draw_scene(0, "test_phased", 4, PARAMS)
    assert np.array_equal(image, stored.image[4]) and np.array_equal(mask, stored.mask[4])
    assert np.array_equal(anatomy.vector(), stored.anatomy[4])


def test_splits_hold_their_declared_device_and_documented_arrays(us_dir: Path) -> None:
    dataset = load_ultrasound_dataset(us_dir)
    for split in SPLITS:
        data = dataset.split(split)
        assert data.image.shape == (COUNTS[split], 64, 64) and data.image.dtype == np.uint8
        assert data.mask.shape == data.image.shape and set(np.unique(data.mask)) == {0, 1}
        assert np.all(data.device == DEVICES.index(SPLIT_DEVICES[split]))
        assert all(data.mask[i].any() for i in range(len(data)))
    meta = dataset.meta
    assert meta["split_devices"]["train"] == meta["split_devices"]["val"] == SOURCE_DEVICE
    assert {meta["split_devices"][f"test_{d}"] for d in DEVICES[1:]} == set(DEVICES[1:])
    assert meta["rendered_device_params"]["phased"]["sector_deg"] == 80.0 and meta["counts"] == COUNTS


def test_masks_are_the_lumen_geometry_through_each_devices_map(us_dir: Path) -> None:
    dataset = load_ultrasound_dataset(us_dir)
    for split in SPLITS:
        data, device = dataset.split(split), PARAMS.rendered_device(SPLIT_DEVICES[split])
        for index in range(len(data)):
            anatomy = Anatomy.from_vector(data.anatomy[index])
            beam = lumen_mask(anatomy, 64, PARAMS.depth_mm).astype(np.uint8)
            expected = scan_convert(beam, fan_map(64, device.sector_deg), 0) if device.sector_deg else beam
            assert np.array_equal(data.mask[index], expected), (split, index)
    # Independently of the generator's code: on the linear grid (0.47 mm pixels) the pixel holding the lumen centre
    # is labelled, a pixel 1.6 semi-axes away along depth is not, and neither is the vein's centre.
    pitch = PARAMS.depth_mm / 64
    for index in range(30):
        _, mask, anatomy = draw_scene(0, "train", index, PARAMS)
        row, col = int(anatomy.lumen_z / pitch), int(anatomy.lumen_x / pitch)
        assert mask[row, col] == 1
        far = int((anatomy.lumen_z + 1.6 * max(anatomy.lumen_a, anatomy.lumen_b)) / pitch)
        assert far >= 64 or mask[far, col] == 0
        if anatomy.vein:
            assert mask[int(anatomy.vein_z / pitch), int(anatomy.vein_x / pitch)] == 0


def test_the_lumen_is_darker_than_its_wall_on_every_device(us_dir: Path) -> None:
    dataset = load_ultrasound_dataset(us_dir)
    for split in SPLITS:
        data = dataset.split(split)
        for image, mask in zip(data.image, data.mask):
            lumen = mask == 1
            ring = ndimage.binary_dilation(lumen, iterations=2) & ~lumen
            assert image[lumen].mean() < image[ring].mean(), split


def test_the_fan_warp_maps_the_mask_exactly_as_the_image() -> None:
    size = 64
    fan = fan_map(size, 60.0)
    beam_rows, beam_cols = np.mgrid[0:size, 0:size].astype(np.float64)
    # Bilinear interpolation of a linear ramp returns the coordinate itself: where each image pixel was taken from.
    source_row, source_col = scan_convert(beam_rows, fan, 1), scan_convert(beam_cols, fan, 1)
    beam_mask = lumen_mask(draw_anatomy(scene_rng(0, "warp", 0), 30.0), size, 30.0).astype(np.uint8)
    warped = scan_convert(beam_mask, fan, 0)
    nearest = beam_mask[np.floor(source_row + 0.5).astype(int), np.floor(source_col + 0.5).astype(int)]
    assert np.array_equal(warped, np.where(fan.inside, nearest, 0))
    assert 0.4 < fan.inside.mean() < 0.8 and warped.sum() > 0
    # The field of view is exact: outside it the image and the mask are 0, the mask never outside the image.
    anatomy = draw_anatomy(scene_rng(0, "warp", 1), 30.0)
    image, mask = render(anatomy, replace(DeviceParams(), sector_deg=60.0), scene_rng(0, "warp", 2), PARAMS)
    assert not image[~fan.inside].any() and not mask[~fan.inside].any()
    # The fan tends to the linear grid as its angle closes.
    nearly_linear = fan_map(size, 0.01)
    assert np.abs(nearly_linear.rows - beam_rows).max() < 0.05 and np.abs(nearly_linear.cols - beam_cols).max() < 0.05


def test_severity_moves_each_target_from_the_source() -> None:
    source, target = DEFAULT_DEVICES["linear"], DEFAULT_DEVICES["phased"]
    assert device_at(source, target, 0.0) == source and device_at(source, target, 1.0) == target
    assert device_at(source, target, 0.5).frequency_mhz == pytest.approx(5.0)
    assert UltrasoundParams(severity=0.0).rendered_device("convex") == source
    anatomy = draw_anatomy(scene_rng(0, "severity", 0), 30.0)
    echo = echogenicity(anatomy, scene_rng(0, "severity", 1), 64, 30.0)
    reference = render(anatomy, source, scene_rng(0, "severity", 2), PARAMS, echo)[0].astype(float)
    gaps = [np.abs(render(anatomy, UltrasoundParams(severity=s).rendered_device("linear_smooth"),
                          scene_rng(0, "severity", 2), PARAMS, echo)[0] - reference).mean() for s in (0.0, 0.5, 1.0)]
    assert gaps[0] == 0 and gaps[0] < gaps[1] < gaps[2]
    with pytest.raises(ValueError, match=r"severity must lie in \[0, 1\], got 1.5"):
        UltrasoundParams(severity=1.5)


def test_train_and_compress_never_read_an_unseen_device(us_dir: Path) -> None:
    for step in ("train", "compress"):
        view = step_views({"data": us_dir}, step)["data"]
        dataset = load_ultrasound_dataset(view)
        assert dataset.readable("train") and dataset.readable("val")
        assert not any(dataset.readable(f"test_{device}") for device in DEVICES[1:])
        with pytest.raises(TestSplitAccessError, match="split 'test_convex' of dataset 'data' is withheld"):
            dataset.split("test_convex").image  # noqa: B018
        assert view.roles_read() == {FIT, VAL}
    evaluate = step_views({"data": us_dir}, "evaluate")["data"]
    assert all(load_ultrasound_dataset(evaluate).readable(split) for split in SPLITS)


@pytest.fixture(scope="module")
def clean_report(us_dir: Path) -> ValidationReport:
    return validate_dataset(US_DEVICE_SEGMENTATION, us_dir, SPEC)


def _stored_arrays(us_dir: Path) -> dict[str, np.ndarray]:
    dataset = load_ultrasound_dataset(us_dir)
    return {f"{split}_{name}": getattr(dataset.split(split), name).copy() for split in SPLITS for name in FIELDS}


def _copy_with(us_dir: Path, target: Path, arrays: dict[str, np.ndarray]) -> Path:
    target.mkdir()
    (target / "meta.json").write_text((us_dir / "meta.json").read_text())
    np.savez(target / ULTRASOUND_FILE, **arrays)
    return target


def test_the_built_data_passes_its_suite_and_bad_data_is_stopped(us_dir: Path, clean_report: ValidationReport,
                                                                  tmp_path: Path) -> None:
    assert clean_report.success, clean_report.failed
    assert {(row["split"], row["label"]) for row in clean_report.profile["rows"]} == {
        (s, c) for s in SPLITS for c in (0, 1)}
    arrays = _stored_arrays(us_dir)
    arrays["train_mask"][2, 0, 0] = 2  # a non-binary mask
    arrays["val_mask"][1] = 0  # an empty mask
    arrays["test_convex_mask"] = arrays["test_convex_mask"][:, :, :63]  # mask and image shapes differ
    arrays["test_phased_device"][3] = DEVICES.index(SOURCE_DEVICE)  # a source image among the unseen device's
    arrays["test_linear_smooth_anatomy"][0] = arrays["train_anatomy"][5]  # a training scene in a test split
    arrays["val_image"][3] = arrays["train_image"][4]  # a training image in val
    arrays["test_linear_smooth_image"][2] = 100  # a blank image
    report = validate_dataset(US_DEVICE_SEGMENTATION, _copy_with(us_dir, tmp_path / "bad", arrays), SPEC)
    assert not report.success
    failed = {(failure.column, failure.details.split("]")[0] + "]") for failure in report.failed}
    assert failed == {("mask_outside_set", "[train]"), ("mask_pixels", "[val]"), ("mask_shape", "[test_convex]"),
                      ("device", "[test_phased]"), ("anatomy_sha1", "[" + "+".join(SPLITS) + "]"),
                      ("image_sha1", "[" + "+".join(SPLITS) + "]"), ("image_std", "[test_linear_smooth]")}
    details = {failure.column: failure.details for failure in report.failed}
    assert "image=2" in details["mask_outside_set"] and "image=1" in details["mask_pixels"]
    assert "image=3" in details["device"] and "device id 2 (phased)" in details["device"]


def test_a_brightened_device_split_is_drift_against_the_last_validated_version(
        us_dir: Path, clean_report: ValidationReport, tmp_path: Path) -> None:
    arrays = _stored_arrays(us_dir)
    arrays["test_phased_image"] = np.minimum(arrays["test_phased_image"].astype(np.int16) + 40, 255).astype(np.uint8)
    reference = DataReference(md5="0123456789abcdef0123456789abcdef.dir", profile=clean_report.profile)
    report = validate_dataset(US_DEVICE_SEGMENTATION, _copy_with(us_dir, tmp_path / "bright", arrays), SPEC,
                              reference)
    assert not report.success
    # Every failure is drift, and only the brightened split's rows are out of bounds (2 of 10: its two classes).
    assert {failure.column for failure in report.failed} == {"shift"}
    pixel_mean = next(f.details for f in report.failed if "drift statistic pixel_mean" in f.details)
    assert "2 of 10 rows unexpected" in pixel_mean and pixel_mean.count("split=test_phased") == 2


def test_fields_of_different_lengths_do_not_load(us_dir: Path, tmp_path: Path) -> None:
    dataset = load_ultrasound_dataset(us_dir)
    arrays = {f"{split}_{name}": getattr(dataset.split(split), name) for split in SPLITS for name in FIELDS}
    (tmp_path / "meta.json").write_text((us_dir / "meta.json").read_text())
    np.savez(tmp_path / ULTRASOUND_FILE, **(arrays | {"val_device": arrays["val_device"][:-1]}))
    with pytest.raises(ValueError, match="the fields of split val hold different numbers of images: .*val_device 5"):
        load_ultrasound_dataset(tmp_path)


# ------------------------------------------------------------------------------------------- transforms

ALL_STYLES_ON = StyleDraw(active=np.zeros(5), alpha=np.full(5, 0.8))
NO_STYLE = StyleDraw(active=np.ones(5), alpha=np.zeros(5))
IDENTITY = SpatialDraw(active=np.ones(3), alpha=np.zeros(3))


def _two_level(mask: np.ndarray) -> np.ndarray:
    return np.where(mask == 1, 220, 20).astype(np.uint8)


def test_a_style_transform_changes_appearance_and_never_the_mask() -> None:
    image, mask, _ = draw_scene(0, "train", 0, PARAMS)
    for k in range(5):  # each op alone changes the image
        one = StyleDraw(active=np.where(np.arange(5) == k, 0.0, 1.0), alpha=np.full(5, 0.8))
        assert not np.array_equal(apply_style(image, one, np.random.default_rng(0)), image), k
    styled, styled_mask = augment(image, mask, ALL_STYLES_ON, IDENTITY, np.random.default_rng(0))
    assert not np.array_equal(styled, image) and np.array_equal(styled_mask, mask)
    crop = SpatialDraw(active=np.array([0.0, 0.5, 1.0]), alpha=np.array([0.5, 0.5, 0.0]))
    masks = [augment(image, mask, style, crop, np.random.default_rng(1))[1] for style in (ALL_STYLES_ON, NO_STYLE)]
    assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], mask)


def test_a_spatial_transform_moves_image_and_mask_together() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[3:7, 9:14] = 1
    flip = SpatialDraw(active=np.array([1.0, 0.0, 0.0]), alpha=np.zeros(3))
    flipped, flipped_mask = apply_spatial(_two_level(mask), mask, flip)
    assert np.array_equal(flipped, _two_level(mask)[:, ::-1]) and np.array_equal(flipped_mask, mask[:, ::-1])
    # Crop 0.8 x 0.9 at the bottom-right anchor (slot 4), resized back: where the image is still one level the mask
    # says the same level; blended pixels only on the boundary.
    crop = SpatialDraw(active=np.array([0.0, 0.5, 1.0]), alpha=np.array([0.5, 1.0, 0.0]))
    assert crop_anchor(16, 16, 0.8, 0.9, 0.5) == (3, 1)
    moved, moved_mask = apply_spatial(_two_level(mask), mask, crop)
    assert not np.array_equal(moved_mask, mask) and set(np.unique(moved_mask)) == {0, 1}
    assert np.all(moved_mask[moved == 220] == 1) and np.all(moved_mask[moved == 20] == 0)
    blended = (moved != 220) & (moved != 20)
    edge = ndimage.binary_dilation(moved_mask == 1) & ~ndimage.binary_erosion(moved_mask == 1)
    assert blended.any() and np.all(edge[blended])
    # Crop then flip (the official order): the flipped crop, not a crop of the flipped image.
    crop_and_flip = SpatialDraw(active=np.array([0.0, 0.5, 0.0]), alpha=np.array([0.5, 1.0, 0.0]))
    both, both_mask = apply_spatial(_two_level(mask), mask, crop_and_flip)
    assert np.array_equal(both, moved[:, ::-1]) and np.array_equal(both_mask, moved_mask[:, ::-1])


def test_paired_views_pair_style_and_anatomy_as_mi_segnet_does() -> None:
    assert style_difference(StyleDraw(np.zeros(5), np.ones(5)), StyleDraw(np.ones(5), np.ones(5))) == 15.0
    assert style_difference(StyleDraw(np.full(5, 0.2), np.ones(5)), StyleDraw(np.full(5, 0.2), np.ones(5))) == 0.0
    assert same_anchor(SpatialDraw(np.array([0, 0.05, 0]), np.zeros(3)),
                       SpatialDraw(np.array([0, 0.1, 0]), np.zeros(3)))
    assert not same_anchor(SpatialDraw(np.array([0, 0.05, 0]), np.zeros(3)),
                           SpatialDraw(np.array([0, 0.2, 0]), np.zeros(3)))
    _, mask, _ = draw_scene(0, "train", 1, PARAMS)
    image = _two_level(mask)
    compared = 0
    for seed in range(12):
        views = paired_views(image, mask, np.random.default_rng(seed))
        assert all(v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1 for v in (views.x1, views.x12))
        assert set(np.unique(views.y1)) <= {0, 1} and set(np.unique(views.y2)) <= {0, 1}
        if np.array_equal(views.y1, views.y2):
            continue
        compared += 1
        # x12 has the anatomy of view 2, x21 that of view 1.
        for x, own, other in ((views.x12, views.y2, views.y1), (views.x21, views.y1, views.y2)):
            assert np.corrcoef(x.ravel(), own.ravel())[0, 1] > np.corrcoef(x.ravel(), other.ravel())[0, 1]
    assert compared >= 4


def test_the_contact_sheets_show_each_device(us_dir: Path) -> None:
    split = load_ultrasound_dataset(us_dir).split("test_convex")
    sheet = contact_sheet(split, n=3)
    assert sheet.shape == (3 * 64, 3 * 64, 3) and sheet.dtype == np.uint8
    assert np.array_equal(sheet[64:128, :64, 0], split.image[1])
    assert np.array_equal(sheet[:64, 64:128, 1] == 255, split.mask[0] == 1)
    overlay = sheet[:64, 128:192]
    assert np.all(overlay[split.mask[0] == 1, 0] >= overlay[split.mask[0] == 1, 1])
    grid = device_sheet(PARAMS, seed=0, n=2)
    assert grid.shape == (2 * 64, len(DEVICES) * 64)
    assert not np.array_equal(grid[:64, :64], grid[:64, 64:128])


def test_bad_parameters_are_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["build", "--out", str(tmp_path / "x"), "--train", "2", "--val", "1", "--test", "1",
                 "--phased.gamma", "0"])
    assert code == 2 and capsys.readouterr().err == "error: device phased: gamma must be > 0, got 0.0\n"
    code = main(["build", "--out", str(tmp_path / "x"), "--train", "2", "--val", "0", "--test", "1"])
    assert code == 2 and capsys.readouterr().err.startswith("error: counts must give every split")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"sector_deg must lie in \[0, 120\], got 150"):
        DeviceParams(sector_deg=150)


def test_the_cli_builds_what_the_stage_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--out", str(tmp_path / "us"), "--train", "3", "--val", "2", "--test", "2",
                 "--severity", "0.5", "--convex.sector_deg", "40"]) == 0
    meta = json.loads((tmp_path / "us" / "meta.json").read_text())
    assert meta["severity"] == 0.5 and meta["device_params"]["convex"]["sector_deg"] == 40.0
    assert meta["rendered_device_params"]["convex"]["sector_deg"] == 20.0
    assert "3 train / 2 val / 2 test_convex" in capsys.readouterr().out
