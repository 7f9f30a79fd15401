"""Per-image scores of binary segmentation: Dice, IoU and HD95, the metrics MI-SegNet (Bi et al., MICCAI 2023)
reports per test domain. Every function takes boolean masks (N, H, W) and returns one score per image, so a
comparison of two models on the same images is paired.

Empty masks: Dice and IoU of an empty prediction of an empty target are 100 (nothing to find, nothing found);
HD95 with one side empty is undefined and scored as the image diagonal, the worst distance an image allows, so a
model that misses the structure is penalised rather than dropped from the mean (medpy raises instead).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target must both be (N, H, W); got {pred.shape} and {target.shape}")
    return pred.astype(bool), target.astype(bool)


def dice_per_item(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) Dice in percent: 200 |P ∩ T| / (|P| + |T|)."""
    pred, target = _check(pred, target)
    overlap = (pred & target).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
    return np.where(total == 0, 100.0, 200.0 * overlap / np.maximum(total, 1))


def iou_per_item(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) intersection over union in percent."""
    pred, target = _check(pred, target)
    overlap = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    return np.where(union == 0, 100.0, 100.0 * overlap / np.maximum(union, 1))


def _surface(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: in the mask with a 4-neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def hd95_per_item(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) 95th percentile of the symmetric surface distances in pixels (medpy's hd95: the distances from every
    boundary pixel of each mask to the other mask's boundary, pooled)."""
    pred, target = _check(pred, target)
    worst = float(np.hypot(*pred.shape[1:]))
    scores = np.empty(len(pred))
    for i, (p, t) in enumerate(zip(pred, target)):
        if not p.any() or not t.any():
            scores[i] = 0.0 if not p.any() and not t.any() else worst
            continue
        surface_p, surface_t = _surface(p), _surface(t)
        to_t = ndimage.distance_transform_edt(~surface_t)[surface_p]  # each boundary pixel of P to T's boundary
        to_p = ndimage.distance_transform_edt(~surface_p)[surface_t]
        scores[i] = np.percentile(np.concatenate([to_t, to_p]), 95)
    return scores
