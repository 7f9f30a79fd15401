"""Dice, IoU and HD95 per image (models/common/segmentation.py) on masks small enough to count by hand."""
from __future__ import annotations

import numpy as np
import pytest

from models.common.segmentation import dice_per_item, hd95_per_item, iou_per_item


def square(top: int, left: int, side: int = 4, size: int = 12) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_a_square_shifted_by_one_column_overlaps_by_three_quarters():
    target, pred = square(2, 2)[None], square(2, 3)[None]
    assert dice_per_item(pred, target).tolist() == [75.0]  # 2 * 12 / (16 + 16)
    assert iou_per_item(pred, target).tolist() == [60.0]  # 12 / 20
    assert hd95_per_item(pred, target).tolist() == [1.0]


def test_hd95_ignores_a_stray_pixel_but_not_a_stray_blob():
    target = square(0, 0, side=10, size=40)
    speck, blob = target.copy(), target.copy()
    speck[30, 30] = True  # 1 of 73 pooled boundary distances (36 + 1 + 36): under 5 %, HD95 stays 0
    blob[28:31, 28:31] = True  # 8 of 80 boundary distances, each >= 18 * sqrt(2): above 5 %
    distances = hd95_per_item(np.stack([target, speck, blob]), np.stack([target] * 3))
    assert distances[:2].tolist() == [0.0, 0.0]
    assert distances[2] > 18 * np.sqrt(2) - 1e-9


def test_empty_masks_score_by_the_rule_the_module_states():
    empty, full = np.zeros((1, 8, 8), bool), square(1, 1, size=8)[None]
    assert dice_per_item(empty, empty).tolist() == [100.0] and iou_per_item(empty, empty).tolist() == [100.0]
    assert dice_per_item(empty, full).tolist() == [0.0]
    assert hd95_per_item(empty, full).tolist() == [pytest.approx(np.hypot(8, 8))]
    assert hd95_per_item(empty, empty).tolist() == [0.0]


def test_a_shape_mismatch_is_an_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 8, 8\) and \(1, 8, 9\)"):
        dice_per_item(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)))
