"""The ``text_corpus`` suite: a plain-text corpus with one ``<split>.txt`` per split (data/text.py's layout).

Text is summarised like images: ``splits`` has one row per declared split (file present, decodes as UTF-8,
characters, non-empty lines, share of non-printable characters, vocabulary coverage by train); ``overlap`` holds
the distinct (line sha1, role) pairs of lines of at least `overlap_min_chars` characters, the role being the split's
(data/views.py: fit for train and calib, val, test for the eval splits), so the uniqueness expectation fails exactly
when a line is in splits of two roles: a val line in train, a test line in train or val. A missing or empty split
(val included) is a row with present=0, or with 0 characters, and fails on `present` or on the size bounds; a
missing or undecodable split file is a failed expectation, not an exception. ``splits`` also bounds the share of
empty lines; ``longest_line`` has one row per split with its longest line (1-based line number and length).
Its profile (data/drift.py) holds per split the character distribution, the mean non-empty line length and the
share of empty lines; with a reference, the ``drift_*`` parts compare them with the last validated version.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.drift import empty_line_fraction, text_drift, text_lines, text_profile
from data.expectations import Batch, DataSuite, DeclaredSuite, Expectation, SuitePart, between, unique
from data.text import (
    SPLIT_ROLES, TextSuiteSpec, line_digests, nonempty_lines, nonprintable_fraction, vocab_coverage, words,
)
from data.views import FIT, ROLES, TEST

SplitTexts = dict[str, tuple[str, bool] | None]


def read_split_texts(path: Path, splits: list[str]) -> SplitTexts:
    """split -> (text, decoded as strict UTF-8) or None when its file is missing; replacement chars on bad bytes."""
    texts: SplitTexts = {}
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


def split_frame(texts: SplitTexts, spec: TextSuiteSpec) -> pd.DataFrame:
    train = texts.get(spec.train_split)
    train_vocab = set(words(train[0])) if train else set()
    rows = []
    for split, entry in texts.items():
        if entry is None:
            rows.append({"split": split, "present": 0, "utf8_valid": None, "n_chars": None, "n_lines": None,
                         "empty_line_fraction": None, "nonprintable_fraction": None, "vocab_coverage": None})
            continue
        text, valid = entry
        coverage = None if split == spec.train_split or train is None else vocab_coverage(text, train_vocab)
        rows.append({"split": split, "present": 1, "utf8_valid": int(valid), "n_chars": len(text),
                     "n_lines": len(nonempty_lines(text)), "empty_line_fraction": empty_line_fraction(text_lines(text)),
                     "nonprintable_fraction": nonprintable_fraction(text), "vocab_coverage": coverage})
    frame = pd.DataFrame(rows)
    for column in ("utf8_valid", "n_chars", "n_lines", "empty_line_fraction", "nonprintable_fraction",
                   "vocab_coverage"):
        frame[column] = frame[column].astype("float64")  # None -> NaN: skipped by the range expectations
    return frame


def longest_line_frame(texts: SplitTexts) -> pd.DataFrame:
    """One row per split that has lines: the number (1-based) and length of its longest line."""
    rows = []
    for split, entry in texts.items():
        lengths = [len(line) for line in text_lines(entry[0])] if entry is not None else []
        if lengths:
            longest = max(range(len(lengths)), key=lengths.__getitem__)
            rows.append({"split": split, "line": longest + 1, "chars": lengths[longest]})
    return pd.DataFrame(rows, columns=["split", "line", "chars"])


def split_role(split: str, spec: TextSuiteSpec) -> str:
    """The role a split plays: the spec's train split is fit data, a split the family does not know is held out."""
    return FIT if split == spec.train_split else SPLIT_ROLES.get(split, TEST)


def overlap_frame(texts: SplitTexts, spec: TextSuiteSpec) -> pd.DataFrame:
    digests, roles = [], []
    for split, entry in texts.items():
        if entry is None:
            continue
        found = sorted(line_digests(entry[0], spec.overlap_min_chars))
        digests += found
        roles += [split_role(split, spec)] * len(found)
    pairs = pd.DataFrame({"line_sha1": digests, "role": roles}, dtype=object)
    # A line repeated inside a split, or shared by two splits of one role, is no leak: one row per (line, role).
    return pairs.drop_duplicates(ignore_index=True)


def split_expectations(spec: TextSuiteSpec) -> list[Expectation]:
    return [
        between("present", 1, 1, description=f"every split file present ({', '.join(spec.splits)})"),
        between("utf8_valid", 1, 1, description=f"every split decodes as {spec.encoding}"),
        between("n_chars", spec.min_chars, spec.max_chars,
                description=f"{spec.min_chars:,}-{spec.max_chars:,} characters per split"),
        between("n_lines", spec.min_lines, description=f"at least {spec.min_lines:,} non-empty lines per split"),
        between("empty_line_fraction", 0.0, spec.max_empty_line_fraction,
                description=f"at most {spec.max_empty_line_fraction:g} of each split's lines empty"),
        between("nonprintable_fraction", 0.0, spec.max_nonprintable_fraction,
                description=f"at most {spec.max_nonprintable_fraction:g} of the characters outside printable ASCII"),
        between("vocab_coverage", spec.min_vocab_coverage, 1.0,
                description=f"at least {spec.min_vocab_coverage:g} of each held-out split's words in the train "
                "vocabulary"),
    ]


def declare(path: Path, spec: TextSuiteSpec) -> DeclaredSuite:
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory {path} does not exist (build it with `dvc repro`)")
    texts = read_split_texts(path, spec.splits)
    parts = (
        SuitePart("splits", tuple(split_expectations(spec)), unexpected_index_column_names=("split",)),
        SuitePart("longest_line", (between("chars", 0, spec.max_line_chars, description=f"no line longer than "
                                           f"{spec.max_line_chars:,} characters"),),
                  unexpected_index_column_names=("split", "line")),
        SuitePart("overlap", (unique("line_sha1", description=f"no line of >= {spec.overlap_min_chars} characters "
                                     "in splits of two roles (fit, val, test; each listed digest is in two)"),)),
    )
    by_role = [[s for s in spec.splits if split_role(s, spec) == role] for role in ROLES]
    batches = (
        Batch("splits", ",".join(spec.splits), split_frame(texts, spec)),
        Batch("longest_line", ",".join(spec.splits), longest_line_frame(texts)),
        Batch("overlap", " vs ".join("+".join(splits) for splits in by_role if splits), overlap_frame(texts, spec)),
    )
    profile = text_profile({split: entry[0] for split, entry in texts.items() if entry is not None})
    return DeclaredSuite(parts, batches, profile)


TEXT_CORPUS = DataSuite("text_corpus", TextSuiteSpec, declare, SPLIT_ROLES, text_drift)
