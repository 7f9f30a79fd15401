"""The image-classification GX suite accepts real data and rejects each kind of bad data; DVC adapters."""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import json
import re
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from data import ImageSuiteSpec, load_image_dataset
from tasks.data import DataInfrastructureError, DataStageError, dataset_ref, reproduce_dataset
from data.images import FASHION_MNIST_ROOT_ENV
from data.images_suite import IMAGE_CLASSIFICATION
from tasks.validate import UNREADABLE, DataValidationError, FailedExpectation, validate_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_SPEC = ImageSuiteSpec(height=28, width=28, classes=list(range(10)), min_share=0.5, max_share=1.5,
                            min_images_per_split=500)
BETWEEN, IN_SET, UNIQUE = (
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_be_unique",
)




def _failed(failures: list[FailedExpectation]) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in failures}


def test_real_mnist5k_passes_every_expectation(mnist_dir: Path) -> None:
    report = validate_dataset(IMAGE_CLASSIFICATION, mnist_dir, MNIST_SPEC)

    assert report.success, report.failed
    # 11 per-image expectations x 3 splits (train, val, test) + class balance x 3 splits + 1 leakage check.
    assert (report.evaluated, report.successful, report.failed) == (37, 37, [])
    assert report.suite == "image_classification"
    assert len(report.result["validations"]) == 7
    json.dumps(report.result)  # loggable as an MLflow artifact as is
    report.raise_for_failure()


def test_a_nan_pixel_in_float_storage_is_rejected(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    x_train = dataset.x_train.astype(np.float32)
    x_train[17, 3, 4] = np.nan
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(mnist_dir, tmp_path / "nan", x_train=x_train), MNIST_SPEC)

    assert not report.success
    # The float storage itself breaks the dtype rule; the NaN is caught on its own, in exactly one image.
    assert _failed(report.failed) == {(BETWEEN, "nonfinite_pixel_count"), (IN_SET, "dtype")}
    nonfinite = next(f for f in report.failed if f.column == "nonfinite_pixel_count")
    assert nonfinite.details.startswith("[train]") and "1 of 3500 values unexpected" in nonfinite.details


def test_wrong_image_height_is_rejected_in_both_splits(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    bad = variant(mnist_dir, tmp_path / "short", x_train=dataset.x_train[:, :27], x_test=dataset.x_test[:, :27])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    assert _failed(report.failed) == {(BETWEEN, "height")}
    assert sorted(f.details[:7] for f in report.failed) == ["[test] ", "[train]"]


def test_an_unknown_label_is_rejected(mnist_dir: Path, tmp_path: Path, variant) -> None:
    y_test = load_image_dataset(mnist_dir).y_test.copy()
    y_test[5] = 11
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(mnist_dir, tmp_path / "label", y_test=y_test), MNIST_SPEC)

    assert _failed(report.failed) == {(IN_SET, "label")}
    assert "[test]" in report.failed[0].details and "[11]" in report.failed[0].details


def test_a_train_image_copied_into_test_is_a_leak(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    x_test, y_test = dataset.x_test.copy(), dataset.y_test.copy()
    x_test[0], y_test[0] = dataset.x_train[123], dataset.y_train[123]
    bad = variant(mnist_dir, tmp_path / "leak", x_test=x_test, y_test=y_test)
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    assert _failed(report.failed) == {(UNIQUE, "image_sha1")}
    # The leaked image's digest is listed once per split.
    assert report.failed[0].details.startswith("[train+val+test]")
    assert "2 of 5000 values unexpected" in report.failed[0].details


@pytest.mark.parametrize("source", ["train", "test"])
def test_a_val_image_shared_with_train_or_test_is_a_leak(source: str, mnist_dir: Path, tmp_path: Path,
                                                         variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    x_val, y_val = dataset.x_val.copy(), dataset.y_val.copy()
    x_val[7], y_val[7] = getattr(dataset, f"x_{source}")[42], getattr(dataset, f"y_{source}")[42]
    report = validate_dataset(IMAGE_CLASSIFICATION, variant(mnist_dir, tmp_path / "leak", x_val=x_val, y_val=y_val),
                              MNIST_SPEC)

    assert _failed(report.failed) == {(UNIQUE, "image_sha1")}
    assert "2 of 5000 values unexpected" in report.failed[0].details


def test_an_empty_val_split_is_rejected(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    bad = variant(mnist_dir, tmp_path / "empty", x_val=dataset.x_val[:0], y_val=dataset.y_val[:0])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    assert _failed(report.failed) == {("expect_table_row_count_to_be_between", None),
                                      ("expect_column_distinct_values_to_contain_set", "label"), (BETWEEN, "share")}
    assert all(f.details.startswith("[val]") for f in report.failed)


def test_a_dataset_without_a_val_split_cannot_be_validated(mnist_dir: Path, tmp_path: Path) -> None:
    dataset = load_image_dataset(mnist_dir)
    (tmp_path / "old").mkdir()
    shutil.copy(mnist_dir / "meta.json", tmp_path / "old" / "meta.json")
    np.savez(tmp_path / "old" / "images.npz", x_train=dataset.x_train, y_train=dataset.y_train,
             x_test=dataset.x_test, y_test=dataset.y_test)  # the layout before val splits
    report = validate_dataset(IMAGE_CLASSIFICATION, tmp_path / "old", MNIST_SPEC)

    assert not report.success
    assert [f.expectation for f in report.failed] == [UNREADABLE]
    assert re.search(r"images.npz lacks array\(s\) x_val, y_val", report.failed[0].details)


def test_an_unbalanced_val_split_is_rejected(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    keep = (dataset.y_val != 4) | (np.arange(len(dataset.y_val)) % 10 == 0)  # class 4: 50 -> 5 val images
    bad = variant(mnist_dir, tmp_path / "skew", x_val=dataset.x_val[keep], y_val=dataset.y_val[keep])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC.model_copy(update={"min_images_per_split": 100}))

    assert _failed(report.failed) == {(BETWEEN, "share")}
    assert report.failed[0].details.startswith("[val]") and "label=4" in report.failed[0].details


def test_an_under_represented_class_breaks_the_balance_bounds(mnist_dir: Path, tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    keep = (dataset.y_train != 3) | (np.arange(len(dataset.y_train)) % 10 == 0)  # class 3: 350 -> 35 images
    bad = variant(mnist_dir, tmp_path / "skew", x_train=dataset.x_train[keep], y_train=dataset.y_train[keep])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    assert _failed(report.failed) == {(BETWEEN, "share")}
    # 35 of 3185 images = 0.011 < 0.5 x 1/10.
    assert report.failed[0].details.startswith("[train]") and "label=3" in report.failed[0].details


def test_a_class_absent_from_a_split_and_a_too_small_split_are_rejected(mnist_dir: Path,
                                                                        tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    keep = dataset.y_test != 9
    bad = variant(mnist_dir, tmp_path / "absent", x_test=dataset.x_test[keep][:450], y_test=dataset.y_test[keep][:450])
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    assert _failed(report.failed) == {
        ("expect_column_distinct_values_to_contain_set", "label"),
        ("expect_table_row_count_to_be_between", None),
        (BETWEEN, "share"),
    }
    assert all(f.details.startswith("[test]") for f in report.failed)


def test_validation_error_lists_every_failed_expectation_and_the_dataset(mnist_dir: Path,
                                                                         tmp_path: Path, variant) -> None:
    dataset = load_image_dataset(mnist_dir)
    x_train = dataset.x_train.astype(np.float32)
    x_train[0, 0, 0] = np.inf
    y_test = dataset.y_test.copy()
    y_test[0] = 11
    bad = variant(mnist_dir, tmp_path / "bad", x_train=x_train, y_test=y_test)
    report = validate_dataset(IMAGE_CLASSIFICATION, bad, MNIST_SPEC)

    with pytest.raises(DataValidationError) as raised:
        report.raise_for_failure()
    lines = str(raised.value).splitlines()
    assert str(bad) in lines[0] and "3 expectation(s)" in lines[0]
    assert len(lines) == 1 + len(report.failed) == 4
    for failure, line in zip(report.failed, lines[1:]):
        assert failure.expectation in line and failure.details in line
    assert raised.value.failed == report.failed and raised.value.suite == "image_classification"


# ------------------------------------------------------------------------------------------- DVC


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding only this project's data stages and their builder."""
    root = tmp_path / "repo"
    for relative in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", ".dvc/config"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / relative, root / relative)
    (root / "data").mkdir()
    for builder in (REPO_ROOT / "data").glob("*.py"):  # the builders, not the built datasets beside them
        shutil.copy(builder, root / "data" / builder.name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _locked_md5(lock_file: Path, stage: str) -> str:
    return yaml.safe_load(lock_file.read_text())["stages"][stage]["outs"][0]["md5"]


def test_reproduce_rebuilds_the_committed_md5_then_pulls_it_back(
    repo_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    committed = _locked_md5(REPO_ROOT / "dvc.lock", "digits")

    ref = reproduce_dataset("digits", repo_copy)
    assert ref.md5 == committed == _locked_md5(repo_copy / "dvc.lock", "digits")
    assert ref.md5.endswith(".dir") and ref.name == "digits" and ref.stage == "digits"
    assert ref.path == str(repo_copy / "data" / "digits")
    remote_dir_object = repo_copy / ".paperops" / "dvc-remote" / "files" / "md5" / ref.md5[:2] / ref.md5[2:]
    assert remote_dir_object.is_file()
    built = {p.name: p.read_bytes() for p in Path(ref.path).iterdir()}

    # A machine without the data and without a cache pulls instead of rebuilding.
    shutil.rmtree(ref.path)
    shutil.rmtree(repo_copy / ".dvc" / "cache")
    with caplog.at_level(logging.INFO, logger="tasks.data"):
        pulled = reproduce_dataset("digits", repo_copy)
    assert pulled == ref
    assert {p.name: p.read_bytes() for p in Path(pulled.path).iterdir()} == built
    assert "Running stage" not in caplog.text


def test_unknown_or_unreproduced_stages_are_deterministic_errors(repo_copy: Path) -> None:
    with pytest.raises(DataStageError, match="unknown stage 'cifar'.*known: dejavu_letters, digits, .*mnist5k"):
        reproduce_dataset("cifar", repo_copy)
    (repo_copy / "dvc.lock").unlink()
    with pytest.raises(DataStageError, match="stage 'digits' has not been reproduced yet"):
        dataset_ref("digits", repo_copy)


def test_a_failing_builder_is_a_deterministic_error(repo_copy: Path) -> None:
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["datasets"]["digits"]["test_fraction"] = 1.5
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DataStageError, match="test_fraction must lie strictly between 0 and 1, got 1.5"):
        reproduce_dataset("digits", repo_copy, push=False)


def test_the_fashion_mnist_stage_without_its_package_names_the_package_and_the_command(
    repo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FASHION_MNIST_ROOT_ENV, str(repo_copy / "nowhere"))
    with pytest.raises(DataStageError) as raised:  # the CLI's exit 4 (paperops run: "could not be prepared")
        reproduce_dataset("fashion_mnist", repo_copy, push=False)
    message = str(raised.value)
    assert "stage 'fashion_mnist'" in message
    assert "error: fashion_mnist needs Debian's package dataset-fashion-mnist" in message
    assert "`sudo apt-get install dataset-fashion-mnist` (or `make fashion-mnist`)" in message
    assert "Traceback" not in message and not (repo_copy / "data" / "fashion_mnist").exists()


def test_an_unusable_remote_is_a_retryable_error(repo_copy: Path) -> None:
    (repo_copy / "blocker").write_text("a file where the remote directory should be")
    config = repo_copy / ".dvc" / "config"
    config.write_text(config.read_text().replace("../.paperops/dvc-remote", "../blocker/remote"))
    with pytest.raises(DataInfrastructureError, match="stage 'digits'"):
        reproduce_dataset("digits", repo_copy)


def test_a_lock_held_past_the_wait_is_a_retryable_error(repo_copy: Path) -> None:
    from dvc.repo import Repo

    started = time.monotonic()
    with Repo(str(repo_copy)) as repo, repo.lock:
        with pytest.raises(DataInfrastructureError, match="LockError"):
            reproduce_dataset("digits", repo_copy, push=False, lock_wait_seconds=5.0)
    assert 5.0 <= time.monotonic() - started < 60.0


def test_a_lock_released_while_waiting_lets_the_stage_run(repo_copy: Path) -> None:
    from dvc.repo import Repo

    holder = Repo(str(repo_copy))
    holder.lock.lock()
    releaser = threading.Timer(6.0, holder.lock.unlock)
    releaser.start()
    try:
        ref = reproduce_dataset("digits", repo_copy, push=False, lock_wait_seconds=120.0)
    finally:
        releaser.join()
        holder.close()
    assert ref.stage == "digits" and Path(ref.path).is_dir()


@pytest.mark.parametrize("broken, content", [("images.npz", b""), ("images.npz", b"PK\x03\x04 truncated"),
                                             ("meta.json", b""), ("meta.json", b"\xff\xfe not utf-8")])
def test_an_empty_or_undecodable_file_fails_validation_naming_it(mnist_dir: Path, tmp_path: Path, broken: str,
                                                                  content: bytes) -> None:
    copy = shutil.copytree(mnist_dir, tmp_path / "broken")
    (copy / broken).write_bytes(content)
    report = validate_dataset(IMAGE_CLASSIFICATION, copy, MNIST_SPEC)

    assert not report.success and (report.evaluated, report.successful) == (1, 0)
    assert _failed(report.failed) == {("dataset_files_readable", None)}
    assert str(copy / broken) in report.failed[0].details
    json.dumps(report.result)
    with pytest.raises(DataValidationError, match=re.escape(str(copy / broken))):
        report.raise_for_failure()


def test_a_missing_file_fails_validation_but_a_missing_directory_raises(mnist_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(mnist_dir, tmp_path / "incomplete")
    (copy / "images.npz").unlink()
    report = validate_dataset(IMAGE_CLASSIFICATION, copy, MNIST_SPEC)
    assert not report.success and f"dataset file {copy / 'images.npz'} is missing" in report.failed[0].details
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_dataset(IMAGE_CLASSIFICATION, tmp_path / "nowhere", MNIST_SPEC)
