"""The ``few_shot_classes`` suite: three class-disjoint splits base / val / novel (data/fewshot.py's layout).

Summarised as: ``images`` (one row per image, run once per split: shape, dtype, value range, non-finite pixels,
share of inked pixels, label dtype), ``classes_<split>`` (one row per class of a split: images per class; the row
count is the split's class count), ``class_splits`` (the distinct (class, split) pairs: a class id unique there is
in one split only) and ``leakage`` (the distinct (image sha1, split) pairs: no byte-identical image in two splits).
Its profile and ``drift_*`` parts are the image suite's (data/drift.py: per split and class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.drift import class_drift, class_profile
from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between, unique
from data.fewshot import SPLIT_ROLES, SPLITS, FewShotSuiteSpec, image_digests, load_fewshot_dataset
from data.images_suite import image_frame, label_dtype_expectation, pixel_expectations

INK_LEVEL = 63.75  # a quarter of the 0-255 range: 5.3 sigma above black for the builders' noise of sigma 12


def fewshot_image_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    frame = image_frame(images, labels)
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
    # Ink is anything above a quarter of full scale, not mid-grey: a thin stroke that was eroded and then
    # down-sampled can peak at 144 with one pixel above 127.5 and still be a legible glyph (glyphs, novel split).
    frame["ink_fraction"] = (flat > INK_LEVEL).mean(axis=1)  # NaN counts as not inked; reported on its own
    return frame


def image_expectations(spec: FewShotSuiteSpec) -> list[Expectation]:
    ink_low, ink_high = spec.ink_fraction
    return [
        Expectation("expect_table_row_count_to_be_between", {"min_value": 1}, "at least one image"),
        *pixel_expectations(spec.height, spec.width, 1, spec.dtype, spec.value_range),
        label_dtype_expectation(),
        between("ink_fraction", ink_low, ink_high, description=f"{ink_low:g}-{ink_high:g} of the pixels inked "
                f"(above {INK_LEVEL:g}): no blank, missing-glyph or inverted image"),
    ]


def class_expectations(spec: FewShotSuiteSpec, n_classes: int) -> list[Expectation]:
    return [
        Expectation("expect_table_row_count_to_equal", {"value": n_classes}, f"{n_classes} classes in the split"),
        between("count", spec.min_images_per_class,
                description=f"at least {spec.min_images_per_class} images per class"),
    ]


def declare(path: Path, spec: FewShotSuiteSpec) -> DeclaredSuite:
    unknown = sorted(set(spec.classes_per_split) - set(SPLITS))
    if unknown:
        raise ValueError(f"classes_per_split names unknown split(s) {unknown}; splits: {', '.join(SPLITS)}")
    dataset = load_fewshot_dataset(path)
    all_splits = "+".join(SPLITS)
    parts = (
        SuitePart("images", tuple(image_expectations(spec))),
        *(SuitePart(f"classes_{split}", tuple(class_expectations(spec, spec.classes_per_split.get(split, 0))),
                    unexpected_index_column_names=("label",)) for split in SPLITS),
        SuitePart("class_splits", (unique("label", description="every class in exactly one split (base, val and "
                                          "novel classes are disjoint)"),), unexpected_index_column_names=("label",)),
        SuitePart("leakage", (unique("image_sha1", description="no byte-identical image in two splits (each listed "
                                     "digest is in two)"),)),
    )
    batches: list[Batch] = []
    for split in SPLITS:
        batches.append(Batch("images", split, fewshot_image_frame(dataset.x[split], dataset.y[split])))
        labels, counts = np.unique(dataset.y[split], return_counts=True)
        batches.append(Batch(f"classes_{split}", split, pd.DataFrame({"label": labels, "count": counts})))
    pairs = pd.DataFrame({"label": np.concatenate([np.unique(dataset.y[s]) for s in SPLITS]),
                          "split": np.concatenate([[s] * len(np.unique(dataset.y[s])) for s in SPLITS])})
    batches.append(Batch("class_splits", all_splits, pairs))
    digests = pd.DataFrame({"image_sha1": sum((image_digests(dataset.x[s]) for s in SPLITS), []),
                            "split": sum(([s] * len(dataset.x[s]) for s in SPLITS), [])})
    batches.append(Batch("leakage", all_splits, digests.drop_duplicates(ignore_index=True)))
    return DeclaredSuite(parts, tuple(batches), class_profile({s: (dataset.x[s], dataset.y[s]) for s in SPLITS}))


FEW_SHOT_CLASSES = DataSuite("few_shot_classes", FewShotSuiteSpec, declare, SPLIT_ROLES, class_drift)
