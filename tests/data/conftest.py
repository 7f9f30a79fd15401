"""The real MNIST-5k stage built once for the data tests, and copies of it with arrays replaced (the bad data the
suites must reject)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from data import build, load_image_dataset
from data.images import ARRAY_KEYS


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("mnist5k", tmp_path_factory.mktemp("data") / "mnist5k", test_fraction=0.2, val_fraction=0.125, seed=0)


@pytest.fixture
def variant() -> Callable[..., Path]:
    """`variant(source, target, x_train=...)`: a copy of dataset `source` at `target` with some arrays replaced."""
    return dataset_copy_with


def dataset_copy_with(source: Path, target: Path, **arrays: np.ndarray) -> Path:
    """A copy of dataset `source` at `target` with some of its arrays replaced."""
    dataset = load_image_dataset(source)
    target.mkdir()
    shutil.copy(source / "meta.json", target / "meta.json")
    stored = {key: getattr(dataset, key) for key in ARRAY_KEYS} | arrays
    np.savez(target / "images.npz", **stored)
    return target
