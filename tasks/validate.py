"""Great Expectations 1.x validation of image-classification and text-corpus datasets.

Pixels are not handed to GX one by one (MNIST-5k alone would be 3.9 M rows); the dataset is summarised
into three small pandas frames and GX checks those:

* ``images``: one row per image and split - height, width, channels, dtype, min/max over finite pixels,
  number of non-finite pixels, label. Shape, dtype, value range, NaN/inf, label set, "every class present"
  and the minimum split size are expectations on this frame, run once per split.
* ``class_balance``: one row per declared class and split with the class's share of the split; its
  expectation holds every share within [min_share/K, max_share/K].
* ``leakage``: the distinct (image sha1, split) pairs; a digest that is unique there occurs in one split
  only, so ExpectColumnValuesToBeUnique fails exactly when a byte-identical image is in train and test.

A third suite, ``few_shot_classes``, checks class-disjoint base / val / novel splits (see its section).
The Prefect task `validate_data` at the end dispatches a paper config's `data.suite` to its runner.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from prefect import task
from pydantic import ValidationError

from recipes.base import DataSection
from data.fewshot import SPLITS as FEWSHOT_SPLITS
from data.fewshot import FewShotSuiteSpec, load_fewshot_dataset
from data.fewshot import image_digests as fewshot_digests
from data.images import ImageDataset, ImageSuiteSpec, image_digests, load_image_dataset
from data.text import TextSuiteSpec, line_digests, nonempty_lines, nonprintable_fraction, vocab_coverage
from data.text import words as text_words
from tasks.data import DatasetRef

SPLITS = ("train", "test")
# Every ephemeral context logs an INFO line about its temporary docs directory: noise in flow logs.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
_RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
# Naming the rows by their label turns "share 0.02 unexpected" into "label 3 has share 0.02".
_BALANCE_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["label"],
    "return_unexpected_index_query": False,
}


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_in_set"
    column: str | None
    details: str  # which batch, the bounds asked for and what was observed


class DataValidationError(Exception):
    """A dataset failed its suite; str() lists every failed expectation on its own line."""

    def __init__(self, dataset: str, suite: str, failed: list[FailedExpectation]) -> None:
        self.dataset = dataset
        self.suite = suite
        self.failed = list(failed)
        lines = [f"dataset {dataset} failed {len(self.failed)} expectation(s) of suite {suite!r}:"]
        lines += [
            f"  - {f.expectation}{f' ({f.column})' if f.column else ''}: {f.details}" for f in self.failed
        ]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationReport:
    dataset: str
    suite: str
    success: bool
    evaluated: int
    successful: int
    failed: list[FailedExpectation]
    result: dict[str, Any]  # GX validation results as plain JSON types, ready to log as an artifact

    def raise_for_failure(self) -> None:
        if not self.success:
            raise DataValidationError(self.dataset, self.suite, self.failed)


# ------------------------------------------------------------------------------------------- frames


def _image_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    n_images = len(images)
    flat = images.reshape(n_images, int(np.prod(images.shape[1:])))
    if np.issubdtype(flat.dtype, np.inexact):
        finite = np.isfinite(flat)
        nonfinite_count = (~finite).sum(axis=1)
        # Extremes over finite pixels only: a NaN is reported once, as non-finite, instead of also
        # hiding the range of the rest of the image.
        pixel_min = np.where(finite, flat, np.inf).min(axis=1)
        pixel_max = np.where(finite, flat, -np.inf).max(axis=1)
    else:
        nonfinite_count = np.zeros(n_images, dtype=np.int64)
        pixel_min, pixel_max = flat.min(axis=1), flat.max(axis=1)
    return pd.DataFrame(
        {
            "height": np.full(n_images, images.shape[1] if images.ndim > 1 else 0),
            "width": np.full(n_images, images.shape[2] if images.ndim > 2 else 0),
            "channels": np.full(n_images, images.shape[3] if images.ndim > 3 else 1),
            "dtype": np.full(n_images, str(images.dtype), dtype=object),
            "pixel_min": pixel_min,
            "pixel_max": pixel_max,
            "nonfinite_pixel_count": nonfinite_count,
            "label": labels,
        }
    )


def _class_balance_frame(labels: np.ndarray, classes: list[int]) -> pd.DataFrame:
    total = max(len(labels), 1)
    counts = [int(np.count_nonzero(labels == c)) for c in classes]
    return pd.DataFrame({"label": classes, "count": counts, "share": [n / total for n in counts]})


def _leakage_frame(dataset: ImageDataset) -> pd.DataFrame:
    pairs = pd.DataFrame(
        {
            "image_sha1": image_digests(dataset.x_train) + image_digests(dataset.x_test),
            "split": ["train"] * len(dataset.x_train) + ["test"] * len(dataset.x_test),
        }
    )
    # Duplicates inside one split are not a leak; only a digest present in both splits survives twice.
    return pairs.drop_duplicates(ignore_index=True)


# ------------------------------------------------------------------------------------------- suites


def _image_expectations(spec: ImageSuiteSpec) -> list[gx.expectations.Expectation]:
    low, high = spec.value_range
    E = gx.expectations
    return [
        E.ExpectTableRowCountToBeBetween(
            min_value=spec.min_images_per_split, description=f"at least {spec.min_images_per_split} images"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="height", min_value=spec.height, max_value=spec.height, description=f"height {spec.height}"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="width", min_value=spec.width, max_value=spec.width, description=f"width {spec.width}"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="channels", min_value=spec.channels, max_value=spec.channels,
            description=f"{spec.channels} channel(s)",
        ),
        E.ExpectColumnValuesToBeInSet(column="dtype", value_set=[spec.dtype], description=f"dtype {spec.dtype}"),
        E.ExpectColumnValuesToBeBetween(
            column="nonfinite_pixel_count", min_value=0, max_value=0, description="no NaN or infinite pixel"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="pixel_min", min_value=low, max_value=high, description=f"pixels within [{low:g}, {high:g}]"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="pixel_max", min_value=low, max_value=high, description=f"pixels within [{low:g}, {high:g}]"
        ),
        E.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(spec.classes), description=f"labels only from {list(spec.classes)}"
        ),
        E.ExpectColumnDistinctValuesToContainSet(
            column="label", value_set=list(spec.classes), description="every declared class present"
        ),
    ]


def _balance_expectations(spec: ImageSuiteSpec) -> list[gx.expectations.Expectation]:
    uniform = 1.0 / len(spec.classes)
    low, high = spec.min_share * uniform, spec.max_share * uniform
    return [
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="share", min_value=low, max_value=high,
            description=f"every class holds {low:.4g}-{high:.4g} of the split "
            f"({spec.min_share:g}-{spec.max_share:g} x the uniform share 1/{len(spec.classes)})",
        )
    ]


def _leakage_expectations() -> list[gx.expectations.Expectation]:
    return [
        gx.expectations.ExpectColumnValuesToBeUnique(
            column="image_sha1",
            description="no byte-identical image in both train and test (each listed digest is in both)",
        )
    ]


class _Validator:
    """One ephemeral GX context; each (part, batch) is a validation definition over an in-memory frame."""

    def __init__(self, suite_name: str) -> None:
        self.suite_name = suite_name
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas(name="frames")
        self.suites: dict[str, gx.ExpectationSuite] = {}

    def add_suite(self, part: str, expectations: list[gx.expectations.Expectation]) -> None:
        suite = self.context.suites.add(gx.ExpectationSuite(name=f"{self.suite_name}.{part}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        self.suites[part] = suite

    def run(self, part: str, batch: str, frame: pd.DataFrame, result_format: dict[str, Any]) -> Any:
        name = f"{part}[{batch}]"
        batch_definition = self.source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=self.suites[part])
        )
        return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


# ------------------------------------------------------------------------------------------ reports


def _readable(value: Any) -> str:
    """Short text for a value from a GX result (numpy scalars, floats with 4 significant digits)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_readable(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + "; ".join(_readable(item) for item in value[:10]) + ("; ...]" if len(value) > 10 else "]")
    return str(value)


def _describe_failure(batch: str, result: Any) -> FailedExpectation:
    config = result.expectation_config
    outcome = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        observed = f"raised {result.exception_info.get('exception_message')}"
    elif outcome.get("unexpected_index_list"):
        observed = (
            f"{outcome['unexpected_count']} of {outcome.get('element_count')} rows unexpected: "
            f"{_readable(outcome['unexpected_index_list'])}"
        )
    elif "unexpected_count" in outcome:
        observed = (
            f"{outcome['unexpected_count']} of {outcome.get('element_count')} values unexpected "
            f"({outcome.get('unexpected_percent') or 0.0:.2f}%), "
            f"e.g. {_readable(outcome.get('partial_unexpected_list'))}"
        )
    else:
        observed = f"observed {_readable(outcome.get('observed_value'))}"
    return FailedExpectation(
        expectation=config.type,
        column=config.kwargs.get("column"),
        details=f"[{batch}] expected {config.description}; {observed}",
    )


def validate_image_dataset(
    path: str | Path, spec: ImageSuiteSpec, suite_name: str = "image_classification"
) -> ValidationReport:
    """Run the image suite declared by `spec` on the dataset directory at `path`.

    Returns the report whatever the outcome; call `raise_for_failure()` to turn a failure into
    DataValidationError. A directory that cannot be loaded raises the loader's error instead.
    """
    dataset = load_image_dataset(path)
    validator = _Validator(suite_name)
    validator.add_suite("images", _image_expectations(spec))
    validator.add_suite("class_balance", _balance_expectations(spec))
    validator.add_suite("leakage", _leakage_expectations())

    splits = {"train": (dataset.x_train, dataset.y_train), "test": (dataset.x_test, dataset.y_test)}
    planned: list[tuple[str, str, pd.DataFrame, dict[str, Any]]] = [
        *[("images", split, _image_frame(*splits[split]), _RESULT_FORMAT) for split in SPLITS],
        *[
            ("class_balance", split, _class_balance_frame(splits[split][1], list(spec.classes)), _BALANCE_RESULT_FORMAT)
            for split in SPLITS
        ],
        ("leakage", "train+test", _leakage_frame(dataset), _RESULT_FORMAT),
    ]
    runs = [(part, batch, validator.run(part, batch, frame, fmt)) for part, batch, frame, fmt in planned]
    return _report(path, suite_name, spec.model_dump(mode="json"), runs)


def _report(
    path: str | Path, suite_name: str, spec: dict[str, Any], runs: list[tuple[str, str, Any]]
) -> ValidationReport:
    """One ValidationReport from the (part, batch, GX result) runs of a suite: shared by every suite runner."""
    failed = [_describe_failure(batch, r) for _, batch, run in runs for r in run.results if not r.success]
    evaluated = sum(run.statistics["evaluated_expectations"] for _, _, run in runs)
    successful = sum(run.statistics["successful_expectations"] for _, _, run in runs)
    success = all(run.success for _, _, run in runs)
    result = {
        "dataset": str(path),
        "suite": suite_name,
        "spec": spec,
        "success": success,
        "statistics": {"evaluated_expectations": evaluated, "successful_expectations": successful},
        # A JSON round trip turns GX's numpy scalars and tuples into plain types for MLflow's log_dict.
        "validations": [
            {
                "suite": f"{suite_name}.{part}",
                "batch": batch,
                "result": json.loads(json.dumps(run.to_json_dict(), default=str)),
            }
            for part, batch, run in runs
        ],
    }
    return ValidationReport(
        dataset=str(path),
        suite=suite_name,
        success=success,
        evaluated=evaluated,
        successful=successful,
        failed=failed,
        result=result,
    )


# ------------------------------------------------------------------------------------- text corpus
#
# Text is summarised like images: ``splits`` has one row per declared split (file present, decodes as UTF-8,
# characters, non-empty lines, share of non-printable characters, vocabulary coverage by train); ``overlap``
# holds the distinct (line sha1, side) pairs of lines of at least `overlap_min_chars` characters, side being
# train or held-out, so ExpectColumnValuesToBeUnique fails exactly when a line is in train and in a held-out
# split. A missing split is a row with present=0 and null statistics (nulls are skipped by the range checks),
# so it fails once, on `present`.

_SPLIT_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["split"],
    "return_unexpected_index_query": False,
}


def _read_split_texts(path: Path, splits: list[str]) -> dict[str, tuple[str, bool] | None]:
    """split -> (text, decoded as strict UTF-8) or None when its file is missing; replacement chars on bad bytes."""
    texts: dict[str, tuple[str, bool] | None] = {}
    for split in splits:
        file = path / f"{split}.txt"
        if not file.is_file():
            texts[split] = None
            continue
        raw = file.read_bytes()
        try:
            texts[split] = (raw.decode("utf-8"), True)
        except UnicodeDecodeError:
            texts[split] = (raw.decode("utf-8", errors="replace"), False)
    return texts


def _text_split_frame(texts: dict[str, tuple[str, bool] | None], spec: TextSuiteSpec) -> pd.DataFrame:
    train = texts.get(spec.train_split)
    train_vocab = set(text_words(train[0])) if train else set()
    rows = []
    for split, entry in texts.items():
        if entry is None:
            rows.append({"split": split, "present": 0, "utf8_valid": None, "n_chars": None, "n_lines": None,
                         "nonprintable_fraction": None, "vocab_coverage": None})
            continue
        text, valid = entry
        coverage = None if split == spec.train_split or train is None else vocab_coverage(text, train_vocab)
        rows.append({"split": split, "present": 1, "utf8_valid": int(valid), "n_chars": len(text),
                     "n_lines": len(nonempty_lines(text)), "nonprintable_fraction": nonprintable_fraction(text),
                     "vocab_coverage": coverage})
    frame = pd.DataFrame(rows)
    for column in ("utf8_valid", "n_chars", "n_lines", "nonprintable_fraction", "vocab_coverage"):
        frame[column] = frame[column].astype("float64")  # None -> NaN: skipped by the range expectations
    return frame


def _text_overlap_frame(texts: dict[str, tuple[str, bool] | None], spec: TextSuiteSpec) -> pd.DataFrame:
    digests, sides = [], []
    for split, entry in texts.items():
        if entry is None:
            continue
        found = sorted(line_digests(entry[0], spec.overlap_min_chars))
        digests += found
        sides += ["train" if split == spec.train_split else "held_out"] * len(found)
    pairs = pd.DataFrame({"line_sha1": digests, "side": sides}, dtype=object)
    # A line repeated inside train, or shared by two held-out splits, is no leak: one row per (line, side).
    return pairs.drop_duplicates(ignore_index=True)


def _text_expectations(spec: TextSuiteSpec) -> list[gx.expectations.Expectation]:
    E = gx.expectations
    return [
        E.ExpectColumnValuesToBeBetween(column="present", min_value=1, max_value=1,
                                        description=f"every split file present ({', '.join(spec.splits)})"),
        E.ExpectColumnValuesToBeBetween(column="utf8_valid", min_value=1, max_value=1,
                                        description=f"every split decodes as {spec.encoding}"),
        E.ExpectColumnValuesToBeBetween(column="n_chars", min_value=spec.min_chars, max_value=spec.max_chars,
                                        description=f"{spec.min_chars:,}-{spec.max_chars:,} characters per split"),
        E.ExpectColumnValuesToBeBetween(column="n_lines", min_value=spec.min_lines,
                                        description=f"at least {spec.min_lines:,} non-empty lines per split"),
        E.ExpectColumnValuesToBeBetween(
            column="nonprintable_fraction", min_value=0.0, max_value=spec.max_nonprintable_fraction,
            description=f"at most {spec.max_nonprintable_fraction:g} of the characters outside printable ASCII",
        ),
        E.ExpectColumnValuesToBeBetween(
            column="vocab_coverage", min_value=spec.min_vocab_coverage, max_value=1.0,
            description=f"at least {spec.min_vocab_coverage:g} of each held-out split's words in the train vocabulary",
        ),
    ]


def _text_overlap_expectations(spec: TextSuiteSpec) -> list[gx.expectations.Expectation]:
    return [
        gx.expectations.ExpectColumnValuesToBeUnique(
            column="line_sha1",
            description=f"no line of >= {spec.overlap_min_chars} characters in both train and a held-out split "
            "(each listed digest is on both sides)",
        )
    ]


def validate_text_dataset(path: str | Path, spec: TextSuiteSpec, suite_name: str = "text_corpus") -> ValidationReport:
    """Run the text suite declared by `spec` on the text dataset directory at `path` (one ``<split>.txt`` per split).

    A missing or undecodable split file is a failed expectation, not an exception; only a missing directory raises.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist (build it with `dvc repro`)")
    texts = _read_split_texts(root, spec.splits)
    validator = _Validator(suite_name)
    validator.add_suite("splits", _text_expectations(spec))
    validator.add_suite("overlap", _text_overlap_expectations(spec))
    held_out = "+".join(spec.held_out_splits)
    planned: list[tuple[str, str, pd.DataFrame, dict[str, Any]]] = [
        ("splits", ",".join(spec.splits), _text_split_frame(texts, spec), _SPLIT_RESULT_FORMAT),
        ("overlap", f"{spec.train_split} vs {held_out}", _text_overlap_frame(texts, spec), _RESULT_FORMAT),
    ]
    runs = [(part, batch, validator.run(part, batch, frame, fmt)) for part, batch, frame, fmt in planned]
    return _report(path, suite_name, spec.model_dump(mode="json"), runs)


# ------------------------------------------------------------------------------- few-shot classes
#
# A few-shot dataset has three class-disjoint splits (base / val / novel). Summarised as: ``images`` (one row per
# image, run once per split: shape, dtype, value range, non-finite pixels, share of inked pixels), ``classes`` (one
# row per class of a split: images per class; the row count is the split's class count), ``class_splits`` (the
# distinct (class, split) pairs: a class id unique there is in one split only) and ``leakage`` (the distinct
# (image sha1, split) pairs: no byte-identical image in two splits).

_CLASS_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["label"],
    "return_unexpected_index_query": False,
}


INK_LEVEL = 63.75  # a quarter of the 0-255 range: 5.3 sigma above black for the builders' noise of sigma 12


def _fewshot_image_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    frame = _image_frame(images, labels)
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
    # Ink is anything above a quarter of full scale, not mid-grey: a thin stroke that was eroded and then
    # down-sampled can peak at 144 with one pixel above 127.5 and still be a legible glyph (glyphs, novel split).
    frame["ink_fraction"] = (flat > INK_LEVEL).mean(axis=1)  # NaN counts as not inked; reported on its own
    return frame


def _fewshot_image_expectations(spec: FewShotSuiteSpec) -> list[gx.expectations.Expectation]:
    low, high = spec.value_range
    ink_low, ink_high = spec.ink_fraction
    E = gx.expectations
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1, description="at least one image"),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=spec.height, max_value=spec.height,
                                        description=f"height {spec.height}"),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=spec.width, max_value=spec.width,
                                        description=f"width {spec.width}"),
        E.ExpectColumnValuesToBeBetween(column="channels", min_value=1, max_value=1, description="1 channel"),
        E.ExpectColumnValuesToBeInSet(column="dtype", value_set=[spec.dtype], description=f"dtype {spec.dtype}"),
        E.ExpectColumnValuesToBeBetween(column="nonfinite_pixel_count", min_value=0, max_value=0,
                                        description="no NaN or infinite pixel"),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=low, max_value=high,
                                        description=f"pixels within [{low:g}, {high:g}]"),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=low, max_value=high,
                                        description=f"pixels within [{low:g}, {high:g}]"),
        E.ExpectColumnValuesToBeBetween(column="ink_fraction", min_value=ink_low, max_value=ink_high,
                                        description=f"{ink_low:g}-{ink_high:g} of the pixels inked (above "
                                        f"{INK_LEVEL:g}): no blank, missing-glyph or inverted image"),
    ]


def _fewshot_class_expectations(spec: FewShotSuiteSpec, n_classes: int) -> list[gx.expectations.Expectation]:
    E = gx.expectations
    return [
        E.ExpectTableRowCountToEqual(value=n_classes, description=f"{n_classes} classes in the split"),
        E.ExpectColumnValuesToBeBetween(column="count", min_value=spec.min_images_per_class,
                                        description=f"at least {spec.min_images_per_class} images per class"),
    ]


def validate_fewshot_dataset(path: str | Path, spec: FewShotSuiteSpec,
                             suite_name: str = "few_shot_classes") -> ValidationReport:
    """Run the few-shot suite declared by `spec` on a dataset directory written by data.fewshot."""
    dataset = load_fewshot_dataset(path)
    validator = _Validator(suite_name)
    validator.add_suite("images", _fewshot_image_expectations(spec))
    unknown = sorted(set(spec.classes_per_split) - set(FEWSHOT_SPLITS))
    if unknown:
        raise ValueError(f"classes_per_split names unknown split(s) {unknown}; splits: {', '.join(FEWSHOT_SPLITS)}")
    for split in FEWSHOT_SPLITS:
        validator.add_suite(f"classes_{split}", _fewshot_class_expectations(spec, spec.classes_per_split.get(split, 0)))
    validator.add_suite("class_splits", [gx.expectations.ExpectColumnValuesToBeUnique(
        column="label", description="every class in exactly one split (base, val and novel classes are disjoint)")])
    validator.add_suite("leakage", [gx.expectations.ExpectColumnValuesToBeUnique(
        column="image_sha1", description="no byte-identical image in two splits (each listed digest is in two)")])

    planned: list[tuple[str, str, pd.DataFrame, dict[str, Any]]] = []
    for split in FEWSHOT_SPLITS:
        planned.append(("images", split, _fewshot_image_frame(dataset.x[split], dataset.y[split]), _RESULT_FORMAT))
        labels, counts = np.unique(dataset.y[split], return_counts=True)
        planned.append((f"classes_{split}", split, pd.DataFrame({"label": labels, "count": counts}),
                        _CLASS_RESULT_FORMAT))
    pairs = pd.DataFrame({"label": np.concatenate([np.unique(dataset.y[s]) for s in FEWSHOT_SPLITS]),
                          "split": np.concatenate([[s] * len(np.unique(dataset.y[s])) for s in FEWSHOT_SPLITS])})
    planned.append(("class_splits", "base+val+novel", pairs, _CLASS_RESULT_FORMAT))
    digests = pd.DataFrame({"image_sha1": sum((fewshot_digests(dataset.x[s]) for s in FEWSHOT_SPLITS), []),
                            "split": sum(([s] * len(dataset.x[s]) for s in FEWSHOT_SPLITS), [])})
    planned.append(("leakage", "base+val+novel", digests.drop_duplicates(ignore_index=True), _RESULT_FORMAT))
    runs = [(part, batch, validator.run(part, batch, frame, fmt)) for part, batch, frame, fmt in planned]
    return _report(path, suite_name, spec.model_dump(mode="json"), runs)


# ------------------------------------------------------------------------------- the Prefect task

# Suite name (a paper config's data.suite) -> the spec its `expect` block must satisfy and the runner.
SUITES = {
    "image_classification": (ImageSuiteSpec, validate_image_dataset),
    "text_corpus": (TextSuiteSpec, validate_text_dataset),
    "few_shot_classes": (FewShotSuiteSpec, validate_fewshot_dataset),
}


@task(name="validate", retries=0)
def validate_data(dataset: DatasetRef, data: DataSection) -> ValidationReport:
    """Never retried and never raising on a failed suite: the flow logs the report first, then raises."""
    if data.suite not in SUITES:
        raise ValueError(f"data.suite {data.suite!r} is unknown; suites: {', '.join(SUITES)}")
    spec_model, run_suite = SUITES[data.suite]
    try:
        spec = spec_model.model_validate(data.expect)
    except ValidationError as exc:
        raise ValueError(f"data.expect does not fit suite {data.suite!r}: {exc}") from exc
    return run_suite(dataset.path, spec, suite_name=data.suite)
