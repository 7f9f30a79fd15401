"""Great Expectations 1.x runner of the dataset suites that data/ declares (data/expectations.py, data/suites.py).

A suite arrives as data: parts (lists of expectations in GX's serialized form: type + kwargs + description) and
batches (small pandas frames that summarise a dataset, one per split or group of splits). This module turns each
part into a GX ExpectationSuite ``<suite>.<part>``, runs it on each of its batches in an ephemeral context, and
reports every failed expectation with its batch, the bounds asked for and what was observed. It knows no data
family: the Prefect task `validate_data` looks a config's `data.suite` up in data.suites.SUITES.

Drift: the profile of every dataset version that passes validation is kept, as the reference of the next version
of the same dataset (same DVC output name and suite), in ``$PAPEROPS_HOME/data-references/<suite>/<dataset>.json``
(it outlives runs, like the MLflow store beside it). A later version runs the suite's ``drift_*`` parts against it;
their figures are in the GX result (``result["drift"]`` and the ``drift_*`` validations). A shift beyond a bound
fails validation unless the user accepts the data change (`paperops run --accept-data-change`): the accepted
shifts are then recorded, not failed, and the new version becomes the reference. A first-ever validation has no
reference: nothing to compare, which the result says.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.exceptions import GreatExpectationsError
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from prefect import task
from pydantic import BaseModel

from data.dataset_dir import DatasetFormatError
from data.drift import DRIFT_PART_PREFIX
from data.expectations import Batch, DataSuite, SuitePart
from data.suites import suite_spec
from recipes.base import DataSection
from settings import state_dir
from tasks.data import DatasetRef

# Every ephemeral context logs an INFO line about its temporary docs directory: noise in flow logs.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
_RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
# The expectation a dataset fails when its files cannot be read at all (before any GX expectation can run).
UNREADABLE = "dataset_files_readable"
REFERENCES_DIR = "data-references"  # under PAPEROPS_HOME: the profile of each dataset's last validated version


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_in_set"
    column: str | None
    details: str  # which batch, the bounds asked for and what was observed


class DataValidationError(Exception):
    """A dataset failed its suite; str() lists every failed expectation on its own line."""

    def __init__(self, dataset: str, suite: str, failed: list[FailedExpectation], drifted: bool = False) -> None:
        self.dataset = dataset
        self.suite = suite
        self.failed = list(failed)
        self.drifted = drifted  # some failures are drift from the last validated version: the user may accept it
        lines = [f"dataset {dataset} failed {len(self.failed)} expectation(s) of suite {suite!r}:"]
        lines += [
            f"  - {f.expectation}{f' ({f.column})' if f.column else ''}: {f.details}" for f in self.failed
        ]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class DataReference:
    """The last validated version of a dataset: its DVC md5 and its profile (data/drift.py)."""

    md5: str
    profile: dict[str, Any] = field(repr=False)
    validated_at: str = ""  # UTC, ISO 8601
    pipeline_run_id: str = ""  # the run whose validation recorded it ("" outside a pipeline)


class DataReferenceError(Exception):
    """The stored reference of a dataset cannot be read (validation stops: drift cannot be checked)."""


@dataclass(frozen=True)
class ValidationReport:
    dataset: str
    suite: str
    success: bool
    evaluated: int
    successful: int
    failed: list[FailedExpectation]  # what stops the run: every failure, less the drift the user accepted
    result: dict[str, Any]  # GX validation results as plain JSON types, ready to log as an artifact
    profile: dict[str, Any] = field(default_factory=dict, repr=False)  # this version's statistics (data/drift.py)
    drift_exceeded: list[FailedExpectation] = field(default_factory=list)  # drift beyond a bound, failed or accepted
    data_change_accepted: bool = False  # drift beyond a bound, accepted by the user (--accept-data-change)

    def raise_for_failure(self) -> None:
        if not self.success:
            raise DataValidationError(self.dataset, self.suite, self.failed,
                                      drifted=bool(self.drift_exceeded) and not self.data_change_accepted)


def _result_format(part: SuitePart) -> dict[str, Any]:
    if not part.unexpected_index_column_names:
        return _RESULT_FORMAT
    # Naming the rows by a column turns "share 0.02 unexpected" into "label 3 has share 0.02".
    return {"result_format": "COMPLETE", "unexpected_index_column_names": list(part.unexpected_index_column_names),
            "return_unexpected_index_query": False}


class _Validator:
    """One ephemeral GX context; each part is a GX suite, each batch a validation definition over its frame."""

    def __init__(self, suite_name: str) -> None:
        self.suite_name = suite_name
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas(name="frames")
        self.parts: dict[str, tuple[gx.ExpectationSuite, dict[str, Any]]] = {}

    def add_part(self, part: SuitePart) -> None:
        suite = self.context.suites.add(gx.ExpectationSuite(name=f"{self.suite_name}.{part.name}"))
        for declared in part.expectations:
            configuration = ExpectationConfiguration(type=declared.type, kwargs=dict(declared.kwargs),
                                                     description=declared.description)
            try:
                expectation = configuration.to_domain_obj()
            except (GreatExpectationsError, ValueError) as exc:  # unknown type; kwargs the type does not take
                raise ValueError(f"suite {suite.name!r} declares an invalid expectation {declared.type} "
                                 f"{declared.kwargs}: {exc}") from exc
            suite.add_expectation(expectation)
        self.parts[part.name] = (suite, _result_format(part))

    def run(self, batch: Batch) -> Any:
        suite, result_format = self.parts[batch.part]
        name = f"{batch.part}[{batch.name}]"
        batch_definition = self.source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        return definition.run(batch_parameters={"dataframe": batch.frame}, result_format=result_format)


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


def _drift_summary(reference: DataReference | None, drift_batches: list[Batch], exceeded: list[FailedExpectation],
                   accepted: bool) -> dict[str, Any]:
    """The drift section of the GX result: the reference, every figure, what exceeded its bound, the acceptance."""
    if reference is None:
        return {"reference": None, "note": "first validated version of this dataset: no reference to compare with; "
                "this version becomes the reference once it passes"}
    return {
        "reference": {"md5": reference.md5, "validated_at": reference.validated_at,
                      "pipeline_run_id": reference.pipeline_run_id},
        "figures": {batch.part.removeprefix(DRIFT_PART_PREFIX): batch.frame.to_dict(orient="records")
                    for batch in drift_batches},
        "exceeded": [f"{f.expectation}({f.column}): {f.details}" for f in exceeded],
        "accepted": accepted,
    }


def _report(
    path: str | Path, suite_name: str, spec: dict[str, Any], runs: list[tuple[str, str, Any]],
    reference: DataReference | None = None, drift_batches: list[Batch] | None = None, accept_data_change: bool = False,
    profile: dict[str, Any] | None = None,
) -> ValidationReport:
    """One ValidationReport from the (part, batch, GX result) runs of a suite; with `accept_data_change`, failed
    drift parts are recorded as accepted instead of failing the report."""
    failures = [(part, _describe_failure(batch, r)) for part, batch, run in runs for r in run.results
                if not r.success]
    exceeded = [f for part, f in failures if part.startswith(DRIFT_PART_PREFIX)]
    accepted = accept_data_change and bool(exceeded)
    failed = [f for part, f in failures if not (accepted and part.startswith(DRIFT_PART_PREFIX))]
    evaluated = sum(run.statistics["evaluated_expectations"] for _, _, run in runs)
    successful = sum(run.statistics["successful_expectations"] for _, _, run in runs)
    success = not failed
    result = {
        "dataset": str(path),
        "suite": suite_name,
        "spec": spec,
        "success": success,
        "statistics": {"evaluated_expectations": evaluated, "successful_expectations": successful},
        "drift": _drift_summary(reference, drift_batches or [], exceeded, accepted),
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
        profile=profile or {},
        drift_exceeded=exceeded,
        data_change_accepted=accepted,
    )


def _unreadable_report(path: str | Path, suite_name: str, spec: dict[str, Any], error: Exception) -> ValidationReport:
    """The report of a dataset whose files the suite could not read: one failed expectation, the loader's message."""
    failed = FailedExpectation(expectation=UNREADABLE, column=None, details=str(error))
    result = {"dataset": str(path), "suite": suite_name, "spec": spec, "success": False,
              "statistics": {"evaluated_expectations": 1, "successful_expectations": 0},
              "unreadable": str(error)}
    return ValidationReport(dataset=str(path), suite=suite_name, success=False, evaluated=1, successful=0,
                            failed=[failed], result=result)


# ------------------------------------------------------------------------------------------- runner


def validate_dataset(suite: DataSuite, path: str | Path, spec: BaseModel, reference: DataReference | None = None,
                     accept_data_change: bool = False) -> ValidationReport:
    """Run `suite` with `spec` on the dataset directory at `path`, and its drift parts against `reference` (the
    last validated version of the dataset; None: a first validation, nothing to compare).

    Returns the report whatever the outcome; call `raise_for_failure()` to turn a failure into
    DataValidationError. A file the suite cannot read or decode (empty, truncated, unreadable, missing from the
    directory) is a failed expectation that names it; a directory that does not exist raises its loader's error.
    Drift beyond a bound fails the report unless `accept_data_change`.
    """
    if not isinstance(spec, suite.spec):
        raise TypeError(f"suite {suite.name!r} takes a {suite.spec.__name__}, got {type(spec).__name__}")
    try:
        declared = suite.declare(Path(path), spec)
    except (DatasetFormatError, OSError) as exc:
        if not Path(path).is_dir():
            raise
        return _unreadable_report(path, suite.name, spec.model_dump(mode="json"), exc)
    drift = [] if reference is None else suite.drift(reference.profile, reference.md5, declared.profile, spec)
    validator = _Validator(suite.name)
    for part in (*declared.parts, *(part for part, _ in drift)):
        validator.add_part(part)
    batches = [*declared.batches, *(batch for _, batch in drift)]
    runs = [(batch.part, batch.name, validator.run(batch)) for batch in batches]
    return _report(path, suite.name, spec.model_dump(mode="json"), runs, reference, [batch for _, batch in drift],
                   accept_data_change, declared.profile)


# ------------------------------------------------------------------------------------- references


def reference_file(dataset: str, suite: str) -> Path:
    return state_dir() / REFERENCES_DIR / suite / f"{dataset}.json"


def load_reference(dataset: str, suite: str) -> DataReference | None:
    """The last validated version of `dataset` under `suite`, or None before its first validation; a reference file
    that cannot be read raises DataReferenceError naming it."""
    file = reference_file(dataset, suite)
    if not file.is_file():
        return None
    try:
        stored = json.loads(file.read_text(encoding="utf-8"))
        return DataReference(md5=stored["md5"], profile=stored["profile"], validated_at=stored["validated_at"],
                             pipeline_run_id=stored["pipeline_run_id"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataReferenceError(f"the reference of dataset {dataset!r} ({file}) cannot be read: "
                                 f"{type(exc).__name__}: {exc}; remove it to validate the dataset as new") from exc


def store_reference(dataset: DatasetRef, suite: str, report: ValidationReport, pipeline_run_id: str = "") -> Path:
    """Keep `report`'s profile as the reference of `dataset` (written whole: a reader never sees half a file)."""
    if not report.success:
        raise ValueError(f"dataset {dataset.name} failed validation: it cannot become the reference")
    file = reference_file(dataset.name, suite)
    file.parent.mkdir(parents=True, exist_ok=True)
    stored = {"dataset": dataset.name, "stage": dataset.stage, "suite": suite, "md5": dataset.md5,
              "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pipeline_run_id": pipeline_run_id,
              "profile": report.profile}
    handle, staging = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(stored, out)
    os.replace(staging, file)
    return file


@task(name="validate", retries=0)
def validate_data(dataset: DatasetRef, data: DataSection, accept_data_change: bool = False,
                  pipeline_run_id: str = "") -> ValidationReport:
    """Never retried and never raising on a failed suite: the flow logs the report first, then raises. A version
    that passes becomes the reference of the dataset's next version."""
    suite, spec = suite_spec(data.suite, data.expect)
    report = validate_dataset(suite, dataset.path, spec, load_reference(dataset.name, suite.name), accept_data_change)
    if report.success:
        store_reference(dataset, suite.name, report, pipeline_run_id)
    return report
