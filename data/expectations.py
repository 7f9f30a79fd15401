"""Data-quality suites declared as data: what a data family checks, with no validation library imported here.

A dataset is not handed to a validator pixel by pixel or line by line; a family summarises it into small pandas
frames (one row per image, per class, per split, ...) and declares, for each frame, the expectations it must meet
in Great Expectations' own serialized form: the expectation type as GX suite JSON names it (e.g.
``"expect_column_values_to_be_between"``) plus its kwargs. tasks/validate.py turns the declarations into GX
suites and runs them; adding a data family is one data/<family>_suite.py and one entry in data/suites.py.

Vocabulary (the names the GX result JSON and the failure messages use):

* a suite ``<suite>`` is split into parts; part ``p`` becomes the GX ExpectationSuite ``<suite>.<p>``;
* a batch is one frame a part runs on, named by the split(s) it summarises (``train``, ``base+val+novel``): a
  part runs once per batch declared for it, e.g. the per-image checks once for train and once for test.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel


@dataclass(frozen=True)
class Expectation:
    """One expectation as a GX suite JSON stores it: `type`, `kwargs` and the human description."""

    type: str  # e.g. "expect_column_values_to_be_between"
    kwargs: dict[str, Any]
    description: str  # what is expected, in words: the failure message quotes it

    def __post_init__(self) -> None:
        if not self.type.startswith("expect_"):
            raise ValueError(f"type must be a GX expectation type (expect_...), got {self.type!r}")


def between(column: str, low: float | None = None, high: float | None = None, *, description: str) -> Expectation:
    """Every value of `column` in [low, high] (None: unbounded on that side)."""
    kwargs: dict[str, Any] = {"column": column}
    if low is not None:
        kwargs["min_value"] = low
    if high is not None:
        kwargs["max_value"] = high
    return Expectation("expect_column_values_to_be_between", kwargs, description)


def in_set(column: str, values: list[Any], *, description: str) -> Expectation:
    return Expectation("expect_column_values_to_be_in_set", {"column": column, "value_set": list(values)}, description)


def unique(column: str, *, description: str) -> Expectation:
    return Expectation("expect_column_values_to_be_unique", {"column": column}, description)


@dataclass(frozen=True)
class SuitePart:
    """Expectations that run together on every batch of one frame kind."""

    name: str
    expectations: tuple[Expectation, ...]
    # Columns that name a failing row in the failure message ("label 3 has share 0.02" rather than "row 3");
    # empty: a failure lists a few unexpected values instead.
    unexpected_index_column_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Batch:
    """One frame the expectations of part `part` run on; `name` says which split(s) it summarises."""

    part: str
    name: str
    frame: pd.DataFrame = field(repr=False)


@dataclass(frozen=True)
class DeclaredSuite:
    """A suite made concrete for one dataset: its parts, the batches (frames) they run on, and the dataset's
    profile (data/drift.py: the statistics the next version is compared with once this one has passed)."""

    parts: tuple[SuitePart, ...]
    batches: tuple[Batch, ...]
    profile: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        names = [part.name for part in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"suite parts must have distinct names, got {names}")
        orphans = sorted({b.part for b in self.batches} - set(names))
        if orphans:
            raise ValueError(f"batches name undeclared part(s) {orphans}; parts: {names}")


# (reference profile, reference md5, new profile, spec) -> the drift parts and their batches (data/drift.py)
DeclareDrift = Callable[[dict[str, Any], str, dict[str, Any], Any], list[tuple[SuitePart, Batch]]]


@dataclass(frozen=True)
class DataSuite:
    """A data family's suite: `spec` is what a config's `data.expect` must satisfy; `declare` reads the dataset
    directory and returns the frames and expectations for that spec (a directory it cannot read raises);
    `split_roles` is the family's declaration of the role (data/views.py: fit, val, test) each split plays;
    `drift` compares the profile of a new version with that of the last validated one."""

    name: str  # a config's data.suite; recorded on registered versions (gx.suite): never rename
    spec: type[BaseModel]
    declare: Callable[[Path, Any], DeclaredSuite]
    split_roles: dict[str, str]
    drift: DeclareDrift
