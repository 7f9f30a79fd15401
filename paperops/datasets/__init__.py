"""Dataset builders and loaders (pure data code: no orchestration imports)."""

from paperops.datasets.images import (
    SOURCES,
    DatasetFormatError,
    DatasetSourceMissingError,
    ImageDataset,
    ImageSuiteSpec,
    build,
    image_digests,
    load_image_dataset,
)

__all__ = [
    "SOURCES",
    "DatasetFormatError",
    "DatasetSourceMissingError",
    "ImageDataset",
    "ImageSuiteSpec",
    "build",
    "image_digests",
    "load_image_dataset",
]
