"""Dataset builders and loaders (pure data code: no orchestration imports)."""

from paperops.datasets.dataset_dir import DatasetFormatError, DatasetSourceMissingError
from paperops.datasets.images import (
    SOURCES,
    ImageDataset,
    ImageSuiteSpec,
    build,
    image_digests,
    load_image_dataset,
)
from paperops.datasets.text import (
    TEXT_SOURCES,
    TextDataset,
    TextSuiteSpec,
    build_shakespeare,
    load_text_dataset,
)

__all__ = [
    "SOURCES",
    "TEXT_SOURCES",
    "TextDataset",
    "TextSuiteSpec",
    "build_shakespeare",
    "load_text_dataset",
    "DatasetFormatError",
    "DatasetSourceMissingError",
    "ImageDataset",
    "ImageSuiteSpec",
    "build",
    "image_digests",
    "load_image_dataset",
]
