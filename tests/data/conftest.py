"""The real MNIST-5k stage built once for the data tests, and copies of it with arrays replaced (the bad data the
suites must reject)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from data import build, load_image_dataset


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("mnist5k", tmp_path_factory.mktemp("data") / "mnist5k", test_fraction=0.2, seed=0)


@pytest.fixture
def variant() -> Callable[..., Path]:
    """`variant(source, target, x_train=...)`: a copy of dataset `source` at `target` with some arrays replaced."""
    return dataset_copy_with


def dataset_copy_with(source: Path, target: Path, **arrays: np.ndarray) -> Path:
    """A copy of dataset `source` at `target` with some of its arrays replaced."""
    dataset = load_image_dataset(source)
    target.mkdir()
    shutil.copy(source / "meta.json", target / "meta.json")
    stored = {"x_train": dataset.x_train, "y_train": dataset.y_train,
              "x_test": dataset.x_test, "y_test": dataset.y_test} | arrays
    np.savez(target / "images.npz", **stored)
    return target
