"""Dataset builders and loaders, and the data-quality suites their datasets must pass (data/suites.py), declared as
data: pure data code, no orchestration or validation-library imports."""

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
