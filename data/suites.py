"""The one registry of dataset suites: a config's `data.suite` names one of these. A new data family brings its
builder (data/<family>.py, a DVC stage) and its suite (data/<family>_suite.py) and adds its suite here."""
from __future__ import annotations

from data.expectations import DataSuite
from data.fewshot_suite import FEW_SHOT_CLASSES
from data.images_suite import IMAGE_CLASSIFICATION
from data.text_suite import TEXT_CORPUS

SUITES: dict[str, DataSuite] = {suite.name: suite for suite in (IMAGE_CLASSIFICATION, TEXT_CORPUS, FEW_SHOT_CLASSES)}
