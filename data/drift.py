"""Drift of a dataset against the last validated version of the same dataset, declared as data like the suites.

A family summarises a version into a profile: small JSON statistics per split and class (image families: each
class's share of the split, pixel mean and standard deviation, and its mean image averaged onto a coarse grid,
which is what changes when one class is rotated or flipped: pixel values and counts do not) or per split (text:
character distribution, mean length of the non-empty lines, share of empty lines). The profile of a version that
passed validation is kept as the reference of the next one; `class_drift` / `text_drift` compare a new profile with
it and declare, per statistic, a frame of shifts (one row per split and class, or per split) and the expectation
that every shift stays within the configured bound, which tasks/validate.py runs with the rest of the suite.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from data.expectations import Batch, SuitePart, between

DRIFT_PART_PREFIX = "drift_"  # every drift part's name starts so: an accepted data change waives exactly these
GRID_CELLS = 8  # the mean image of a class is averaged onto at most 8 x 8 cells

Profile = dict[str, Any]  # {"kind": "classes" | "text", "rows": [{"split": ..., ("label": ...,) statistic: value}]}


class ClassDriftBounds(BaseModel):
    """How far each per-class statistic of a split may move from the last validated version's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(0.5, gt=0, description="class share, in units of the uniform share 1/K")
    pixel_mean: float = Field(0.05, gt=0, description="pixel mean of the class, as a fraction of the value range")
    pixel_std: float = Field(0.05, gt=0, description="pixel standard deviation, as a fraction of the value range")
    mean_image: float = Field(0.05, gt=0, description="root mean square difference of the class's mean image "
                              f"on a {GRID_CELLS}x{GRID_CELLS} grid, as a fraction of the value range")


class TextDriftBounds(BaseModel):
    """How far each statistic of a text split may move from the last validated version's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    char_distribution: float = Field(0.05, gt=0, le=1, description="total variation distance of the character "
                                     "frequencies")
    line_length: float = Field(0.2, gt=0, description="relative change of the mean non-empty line length")
    empty_lines: float = Field(0.1, gt=0, le=1, description="change of the share of empty lines")


# ------------------------------------------------------------------------------------------- profiles


def grid_mean_image(images: np.ndarray, cells: int = GRID_CELLS) -> list[float]:
    """The mean image of `images` (N, H, W[, C]), channels averaged, then averaged onto a cells x cells grid
    (fewer cells on a side shorter than `cells`), row-major."""
    mean = images.astype(np.float64).mean(axis=0)
    if mean.ndim == 3:
        mean = mean.mean(axis=2)
    rows = np.array_split(np.arange(mean.shape[0]), min(cells, mean.shape[0]))
    cols = np.array_split(np.arange(mean.shape[1]), min(cells, mean.shape[1]))
    return [float(mean[np.ix_(r, c)].mean()) for r in rows for c in cols]


def class_profile(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Profile:
    """Per split and class (every label present in the split): share, pixel mean and std, grid mean image."""
    rows = []
    for split, (images, labels) in splits.items():
        if images.ndim < 3 or not np.issubdtype(images.dtype, np.number):
            continue  # a malformed split fails the suite's shape and dtype checks; its statistics would mean nothing
        finite = np.where(np.isfinite(images), images, 0) if np.issubdtype(images.dtype, np.inexact) else images
        for label in np.unique(labels):
            members = finite[labels == label]
            rows.append({"split": split, "label": label.item(), "share": len(members) / len(labels),
                         "pixel_mean": float(members.mean()), "pixel_std": float(members.std()),
                         "mean_image": grid_mean_image(members)})
    return {"kind": "classes", "rows": rows}


def dense_class_profile(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Profile:
    """Per split and class of a dense label map (every label present in the split): the class's share of the
    split's pixels, the mean and std of the image values on its pixels, and the grid mean of the images with every
    other pixel zeroed (where the class lies, and in what colours). `splits`: split -> (images (N, H, W[, C]),
    label maps (N, H, W)); `class_drift` compares two such profiles like image-level ones."""
    rows = []
    for split, (images, labels) in splits.items():
        if images.ndim < 3 or labels.shape != images.shape[:3] or not np.issubdtype(images.dtype, np.number):
            continue  # a malformed split fails the suite's shape and dtype checks; its statistics would mean nothing
        finite = np.where(np.isfinite(images), images, 0) if np.issubdtype(images.dtype, np.inexact) else images
        for label in np.unique(labels):
            mask = labels == label
            values = finite[mask].astype(np.float64)
            on_class = (finite * (mask[..., None] if finite.ndim == 4 else mask)).mean(axis=0, dtype=np.float64)
            rows.append({"split": split, "label": label.item(), "share": float(mask.mean()),
                         "pixel_mean": float(values.mean()), "pixel_std": float(values.std()),
                         "mean_image": grid_mean_image(on_class[None])})
    return {"kind": "classes", "rows": rows}


def text_lines(text: str) -> list[str]:
    """The lines of `text`: split at newlines, a final newline ending the last line rather than starting one."""
    return text.removesuffix("\n").split("\n") if text else []


def empty_line_fraction(lines: list[str]) -> float | None:
    """Share of `lines` that are empty or whitespace only; None for no lines."""
    return sum(1 for line in lines if not line.strip()) / len(lines) if lines else None


def text_profile(texts: dict[str, str]) -> Profile:
    """Per split: character frequencies, mean length of the non-empty lines and the share of empty lines."""
    rows = []
    for split, text in texts.items():
        lines = text_lines(text)
        lengths = [len(line) for line in lines if line.strip()]
        counts = Counter(text)
        rows.append({"split": split,
                     "char_distribution": {char: n / max(len(text), 1) for char, n in sorted(counts.items())},
                     "line_length": float(np.mean(lengths)) if lengths else 0.0,
                     "empty_lines": empty_line_fraction(lines) or 0.0})
    return {"kind": "text", "rows": rows}


# ------------------------------------------------------------------------------------------ comparison


def _drift_part(statistic: str, index: tuple[str, ...], bound: float, what: str, reference_md5: str, frame_rows:
                list[dict[str, Any]], splits: str) -> tuple[SuitePart, Batch]:
    part = SuitePart(f"{DRIFT_PART_PREFIX}{statistic}", (between(
        "shift", 0.0, bound, description=f"{what} within {bound:g} of the last validated version "
        f"(md5 {reference_md5}); drift statistic {statistic}"),), unexpected_index_column_names=index)
    columns = [*index, "shift"]
    return part, Batch(part.name, f"{splits} vs last validated", pd.DataFrame(frame_rows, columns=columns))


def class_drift(reference: Profile, reference_md5: str, current: Profile,
                spec: Any) -> list[tuple[SuitePart, Batch]]:
    """Per statistic, the shift of every (split, class) of `reference` (a class that vanished counts with share 0
    and is not compared otherwise) and of every new class of `current` (share compared with 0); `spec` is an image
    family's suite spec (its `drift` bounds and `value_range`)."""
    bounds: ClassDriftBounds = spec.drift
    scale = (spec.value_range[1] - spec.value_range[0]) or 1.0
    old = {(r["split"], r["label"]): r for r in reference["rows"]}
    new = {(r["split"], r["label"]): r for r in current["rows"]}
    classes_per_split = Counter(split for split, _ in old | new)
    split_order = list(dict.fromkeys(split for split, _ in [*new, *old]))
    shifts: dict[str, list[dict[str, Any]]] = {name: [] for name in ClassDriftBounds.model_fields}
    for key in sorted(old.keys() | new.keys(), key=lambda k: (split_order.index(k[0]), k[1])):
        split, label = key
        before, after = old.get(key), new.get(key)
        uniform = 1.0 / classes_per_split[split]
        share_shift = abs((after["share"] if after else 0.0) - (before["share"] if before else 0.0)) / uniform
        shifts["share"].append({"split": split, "label": label, "shift": share_shift})
        if before is None or after is None:
            continue
        shifts["pixel_mean"].append({"split": split, "label": label,
                                     "shift": abs(after["pixel_mean"] - before["pixel_mean"]) / scale})
        shifts["pixel_std"].append({"split": split, "label": label,
                                    "shift": abs(after["pixel_std"] - before["pixel_std"]) / scale})
        if len(after["mean_image"]) == len(before["mean_image"]):  # a changed shape fails the suite itself
            difference = np.subtract(after["mean_image"], before["mean_image"])
            shifts["mean_image"].append({"split": split, "label": label,
                                         "shift": float(np.sqrt(np.mean(difference ** 2))) / scale})
    splits = "+".join(split_order)
    what = {"share": "each class's share of its split (in units of the uniform share 1/K)",
            "pixel_mean": "each class's pixel mean (fraction of the value range)",
            "pixel_std": "each class's pixel standard deviation (fraction of the value range)",
            "mean_image": f"each class's mean image ({GRID_CELLS}x{GRID_CELLS} grid, RMS, fraction of the value "
                          "range)"}
    return [_drift_part(name, ("split", "label"), getattr(bounds, name), what[name], reference_md5, rows, splits)
            for name, rows in shifts.items()]


def text_drift(reference: Profile, reference_md5: str, current: Profile, spec: Any) -> list[tuple[SuitePart, Batch]]:
    """Per statistic, the shift of every split present in both profiles (a missing split fails the suite itself);
    `spec` is a text family's suite spec (its `drift` bounds)."""
    bounds: TextDriftBounds = spec.drift
    old = {r["split"]: r for r in reference["rows"]}
    new = {r["split"]: r for r in current["rows"]}
    shared = [split for split in new if split in old]
    shifts: dict[str, list[dict[str, Any]]] = {name: [] for name in TextDriftBounds.model_fields}
    for split in shared:
        before, after = old[split], new[split]
        chars = before["char_distribution"].keys() | after["char_distribution"].keys()
        distance = 0.5 * sum(abs(after["char_distribution"].get(c, 0.0) - before["char_distribution"].get(c, 0.0))
                             for c in chars)
        shifts["char_distribution"].append({"split": split, "shift": distance})
        shifts["line_length"].append({"split": split, "shift": abs(after["line_length"] - before["line_length"])
                                      / max(before["line_length"], 1.0)})
        shifts["empty_lines"].append({"split": split, "shift": abs(after["empty_lines"] - before["empty_lines"])})
    what = {"char_distribution": "each split's character distribution (total variation distance)",
            "line_length": "each split's mean non-empty line length (relative change)",
            "empty_lines": "each split's share of empty lines"}
    return [_drift_part(name, ("split",), getattr(bounds, name), what[name], reference_md5, rows, "+".join(shared))
            for name, rows in shifts.items()]
