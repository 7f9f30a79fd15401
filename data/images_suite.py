"""The ``image_classification`` suite: an image dataset with a train, a val and a test split (data/images.py's
layout).

Pixels are summarised into three small frames (MNIST-5k alone would be 3.9 M pixel rows):

* ``images``: one row per image and split - height, width, channels, dtype, min/max over finite pixels,
  number of non-finite pixels, label. Shape, pixel and label dtypes, value range, NaN/inf, label set, "every class
  present" and the minimum split size are expectations on this frame, run once per split: an empty val split fails here
  (a dataset stored without one does not load: the loader names the missing arrays).
* ``class_balance``: one row per declared class and split with the class's share of the split; its
  expectation holds every share within [min_share/K, max_share/K].
* ``leakage``: the distinct (image sha1, split) pairs; a digest that is unique there occurs in one split
  only, so the uniqueness expectation fails exactly when a byte-identical image is in two of train, val and test.

Its profile (data/drift.py) holds per split and class the share, pixel mean and std and the grid mean image; with a
reference, the suite also runs the ``drift_*`` parts against the last validated version of the dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.dataset_dir import LABEL_DTYPE
from data.drift import class_drift, class_profile
from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between, in_set, unique
from data.images import SPLIT_ROLES, SPLITS, ImageDataset, ImageSuiteSpec, image_digests, load_image_dataset


def image_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image: its shape, dtype, extremes over finite pixels, non-finite pixel count and label."""
    n_images = len(images)
    flat = images.reshape(n_images, int(np.prod(images.shape[1:])))
    if np.issubdtype(flat.dtype, np.inexact):
        finite = np.isfinite(flat)
        nonfinite_count = (~finite).sum(axis=1)
        # Extremes over finite pixels only: a NaN is reported once, as non-finite, instead of also
        # hiding the range of the rest of the image.
        pixel_min = np.where(finite, flat, np.inf).min(axis=1)
        pixel_max = np.where(finite, flat, -np.inf).max(axis=1)
    else:
        nonfinite_count = np.zeros(n_images, dtype=np.int64)
        pixel_min, pixel_max = flat.min(axis=1), flat.max(axis=1)
    return pd.DataFrame(
        {
            "height": np.full(n_images, images.shape[1] if images.ndim > 1 else 0),
            "width": np.full(n_images, images.shape[2] if images.ndim > 2 else 0),
            "channels": np.full(n_images, images.shape[3] if images.ndim > 3 else 1),
            "dtype": np.full(n_images, str(images.dtype), dtype=object),
            "pixel_min": pixel_min,
            "pixel_max": pixel_max,
            "nonfinite_pixel_count": nonfinite_count,
            "label": labels,
        }
    )


def class_balance_frame(labels: np.ndarray, classes: list[int]) -> pd.DataFrame:
    total = max(len(labels), 1)
    counts = [int(np.count_nonzero(labels == c)) for c in classes]
    return pd.DataFrame({"label": classes, "count": counts, "share": [n / total for n in counts]})


def leakage_frame(dataset: ImageDataset) -> pd.DataFrame:
    images = {split: dataset.split(split)[0] for split in SPLITS}
    pairs = pd.DataFrame(
        {
            "image_sha1": sum((image_digests(images[split]) for split in SPLITS), []),
            "split": sum(([split] * len(images[split]) for split in SPLITS), []),
        }
    )
    # Duplicates inside one split are not a leak; only a digest present in two splits survives twice.
    return pairs.drop_duplicates(ignore_index=True)


def pixel_expectations(height: int, width: int, channels: int, dtype: str,
                       value_range: tuple[float, float]) -> list[Expectation]:
    """Shape, dtype, NaN/inf and value range of every image (columns of `image_frame`)."""
    low, high = value_range
    return [
        between("height", height, height, description=f"height {height}"),
        between("width", width, width, description=f"width {width}"),
        between("channels", channels, channels, description=f"{channels} channel(s)"),
        in_set("dtype", [dtype], description=f"dtype {dtype}"),
        between("nonfinite_pixel_count", 0, 0, description="no NaN or infinite pixel"),
        between("pixel_min", low, high, description=f"pixels within [{low:g}, {high:g}]"),
        between("pixel_max", low, high, description=f"pixels within [{low:g}, {high:g}]"),
    ]


def label_dtype_expectation() -> Expectation:
    """The label array's dtype (the frame's label column keeps it): float labels equal to the classes pass every
    value check, so the stored type is checked on its own."""
    return Expectation("expect_column_values_to_be_of_type", {"column": "label", "type_": LABEL_DTYPE},
                       f"labels stored as {LABEL_DTYPE}")


def image_expectations(spec: ImageSuiteSpec) -> list[Expectation]:
    classes = list(spec.classes)
    return [
        Expectation("expect_table_row_count_to_be_between", {"min_value": spec.min_images_per_split},
                    f"at least {spec.min_images_per_split} images"),
        *pixel_expectations(spec.height, spec.width, spec.channels, spec.dtype, spec.value_range),
        label_dtype_expectation(),
        in_set("label", classes, description=f"labels only from {classes}"),
        Expectation("expect_column_distinct_values_to_contain_set", {"column": "label", "value_set": classes},
                    "every declared class present"),
    ]


def balance_expectations(spec: ImageSuiteSpec) -> list[Expectation]:
    uniform = 1.0 / len(spec.classes)
    low, high = spec.min_share * uniform, spec.max_share * uniform
    return [
        between("share", low, high, description=f"every class holds {low:.4g}-{high:.4g} of the split "
                f"({spec.min_share:g}-{spec.max_share:g} x the uniform share 1/{len(spec.classes)})")
    ]


def declare(path: Path, spec: ImageSuiteSpec) -> DeclaredSuite:
    dataset = load_image_dataset(path)
    splits = {split: dataset.split(split) for split in SPLITS}
    parts = (
        SuitePart("images", tuple(image_expectations(spec))),
        SuitePart("class_balance", tuple(balance_expectations(spec)), unexpected_index_column_names=("label",)),
        SuitePart("leakage", (unique("image_sha1", description="no byte-identical image in two of train, val and "
                                     "test (each listed digest is in two)"),)),
    )
    batches = (
        *(Batch("images", split, image_frame(*splits[split])) for split in SPLITS),
        *(Batch("class_balance", split, class_balance_frame(splits[split][1], list(spec.classes))) for split in SPLITS),
        Batch("leakage", "+".join(SPLITS), leakage_frame(dataset)),
    )
    return DeclaredSuite(parts, batches, class_profile(splits))


IMAGE_CLASSIFICATION = DataSuite("image_classification", ImageSuiteSpec, declare, SPLIT_ROLES, class_drift)
