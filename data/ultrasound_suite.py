"""The ``us_device_segmentation`` suite: grayscale images with a binary mask each, one split per device (data/
ultrasound.py's layout: train and val on the source device, test_<device> on each unseen device).

Pixels are summarised into small frames:

* ``images``: one row per image and split - the image's and the mask's shape and dtype, mask pixels that are
  neither 0 nor 1, the mask's pixel count and share of the image, the image's grey-level standard deviation and its
  share of saturated (255) pixels, and the stored device id. Every expectation runs once per split and names the
  failing images (``image=<index>``); the device id must be the one the family declares for the split
  (SPLIT_DEVICES). A split whose arrays hold different numbers of images does not load (the loader names them).
* ``leakage``: the distinct (image sha1, split) pairs over all splits: a digest listed twice is an identical image
  in two splits.
* ``scene_leakage``: the distinct (anatomy sha1, split) pairs: the same scene geometry in two splits (for instance
  one anatomy rendered through the source and a target device) fails here even though the images differ.

Its profile (data/drift.py, `dense_class_profile`) holds per split and class (background, lumen) the pixel share,
the grey values on the class and where it lies; with a reference, the ``drift_*`` parts compare them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.drift import class_drift, dense_class_profile
from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between, in_set, unique
from data.images import image_digests
from data.ultrasound import DEVICES, SPLIT_DEVICES, SPLIT_ROLES, SPLITS, UltrasoundSplit, UltrasoundSuiteSpec, \
    load_ultrasound_dataset


def _shape(array: np.ndarray) -> str:
    return "x".join(str(side) for side in array.shape[1:])


def _per_image(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each image `mask` (N, ...) marks."""
    return mask.reshape(len(mask), int(np.prod(mask.shape[1:]))).sum(axis=1)  # N may be 0


def image_frame(split: UltrasoundSplit) -> pd.DataFrame:
    """One row per image: shapes, dtypes and the counts the suite bounds."""
    n_images = len(split.image)
    image, mask = split.image, split.mask
    pixels = max(int(np.prod(mask.shape[1:])), 1)
    columns: dict[str, Any] = {
        "image": np.arange(n_images),
        "image_shape": np.full(n_images, _shape(image), dtype=object),
        "image_dtype": np.full(n_images, str(image.dtype), dtype=object),
        "mask_shape": np.full(n_images, _shape(mask), dtype=object),
        "mask_dtype": np.full(n_images, str(mask.dtype), dtype=object),
        "mask_outside_set": _per_image((mask != 0) & (mask != 1)),
        "mask_pixels": _per_image(mask == 1),
        "mask_share": _per_image(mask == 1) / pixels,
        "image_std": image.reshape(n_images, -1).astype(np.float64).std(axis=1) if n_images else np.zeros(0),
        "saturated_share": _per_image(image == 255) / max(int(np.prod(image.shape[1:])), 1),
        "device": split.device.astype(np.int64) if split.device.ndim == 1 else np.full(n_images, -1),
    }
    return pd.DataFrame(columns)


def image_expectations(spec: UltrasoundSuiteSpec, split: str) -> list[Expectation]:
    plane = f"{spec.height}x{spec.width}"
    device = SPLIT_DEVICES[split]
    return [
        Expectation("expect_table_row_count_to_be_between", {"min_value": spec.min_images_per_split},
                    f"at least {spec.min_images_per_split} images"),
        in_set("image_shape", [plane], description=f"image of shape {plane}"),
        in_set("image_dtype", ["uint8"], description="image stored as uint8"),
        in_set("mask_shape", [plane], description=f"mask of shape {plane}, the image's"),
        in_set("mask_dtype", ["uint8"], description="mask stored as uint8"),
        between("mask_outside_set", 0, 0, description="mask values only 0 and 1 (binary)"),
        between("mask_pixels", spec.min_mask_pixels, description=f"at least {spec.min_mask_pixels} lumen pixel(s) "
                "per mask (non-empty)"),
        between("mask_share", 0, spec.max_mask_share, description=f"at most {spec.max_mask_share:g} of an image in "
                "the mask"),
        between("image_std", spec.min_image_std, description=f"grey-level std at least {spec.min_image_std:g} (no "
                "blank image)"),
        between("saturated_share", 0, spec.max_saturated_share, description=f"at most {spec.max_saturated_share:g} "
                "of an image's pixels at 255"),
        in_set("device", [DEVICES.index(device)], description=f"device id {DEVICES.index(device)} ({device}), the "
               f"device split {split} is declared to hold"),
    ]


def leakage_frame(splits: dict[str, UltrasoundSplit], column: str) -> pd.DataFrame:
    """The distinct (digest, split) pairs of the images (column image_sha1) or the anatomies (anatomy_sha1)."""
    field = "image" if column == "image_sha1" else "anatomy"
    pairs = pd.DataFrame({column: sum((image_digests(getattr(splits[s], field)) for s in SPLITS), []),
                          "split": sum(([s] * len(splits[s].image) for s in SPLITS), [])})
    return pairs.drop_duplicates(ignore_index=True)  # a repeat inside one split is not a leak


def declare(path: Path, spec: UltrasoundSuiteSpec) -> DeclaredSuite:
    dataset = load_ultrasound_dataset(path)
    splits = {split: dataset.split(split) for split in SPLITS}
    all_splits = "+".join(SPLITS)
    parts = (
        *(SuitePart(f"images_{split}", tuple(image_expectations(spec, split)), unexpected_index_column_names=("image",))
          for split in SPLITS),
        SuitePart("leakage", (unique("image_sha1", description=f"no identical image in two of {all_splits} (each "
                                     "listed digest is in two)"),)),
        SuitePart("scene_leakage", (unique("anatomy_sha1", description=f"no scene (anatomy) in two of {all_splits} "
                                           "(each listed digest is in two)"),)),
    )
    batches = (
        *(Batch(f"images_{split}", split, image_frame(splits[split])) for split in SPLITS),
        Batch("leakage", all_splits, leakage_frame(splits, "image_sha1")),
        Batch("scene_leakage", all_splits, leakage_frame(splits, "anatomy_sha1")),
    )
    profile = dense_class_profile({split: (splits[split].image, splits[split].mask) for split in SPLITS})
    return DeclaredSuite(parts, batches, profile)


US_DEVICE_SEGMENTATION = DataSuite("us_device_segmentation", UltrasoundSuiteSpec, declare, SPLIT_ROLES, class_drift)
