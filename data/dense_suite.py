"""The ``dense_multitask`` suite: scenes with an image and dense labels per pixel (data/scenes.py's layout: splits
train, val, test and ood; fields image, semseg, parts, saliency, normals).

Pixels are summarised into three small frames:

* ``scenes``: one row per scene and split - each field's shape and dtype, and per scene the pixels that break a
  rule: label values outside 0..K-1 and the ignore index, no object pixel in semseg, an empty saliency mask,
  saliency or parts on pixels of no object (parts only on the `parts_of` class), non-finite or non-unit normals
  (a valid normal is unit length, an invalid one exactly (0, 0, 0)) and the share of valid normals. Every
  expectation runs once per split and names the failing scenes (``scene=<index>``); the field is in the column's
  name. A split whose fields hold different numbers of scenes does not load (the loader names them).
* ``classes``: one row per split, field (semseg, parts) and declared class with its pixel count: every class
  occurs in every split.
* ``leakage``: the distinct (image sha1, split) pairs over all four splits; a digest that is unique there occurs
  in one split only, so the uniqueness expectation fails exactly when an identical scene is in two splits.

Its profile (data/drift.py, `dense_class_profile`) holds per split and semseg class the pixel share, the image
values on the class and where it lies; with a reference, the ``drift_*`` parts compare them (`class_drift`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.drift import class_drift, dense_class_profile
from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between, in_set, unique
from data.images import image_digests
from data.scenes import FIELDS, SCENE_SPLIT_ROLES, SCENE_SPLITS, DenseSuiteSpec, SceneSplit, load_scene_dataset

LABEL_FIELDS = ("semseg", "parts", "saliency")


def _shape(array: np.ndarray) -> str:
    return "x".join(str(side) for side in array.shape[1:])


def expected_layout(spec: DenseSuiteSpec) -> dict[str, tuple[str, str]]:
    """field -> (shape of one scene as `_shape` writes it, dtype)."""
    plane = f"{spec.height}x{spec.width}"
    return {"image": (f"{plane}x3", "uint8"), "semseg": (plane, "uint8"), "parts": (plane, "uint8"),
            "saliency": (plane, "uint8"), "normals": (f"{plane}x3", "float32")}


def label_values(spec: DenseSuiteSpec) -> dict[str, list[int]]:
    """field -> the values its maps may hold: the classes, then the ignore index."""
    return {"semseg": [*range(spec.semseg_classes), spec.ignore_index],
            "parts": [*range(spec.parts_classes), spec.ignore_index], "saliency": [0, 1, spec.ignore_index]}


def _per_scene(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each scene `mask` (N, ...) marks."""
    return mask.reshape(len(mask), int(np.prod(mask.shape[1:]))).sum(axis=1)  # N may be 0


def scene_frame(split: SceneSplit, spec: DenseSuiteSpec) -> pd.DataFrame:
    """One row per scene: each field's shape and dtype, and the pixel counts the suite bounds. A count that needs two
    fields of different sizes (or normals without 3 components) is left empty: the shape check names the field."""
    n_scenes = len(split.image)
    columns: dict[str, Any] = {"scene": np.arange(n_scenes)}
    for name in FIELDS:
        array = getattr(split, name)
        columns[f"{name}_shape"] = np.full(n_scenes, _shape(array), dtype=object)
        columns[f"{name}_dtype"] = np.full(n_scenes, str(array.dtype), dtype=object)
    for name, allowed in label_values(spec).items():
        columns[f"{name}_outside_set"] = _per_scene(np.isin(getattr(split, name), allowed, invert=True))
    semseg, ignore = split.semseg, spec.ignore_index
    on_object = (semseg != 0) & (semseg != ignore)
    columns["semseg_object_pixels"] = _per_scene(on_object)
    columns["saliency_pixels"] = _per_scene(split.saliency == 1)
    empty = np.full(n_scenes, None, dtype=object)
    if split.saliency.shape == semseg.shape:
        columns["saliency_off_object"] = _per_scene((split.saliency == 1) & (semseg == 0))
    else:
        columns["saliency_off_object"] = empty
    if split.parts.shape == semseg.shape:
        carrier = on_object if spec.parts_of is None else semseg == spec.parts_of
        is_part = (split.parts != 0) & (split.parts != ignore)
        columns["parts_off_object"] = _per_scene(is_part & ~carrier)
    else:
        columns["parts_off_object"] = empty
    normals = split.normals
    if normals.ndim == 4 and normals.shape[-1] == 3 and np.issubdtype(normals.dtype, np.number):
        finite = np.isfinite(normals).all(axis=-1)
        length = np.linalg.norm(np.where(finite[..., None], normals, 0), axis=-1)
        valid = finite & (np.abs(length - 1.0) <= spec.normal_tolerance)
        invalid = finite & np.all(normals == 0, axis=-1)
        columns["normals_nonfinite"] = _per_scene(~finite)
        columns["normals_not_unit"] = _per_scene(finite & ~valid & ~invalid)
        columns["normals_valid_share"] = _per_scene(valid) / max(int(np.prod(valid.shape[1:])), 1)
    else:
        columns["normals_nonfinite"] = columns["normals_not_unit"] = columns["normals_valid_share"] = empty
    return pd.DataFrame(columns)


def scene_expectations(spec: DenseSuiteSpec) -> list[Expectation]:
    layout, values = expected_layout(spec), label_values(spec)
    checks = [Expectation("expect_table_row_count_to_be_between", {"min_value": spec.min_scenes_per_split},
                          f"at least {spec.min_scenes_per_split} scenes")]
    for name, (shape, dtype) in layout.items():
        checks += [in_set(f"{name}_shape", [shape], description=f"{name} of shape {shape} per scene"),
                   in_set(f"{name}_dtype", [dtype], description=f"{name} stored as {dtype}")]
    checks += [between(f"{name}_outside_set", 0, 0, description=f"{name} values only in "
                       f"{{{allowed[0]}..{allowed[-2]}, {allowed[-1]}}} (classes, ignore)")
               for name, allowed in values.items()]
    carrier = "an object" if spec.parts_of is None else f"semseg class {spec.parts_of}"
    checks += [
        between("semseg_object_pixels", 1, description="every scene shows an object (a semseg pixel neither "
                "background nor ignore)"),
        between("saliency_pixels", 1, description="saliency non-empty (a pixel of value 1) in every scene"),
        between("saliency_off_object", 0, 0, description="saliency only on object pixels (never on semseg "
                "background)"),
        between("parts_off_object", 0, 0, description=f"parts only on pixels of {carrier}"),
        between("normals_nonfinite", 0, 0, description="no NaN or infinite normal component"),
        between("normals_not_unit", 0, 0, description=f"normals unit length (within {spec.normal_tolerance:g}) "
                "where valid and exactly (0, 0, 0) where invalid"),
        between("normals_valid_share", spec.min_valid_normals, description=f"at least {spec.min_valid_normals:g} "
                "of a scene's pixels with a valid normal"),
    ]
    return checks


def class_frame(split: SceneSplit, spec: DenseSuiteSpec) -> pd.DataFrame:
    rows = [{"field": name, "label": label, "pixels": int(np.count_nonzero(getattr(split, name) == label))}
            for name, count in (("semseg", spec.semseg_classes), ("parts", spec.parts_classes))
            for label in range(count)]
    return pd.DataFrame(rows, columns=["field", "label", "pixels"])


def leakage_frame(splits: dict[str, SceneSplit]) -> pd.DataFrame:
    pairs = pd.DataFrame({"image_sha1": sum((image_digests(splits[s].image) for s in SCENE_SPLITS), []),
                          "split": sum(([s] * len(splits[s].image) for s in SCENE_SPLITS), [])})
    # Duplicates inside one split are not a leak; only a digest present in two splits survives twice.
    return pairs.drop_duplicates(ignore_index=True)


def declare(path: Path, spec: DenseSuiteSpec) -> DeclaredSuite:
    dataset = load_scene_dataset(path)
    splits = {split: dataset.split(split) for split in SCENE_SPLITS}
    all_splits = "+".join(SCENE_SPLITS)
    parts = (
        SuitePart("scenes", tuple(scene_expectations(spec)), unexpected_index_column_names=("scene",)),
        SuitePart("classes", (between("pixels", 1, description="every declared class occurs in the split"),),
                  unexpected_index_column_names=("field", "label")),
        SuitePart("leakage", (unique("image_sha1", description=f"no identical scene in two of {all_splits} (each "
                                     "listed digest is in two)"),)),
    )
    batches = (
        *(Batch("scenes", split, scene_frame(splits[split], spec)) for split in SCENE_SPLITS),
        *(Batch("classes", split, class_frame(splits[split], spec)) for split in SCENE_SPLITS),
        Batch("leakage", all_splits, leakage_frame(splits)),
    )
    profile = dense_class_profile({split: (splits[split].image, splits[split].semseg) for split in SCENE_SPLITS})
    return DeclaredSuite(parts, batches, profile)


DENSE_MULTITASK = DataSuite("dense_multitask", DenseSuiteSpec, declare, SCENE_SPLIT_ROLES, class_drift)
