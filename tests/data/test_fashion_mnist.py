"""Fashion-MNIST from Debian's dataset-fashion-mnist (`make fashion-mnist`): the stage's builder on the real package
files gives the documented splits, the image suite accepts it and rejects bad copies of it, and a machine without
the package is told what to install."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from pathlib import Path

import numpy as np
import pytest
import yaml

from data import DatasetSourceMissingError, ImageSuiteSpec, image_digests, load_image_dataset
from data.images import FASHION_MNIST_ROOT_ENV, build_fashion_mnist, fashion_mnist_root, read_idx
from data.images_suite import IMAGE_CLASSIFICATION
from tasks.validate import validate_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["datasets"]["fashion_mnist"]
SPEC = ImageSuiteSpec(height=28, width=28, classes=list(range(10)), min_share=0.9, max_share=1.1,
                      min_images_per_split=PARAMS["val_size"])


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (`make fashion-mnist`)")
    return build_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion_mnist", PARAMS["train_size"],
                               PARAMS["val_size"], PARAMS["seed"])


def test_the_stage_draws_train_and_val_from_the_official_training_set_and_tests_on_the_official_test_set(
        fashion_dir: Path) -> None:
    dataset = load_image_dataset(fashion_dir)
    root = fashion_mnist_root()
    official_train = read_idx(root / "train-images-idx3-ubyte.gz")
    official_test = read_idx(root / "t10k-images-idx3-ubyte.gz")
    assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (10_000, 2_000, 10_000)
    assert np.bincount(dataset.y_train).tolist() == [1_000] * 10 and np.bincount(dataset.y_val).tolist() == [200] * 10
    assert np.array_equal(dataset.x_test, official_test) and dataset.meta["duplicates_dropped"] == {"val": 0, "test": 0}
    pool = set(image_digests(official_train))
    train, val = set(image_digests(dataset.x_train)), set(image_digests(dataset.x_val))
    assert train <= pool and val <= pool and not train & val
    assert dataset.meta["class_names"][9] == "Ankle boot" and dataset.meta["licence"].endswith("MIT")
    assert dataset.meta["source"]["package"] == "debian:dataset-fashion-mnist"


def test_the_val_split_does_not_depend_on_the_train_size(fashion_dir: Path, tmp_path: Path) -> None:
    smaller = load_image_dataset(build_fashion_mnist(tmp_path / "small", 500, PARAMS["val_size"], PARAMS["seed"]))
    dataset = load_image_dataset(fashion_dir)
    assert np.array_equal(smaller.x_val, dataset.x_val)
    assert np.bincount(smaller.y_train).tolist() == [50] * 10
    assert not set(image_digests(smaller.x_train)) & set(image_digests(smaller.x_val))


def test_the_real_dataset_passes_the_image_suite(fashion_dir: Path) -> None:
    report = validate_dataset(IMAGE_CLASSIFICATION, fashion_dir, SPEC)
    assert report.success, report.failed
    assert report.evaluated == 37


def test_bad_copies_are_rejected_naming_the_split(fashion_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(fashion_dir)
    x_val = dataset.x_val.copy()
    x_val[:3] = dataset.x_test[:3]  # three test images in val
    keep = dataset.y_train != 6  # no shirts left to train on
    bad = variant(fashion_dir, tmp_path / "bad", x_val=x_val, x_train=dataset.x_train[keep],
                  y_train=dataset.y_train[keep])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, SPEC)
    failed = {(f.expectation, f.column, f.details.split("]")[0] + "]") for f in report.failed}
    assert failed == {("expect_column_distinct_values_to_contain_set", "label", "[train]"),
                      ("expect_column_values_to_be_between", "share", "[train]"),
                      ("expect_column_values_to_be_unique", "image_sha1", "[train+val+test]")}


def test_without_the_package_the_builder_names_it_and_the_install_command(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetSourceMissingError) as raised:
        build_fashion_mnist(tmp_path / "out", 100, 20)
    message = str(raised.value)
    assert "dataset-fashion-mnist" in message and "sudo apt-get install dataset-fashion-mnist" in message
    assert "make fashion-mnist" in message and str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_the_packages_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not the package's file")
    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(tmp_path))
    with pytest.raises(DatasetSourceMissingError, match="train-images-idx3-ubyte.gz has sha256 .*reinstall"):
        build_fashion_mnist(tmp_path / "out", 100, 20)
