"""Dataset views: train and compress get every test split withheld, evaluate reads all; each family's loader hands
out only what the view allows, records it, and a withheld split refuses every use with an error naming the split,
the dataset and the step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.dataset_dir import DatasetFormatError
from data.fewshot import FEWSHOT_FILE, load_fewshot_dataset
from data.images import IMAGES_FILE, load_image_dataset
from data.text import SPLITS as TEXT_SPLITS
from data.text import load_text_dataset
from data.views import STEP_ROLES, DatasetView, TestSplitAccessError, Withheld, as_view, step_views
from models.common.vit import images_to_input


def _images_dir(root: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A 3-class image dataset: 6 train, 3 val, 3 test images of 4x4 pixels (`without`: array names left out)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 4, 4)).astype(np.uint8)
        arrays[f"y_{split}"] = np.arange(n, dtype=np.int64) % 3
    np.savez(root / IMAGES_FILE, **{k: v for k, v in arrays.items() if k not in without})
    (root / "meta.json").write_text(json.dumps({"classes": [0, 1, 2]}))
    return root


def _text_dir(root: Path) -> Path:
    root.mkdir()
    for split in TEXT_SPLITS:
        (root / f"{split}.txt").write_text(f"the {split} text\n", encoding="utf-8")
    (root / "meta.json").write_text("{}")
    return root


def _fewshot_dir(root: Path) -> Path:
    root.mkdir()
    arrays = {}
    for i, split in enumerate(("base", "val", "novel")):
        arrays[f"x_{split}"] = np.full((4, 2, 2), i, dtype=np.uint8)
        arrays[f"y_{split}"] = np.array([2 * i, 2 * i, 2 * i + 1, 2 * i + 1], dtype=np.int64)
    np.savez(root / FEWSHOT_FILE, **arrays)
    (root / "meta.json").write_text("{}")
    return root


def test_train_and_compress_read_fit_and_val_only_evaluate_reads_everything():
    assert STEP_ROLES == {"train": {"fit", "val"}, "compress": {"fit", "val"}, "evaluate": {"fit", "val", "test"}}
    views = step_views({"data": "/d/mnist5k", "pretrain": Path("/d/letters")}, "compress")
    assert {name: (view.name, view.path, view.step) for name, view in views.items()} == {
        "data": ("data", Path("/d/mnist5k"), "compress"), "pretrain": ("pretrain", Path("/d/letters"), "compress")}
    with pytest.raises(ValueError, match="unknown step 'validate'; steps that read data: train, compress, evaluate"):
        step_views({"data": "/d"}, "validate")
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['holdout'\]"):
        DatasetView("data", Path("/d"), "train", frozenset({"fit", "holdout"}))
    assert as_view("/d/mnist5k").readable_roles == {"fit", "val", "test"}  # a path: builders and suites read all


def test_a_fit_only_view_refuses_the_test_split_with_a_clear_error(tmp_path: Path):
    view = step_views({"data": _images_dir(tmp_path / "images")}, "train")["data"]
    dataset = load_image_dataset(view)

    assert view.reads == [("train", "fit"), ("val", "val")] and view.roles_read() == {"fit", "val"}
    assert dataset.x_val.shape == (3, 4, 4) and dataset.readable("val") and not dataset.readable("test")
    message = "split 'test' of dataset 'data' is withheld from the train step: only evaluate reads test splits"
    uses = [lambda w: w.shape, lambda w: w[:2], len, list, bool, np.asarray, torch.as_tensor,
            lambda w: images_to_input(w, 4), lambda w: w.astype(np.float32)]
    for use in uses + [lambda w: setattr(w, "shape", (1,))]:
        with pytest.raises(TestSplitAccessError, match=message) as raised:
            use(dataset.x_test)
        assert (raised.value.split, raised.value.dataset, raised.value.step) == ("test", "data", "train")
    assert isinstance(dataset.y_test, Withheld) and "withheld from train" in repr(dataset.y_test)


def test_a_fit_only_view_never_opens_the_test_arrays(tmp_path: Path):
    root = _images_dir(tmp_path / "no-test", without=("x_test", "y_test"))
    assert load_image_dataset(step_views({"data": root}, "compress")["data"]).x_train.shape == (6, 4, 4)
    with pytest.raises(DatasetFormatError, match=r"lacks array\(s\) x_test, y_test"):
        load_image_dataset(step_views({"data": root}, "evaluate")["data"])


def test_the_evaluate_view_reads_every_split(tmp_path: Path):
    view = step_views({"data": _images_dir(tmp_path / "images")}, "evaluate")["data"]
    dataset = load_image_dataset(view)
    assert view.reads == [("train", "fit"), ("val", "val"), ("test", "test")]
    assert dataset.x_test.shape == (3, 4, 4) and dataset.readable("test")


def test_the_text_family_withholds_its_eval_sets(tmp_path: Path):
    root = _text_dir(tmp_path / "text")
    view = step_views({"data": root}, "train")["data"]
    dataset = load_text_dataset(view)
    assert view.reads == [("train", "fit"), ("calib", "fit"), ("val", "val")]
    assert dataset.split("val") == "the val text\n" and dataset.split("calib") == "the calib text\n"
    for split in ("eval_shakespeare", "eval_milton"):
        with pytest.raises(TestSplitAccessError, match=f"split '{split}' of dataset 'data' is withheld from the train"):
            dataset.split(split)
    full = load_text_dataset(step_views({"data": root}, "evaluate")["data"])
    assert full.split("eval_milton") == "the eval_milton text\n"


def test_the_few_shot_family_withholds_its_novel_classes(tmp_path: Path):
    root = _fewshot_dir(tmp_path / "fewshot")
    view = step_views({"pretrain": root}, "compress")["pretrain"]
    dataset = load_fewshot_dataset(view)
    assert view.reads == [("base", "fit"), ("val", "val")]
    assert dataset.readable("val") and not dataset.readable("novel") and dataset.classes("val").tolist() == [2, 3]
    with pytest.raises(TestSplitAccessError, match="split 'novel' of dataset 'pretrain' is withheld from the compress"):
        dataset.classes("novel")
    assert load_fewshot_dataset(step_views({"data": root}, "evaluate")["data"]).classes("novel").tolist() == [4, 5]
