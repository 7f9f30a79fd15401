"""Dataset builders and loaders (pure data code: no orchestration imports)."""

from data.dataset_dir import DatasetFormatError, DatasetSourceMissingError
from data.images import (
    SOURCES,
    ImageDataset,
    ImageSuiteSpec,
    build,
    image_digests,
    load_image_dataset,
)
from data.text import (
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
