"""The one registry of dataset suites: a config's `data.suite` names one of these. A new data family brings its
builder (data/<family>.py, a DVC stage) and its suite (data/<family>_suite.py) and adds its suite here."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from data.dense_suite import DENSE_MULTITASK
from data.expectations import DataSuite
from data.fewshot_suite import FEW_SHOT_CLASSES
from data.images_suite import IMAGE_CLASSIFICATION
from data.text_suite import TEXT_CORPUS
from data.ultrasound_suite import US_DEVICE_SEGMENTATION
from settings.config import ConfigError, validate

SUITES: dict[str, DataSuite] = {suite.name: suite for suite in (IMAGE_CLASSIFICATION, TEXT_CORPUS, FEW_SHOT_CLASSES,
                                                                 DENSE_MULTITASK, US_DEVICE_SEGMENTATION)}


def suite_spec(suite_name: str, expect: dict[str, Any]) -> tuple[DataSuite, BaseModel]:
    """The registered suite `suite_name` and a config's `expect` block validated against its spec; a ConfigError
    names the suite or every key of `expect` that does not fit."""
    if suite_name not in SUITES:
        raise ConfigError(f"data.suite {suite_name!r} is unknown; suites: {', '.join(SUITES)}")
    suite = SUITES[suite_name]
    return suite, validate(suite.spec, expect, f"data.expect does not fit suite {suite_name!r}")
