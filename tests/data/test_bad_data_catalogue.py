"""The bad-data catalogue: per data family (images, few-shot, text, dense scenes, ultrasound devices), each kind of
corruption a builder or a hand could produce, validated through the family's suite. Every one must fail, and the
failure must name the split, the class, line, scene or image and field, and the expectation (what `paperops run`
prints before exit 3); drift cases compare with the profile of the clean dataset, as the last validated version."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from data import ImageSuiteSpec, load_image_dataset
from data.fewshot import FEWSHOT_FILE, SPLITS as FEWSHOT_SPLITS, FewShotSuiteSpec, build_glyphs, load_fewshot_dataset
from data.fewshot_suite import FEW_SHOT_CLASSES
from data.images import ARRAY_KEYS
from data.dense_suite import DENSE_MULTITASK
from data.images_suite import IMAGE_CLASSIFICATION
from data.scenes import FIELDS as SCENE_FIELDS, SCENE_SPLITS, SCENES_FILE, DenseSuiteSpec, build_scenes, \
    load_scene_dataset
from data.text import TextSuiteSpec
from data.text_suite import TEXT_CORPUS
from data.ultrasound import DEVICES, FIELDS as US_FIELDS, SOURCE_DEVICE, SPLITS as US_SPLITS, ULTRASOUND_FILE, \
    UltrasoundSuiteSpec, build_ultrasound, load_ultrasound_dataset
from data.ultrasound_suite import US_DEVICE_SEGMENTATION
from tasks.validate import DataReference, DataValidationError, ValidationReport, validate_dataset

Arrays = dict[str, np.ndarray]
BETWEEN, OF_TYPE, UNIQUE, IN_SET = ("expect_column_values_to_be_between", "expect_column_values_to_be_of_type",
                                    "expect_column_values_to_be_unique", "expect_column_values_to_be_in_set")


def assert_stopped_naming(report: ValidationReport, *fragments: str) -> None:
    """The report fails, and one of the lines `paperops run` prints holds every fragment (split, class or line,
    expectation)."""
    assert not report.success
    with pytest.raises(DataValidationError) as raised:
        report.raise_for_failure()
    lines = str(raised.value).splitlines()[1:]
    assert any(all(fragment in line for fragment in fragments) for line in lines), (fragments, lines)


def rotate_class(arrays: Arrays, label: int, splits: tuple[str, ...]) -> Arrays:
    """The images of class `label` turned by 90 degrees in every split of `splits`."""
    for split in splits:
        images, members = arrays[f"x_{split}"].copy(), arrays[f"y_{split}"] == label
        images[members] = np.rot90(images[members], axes=(1, 2))
        arrays[f"x_{split}"] = images
    return arrays


def with_nonfinite(arrays: Arrays, key: str, value: float) -> Arrays:
    images = arrays[key].astype(np.float32)
    images[3, 2, 2] = value
    return arrays | {key: images}


def out_of_range(arrays: Arrays, key: str) -> Arrays:
    images = arrays[key].astype(np.int16)
    images[0, 0, 0] = 300
    return arrays | {key: images}


def keep(arrays: Arrays, split: str, mask: np.ndarray) -> Arrays:
    return arrays | {f"x_{split}": arrays[f"x_{split}"][mask], f"y_{split}": arrays[f"y_{split}"][mask]}


def copy_item(arrays: Arrays, source: str, target: str) -> Arrays:
    x, y = arrays[f"x_{target}"].copy(), arrays[f"y_{target}"].copy()
    x[0], y[0] = arrays[f"x_{source}"][5], arrays[f"y_{source}"][5]
    return arrays | {f"x_{target}": x, f"y_{target}": y}


# ------------------------------------------------------------------------------------------------ images

MNIST_SPEC = ImageSuiteSpec(height=28, width=28, classes=list(range(10)), min_images_per_split=400)

# name -> (corruption of the arrays, or of the files of the dataset directory; compared with the clean profile;
#          fragments one failure line must hold)
IMAGE_CASES: dict[str, tuple[Callable[..., object], bool, tuple[str, ...]]] = {
    "float64 labels": (lambda a: a | {"y_train": a["y_train"].astype(np.float64)}, False,
                       (OF_TYPE, "(label)", "[train]", "labels stored as int64", "observed float64")),
    "one class rotated by 90 degrees in both splits": (
        lambda a: rotate_class(a, 3, ("train", "test")), True,
        ("drift statistic mean_image", "split=train, label=3", "split=test, label=3", "(shift)")),
    "NaN pixels": (lambda a: with_nonfinite(a, "x_val", np.nan), False,
                   (BETWEEN, "(nonfinite_pixel_count)", "[val]", "no NaN or infinite pixel")),
    "infinite pixels": (lambda a: with_nonfinite(a, "x_test", np.inf), False,
                        (BETWEEN, "(nonfinite_pixel_count)", "[test]")),
    "out-of-range pixels": (lambda a: out_of_range(a, "x_train"), False,
                            (BETWEEN, "(pixel_max)", "[train]", "pixels within [0, 255]", "[300]")),
    "wrong image shape": (lambda a: a | {"x_val": a["x_val"][:, :27]}, False, (BETWEEN, "(height)", "[val]")),
    "a train image leaked into test": (lambda a: copy_item(a, "train", "test"), False,
                                       (UNIQUE, "(image_sha1)", "[train+val+test]", "no byte-identical image")),
    "a vanished class": (lambda a: keep(a, "val", a["y_val"] != 7), False,
                         (BETWEEN, "(share)", "[val]", "label=7", "every class holds")),
    "an unknown label": (lambda a: a | {"y_test": np.where(np.arange(len(a["y_test"])) == 4, 11, a["y_test"])},
                         False, ("expect_column_values_to_be_in_set", "(label)", "[test]", "[11]")),
    "an empty split": (lambda a: keep(a, "val", np.zeros(len(a["y_val"]), dtype=bool)), False,
                       ("expect_table_row_count_to_be_between", "[val]", "at least 400 images")),
    "darkened images": (lambda a: a | {"x_train": (a["x_train"] // 2).astype(np.uint8)}, True,
                        ("drift statistic pixel_mean", "split=train, label=0")),
    "a missing split": (lambda a: {k: v for k, v in a.items() if not k.endswith("_val")}, False,
                        ("dataset_files_readable", "images.npz lacks array(s) x_val, y_val")),
}
IMAGE_FILE_CASES: dict[str, tuple[str, bytes, tuple[str, ...]]] = {
    "zero-byte file": ("images.npz", b"", ("dataset_files_readable", "images.npz is not a readable .npz archive")),
    "truncated file": ("images.npz", b"PK\x03\x04\x14\x00", ("dataset_files_readable", "images.npz")),
}


@pytest.fixture(scope="module")
def mnist_arrays(mnist_dir: Path) -> Arrays:
    dataset = load_image_dataset(mnist_dir)
    return {key: getattr(dataset, key) for key in ARRAY_KEYS}


def _validated_reference(suite, path: Path, spec, md5: str) -> DataReference:
    """The clean dataset, validated once, as the reference its corrupted copies are compared with."""
    report = validate_dataset(suite, path, spec)
    assert report.success, report.failed
    return DataReference(md5=md5, profile=report.profile)


@pytest.fixture(scope="module")
def mnist_reference(mnist_dir: Path) -> DataReference:
    return _validated_reference(IMAGE_CLASSIFICATION, mnist_dir, MNIST_SPEC, "0123456789abcdef0123456789abcdef.dir")


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_corruption_is_stopped_naming_split_class_and_expectation(case: str, mnist_dir: Path,
                                                                        mnist_arrays: Arrays,
                                                                        mnist_reference: DataReference,
                                                                        tmp_path: Path) -> None:
    corrupt, drift, fragments = IMAGE_CASES[case]
    target = tmp_path / "mnist5k"
    target.mkdir()
    shutil.copy(mnist_dir / "meta.json", target / "meta.json")
    np.savez(target / "images.npz", **corrupt(dict(mnist_arrays)))
    report = validate_dataset(IMAGE_CLASSIFICATION, target, MNIST_SPEC, mnist_reference if drift else None)
    assert_stopped_naming(report, *fragments)


@pytest.mark.parametrize("case", IMAGE_FILE_CASES)
def test_an_unreadable_image_file_is_stopped_naming_the_file(case: str, mnist_dir: Path, tmp_path: Path) -> None:
    name, content, fragments = IMAGE_FILE_CASES[case]
    target = shutil.copytree(mnist_dir, tmp_path / "mnist5k")
    (target / name).write_bytes(content)
    assert_stopped_naming(validate_dataset(IMAGE_CLASSIFICATION, target, MNIST_SPEC), *fragments, str(target / name))


def test_the_rotated_class_is_the_only_drift_and_accepting_it_passes(mnist_dir: Path, mnist_arrays: Arrays,
                                                                      mnist_reference: DataReference,
                                                                      tmp_path: Path) -> None:
    target = tmp_path / "mnist5k"
    target.mkdir()
    shutil.copy(mnist_dir / "meta.json", target / "meta.json")
    np.savez(target / "images.npz", **rotate_class(dict(mnist_arrays), 3, ("train", "val", "test")))

    refused = validate_dataset(IMAGE_CLASSIFICATION, target, MNIST_SPEC, mnist_reference)
    # Nothing but the drift catches it: counts, pixel values, shapes are those of a valid dataset.
    assert [(f.expectation, f.column) for f in refused.failed] == [(BETWEEN, "shift")]
    figures = {(row["split"], row["label"]): row["shift"] for row in refused.result["drift"]["figures"]["mean_image"]}
    assert {key for key, shift in figures.items() if shift > MNIST_SPEC.drift.mean_image} == {
        ("train", 3), ("val", 3), ("test", 3)}
    assert refused.result["drift"]["reference"]["md5"] == mnist_reference.md5 and not refused.data_change_accepted

    accepted = validate_dataset(IMAGE_CLASSIFICATION, target, MNIST_SPEC, mnist_reference, accept_data_change=True)
    assert accepted.success and accepted.failed == [] and accepted.data_change_accepted
    assert accepted.drift_exceeded == refused.failed and accepted.result["drift"]["accepted"] is True


def test_the_same_data_against_its_own_reference_has_zero_drift(mnist_dir: Path,
                                                                mnist_reference: DataReference) -> None:
    report = validate_dataset(IMAGE_CLASSIFICATION, mnist_dir, MNIST_SPEC, mnist_reference)
    assert report.success and report.drift_exceeded == []
    figures = report.result["drift"]["figures"]
    assert set(figures) == {"share", "pixel_mean", "pixel_std", "mean_image"}
    assert all(row["shift"] == 0.0 for rows in figures.values() for row in rows)
    assert len(figures["mean_image"]) == 30  # 10 classes x 3 splits


# --------------------------------------------------------------------------------------------- few-shot

FEWSHOT_SPEC = FewShotSuiteSpec(height=32, width=32, classes_per_split={"base": 6, "val": 3, "novel": 4},
                                min_images_per_class=8)


def fewshot_rotated(arrays: Arrays) -> Arrays:
    """The base class whose glyph changes most when turned, turned by 90 degrees (its only split: classes are
    disjoint across splits)."""
    images, labels = arrays["x_base"], arrays["y_base"]

    def turn_change(label: int) -> float:
        members = images[labels == label].astype(np.float64)
        return float(np.abs(members.mean(0) - np.rot90(members, axes=(1, 2)).mean(0)).mean())

    return rotate_class(arrays, max(np.unique(labels).tolist(), key=turn_change), ("base",))


def drop_class(arrays: Arrays, split: str) -> Arrays:
    labels = arrays[f"y_{split}"]
    return keep(arrays, split, labels != labels.max())


FEWSHOT_CASES: dict[str, tuple[Callable[..., object], bool, tuple[str, ...]]] = {
    "float64 labels": (lambda a: a | {"y_novel": a["y_novel"].astype(np.float64)}, False,
                       (OF_TYPE, "(label)", "[novel]", "labels stored as int64", "observed float64")),
    "one class rotated by 90 degrees": (fewshot_rotated, True, ("drift statistic mean_image", "split=base, label=")),
    "NaN pixels": (lambda a: with_nonfinite(a, "x_val", np.nan), False,
                   (BETWEEN, "(nonfinite_pixel_count)", "[val]")),
    "out-of-range pixels": (lambda a: out_of_range(a, "x_base"), False, (BETWEEN, "(pixel_max)", "[base]", "[300]")),
    "wrong image shape": (lambda a: a | {"x_novel": a["x_novel"][:, :, :31]}, False,
                          (BETWEEN, "(width)", "[novel]", "width 32")),
    "a base image leaked into novel": (lambda a: copy_item(a, "base", "novel"), False,
                                       (UNIQUE, "(image_sha1)", "[base+val+novel]")),
    "a class in two splits": (lambda a: a | {"y_val": np.where(a["y_val"] == a["y_val"][0], a["y_base"][0],
                                                               a["y_val"])}, False,
                              (UNIQUE, "(label)", "[base+val+novel]", "every class in exactly one split")),
    "a vanished class": (lambda a: drop_class(a, "val"), True, ("drift statistic share", "split=val, label=")),
    "a vanished class, counted": (lambda a: drop_class(a, "val"), False,
                                  ("expect_table_row_count_to_equal", "[val]", "3 classes in the split", "observed 2")),
    "too few images of a class": (lambda a: keep(a, "novel", np.arange(len(a["y_novel"])) != 0), False,
                                  (BETWEEN, "(count)", "[novel]", "label=", "at least 8 images per class")),
    "blank images": (lambda a: a | {"x_base": np.zeros_like(a["x_base"])}, False,
                     (BETWEEN, "(ink_fraction)", "[base]", "no blank")),
    "a missing split": (lambda a: {k: v for k, v in a.items() if not k.endswith("_novel")}, False,
                        ("dataset_files_readable", "fewshot.npz lacks array(s) x_novel, y_novel")),
    "zero-byte file": (lambda a: None, False, ("dataset_files_readable", "fewshot.npz is not a readable .npz")),
}


@pytest.fixture(scope="module")
def glyph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_glyphs(tmp_path_factory.mktemp("data") / "glyphs", {"base": 6, "val": 3, "novel": 4},
                        images_per_class=8, seed=0)


@pytest.fixture(scope="module")
def glyph_reference(glyph_dir: Path) -> DataReference:
    return _validated_reference(FEW_SHOT_CLASSES, glyph_dir, FEWSHOT_SPEC, "fedcba9876543210fedcba9876543210.dir")


@pytest.mark.parametrize("case", FEWSHOT_CASES)
def test_fewshot_corruption_is_stopped_naming_split_class_and_expectation(case: str, glyph_dir: Path,
                                                                          glyph_reference: DataReference,
                                                                          tmp_path: Path) -> None:
    corrupt, drift, fragments = FEWSHOT_CASES[case]
    dataset = load_fewshot_dataset(glyph_dir)
    arrays = {f"{kind}_{split}": (dataset.x if kind == "x" else dataset.y)[split]
              for split in FEWSHOT_SPLITS for kind in ("x", "y")}
    target = tmp_path / "glyphs"
    target.mkdir()
    shutil.copy(glyph_dir / "meta.json", target / "meta.json")
    corrupted = corrupt(arrays)
    if corrupted is None:
        (target / FEWSHOT_FILE).write_bytes(b"")
    else:
        np.savez(target / FEWSHOT_FILE, **corrupted)
    report = validate_dataset(FEW_SHOT_CLASSES, target, FEWSHOT_SPEC, glyph_reference if drift else None)
    assert_stopped_naming(report, *fragments)


# ------------------------------------------------------------------------------------------------- text

TEXT_SPLITS = ["train", "val", "eval_shakespeare"]
TEXT_SPEC = TextSuiteSpec(splits=TEXT_SPLITS, min_chars=2_000, max_chars=1_000_000, min_lines=100,
                          min_vocab_coverage=0.85, max_line_chars=200)


def synthetic_corpus(seed: int, vocabulary_seed: int = 0, lines: int = 300) -> str:
    """Verse-like text: lines of 3-9 words from a fixed 150-word vocabulary, a blank line after every fifth."""
    words = [f"{''.join(random.Random(vocabulary_seed * 1000 + i).choices('etaoinshrdlu', k=5))}"
             for i in range(150)]
    rng = random.Random(seed)
    out = []
    for n in range(lines):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ",")
        if n % 5 == 4:
            out.append("")
    return "\n".join(out) + "\n"


def leaked_val_line(texts: dict[str, str]) -> dict[str, str]:
    """The first three lines of val joined into one (over 40 characters: an overlap candidate), also added to train."""
    lines = texts["val"].split("\n")
    leaked = " ".join(lines[:3])
    return {"train": texts["train"] + leaked + "\n", "val": "\n".join([leaked, *lines[3:]])}


def rewrapped(text: str) -> str:
    """Every two non-empty lines joined into one: the same words, longer lines."""
    lines = [line for line in text.split("\n") if line]
    return "\n".join(" ".join(lines[i:i + 2]) for i in range(0, len(lines), 2)) + "\n"


TEXT_CASES: dict[str, tuple[Callable[[dict[str, str]], dict[str, str | bytes | None]], bool, tuple[str, ...]]] = {
    "a missing split": (lambda t: {"val": None}, False, (BETWEEN, "(present)", "split=val", "every split file")),
    "zero-byte split": (lambda t: {"eval_shakespeare": b""}, False,
                        (BETWEEN, "(n_chars)", "split=eval_shakespeare", "characters per split")),
    "bytes that are not UTF-8": (lambda t: {"val": t["val"].encode() + b"\xff\xfe caf\xe9\n"}, False,
                                 (BETWEEN, "(utf8_valid)", "split=val", "decodes as utf-8")),
    "control characters": (lambda t: {"train": t["train"].replace("e", "\x07")}, False,
                           (BETWEEN, "(nonprintable_fraction)", "split=train")),
    "an oversized line": (lambda t: {"train": t["train"].replace("\n", "\n" + "lorem " * 100 + "\n", 1)}, False,
                          (BETWEEN, "(chars)", "split=train", "line=2", "no line longer than 200 characters")),
    "empty lines": (lambda t: {"val": t["val"].replace("\n", "\n\n\n")}, False,
                    (BETWEEN, "(empty_line_fraction)", "split=val", "lines empty")),
    "a val line leaked into train": (leaked_val_line, False,
                                     (UNIQUE, "(line_sha1)", "[train vs val vs eval_shakespeare]")),
    "a test split of foreign words": (lambda t: {"eval_shakespeare": synthetic_corpus(9, vocabulary_seed=7)}, False,
                                      (BETWEEN, "(vocab_coverage)", "split=eval_shakespeare", "train vocabulary")),
    "a truncated split": (lambda t: {"val": "\n".join(t["val"].split("\n")[:40])}, False,
                          (BETWEEN, "(n_lines)", "split=val", "non-empty lines per split")),
    "upper-cased text": (lambda t: {split: text.upper() for split, text in t.items()}, True,
                         ("drift statistic char_distribution", "split=train")),
    "rewrapped lines": (lambda t: {"val": rewrapped(t["val"])}, True, ("drift statistic line_length", "split=val")),
    "doubled blank lines": (lambda t: {"eval_shakespeare": t["eval_shakespeare"].replace("\n\n", "\n\n\n\n")}, True,
                            ("drift statistic empty_lines", "split=eval_shakespeare")),
}


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "corpus"
    root.mkdir()
    for seed, split in enumerate(TEXT_SPLITS):
        (root / f"{split}.txt").write_text(synthetic_corpus(seed, lines=900 if split == "train" else 300),
                                           encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def text_reference(text_dir: Path) -> DataReference:
    return _validated_reference(TEXT_CORPUS, text_dir, TEXT_SPEC, "00112233445566778899aabbccddeeff.dir")


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_corruption_is_stopped_naming_split_line_and_expectation(case: str, text_dir: Path,
                                                                      text_reference: DataReference,
                                                                      tmp_path: Path) -> None:
    corrupt, drift, fragments = TEXT_CASES[case]
    target = shutil.copytree(text_dir, tmp_path / "corpus")
    texts = {split: (text_dir / f"{split}.txt").read_text(encoding="utf-8") for split in TEXT_SPLITS}
    for split, content in corrupt(texts).items():
        file = target / f"{split}.txt"
        if content is None:
            file.unlink()
        else:
            file.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    report = validate_dataset(TEXT_CORPUS, target, TEXT_SPEC, text_reference if drift else None)
    assert_stopped_naming(report, *fragments)


# --------------------------------------------------------------------------------------------- dense scenes

DENSE_SPEC = DenseSuiteSpec(height=64, width=64, semseg_classes=5, parts_classes=4, parts_of=4,
                            min_scenes_per_split=6)


def set_pixels(arrays: Arrays, key: str, where: tuple, value: float) -> Arrays:
    """A copy of arrays[key] with `value` written at index `where`."""
    changed = arrays[key].copy()
    changed[where] = value
    return arrays | {key: changed}


def on_class(arrays: Arrays, split: str, label: int) -> tuple[np.ndarray, ...]:
    """Index of every pixel of semseg class `label` in the first scene of `split` that shows it."""
    semseg = arrays[f"{split}_semseg"]
    scene = int(np.flatnonzero((semseg == label).any(axis=(1, 2)))[0])
    rows, cols = np.nonzero(semseg[scene] == label)
    return (np.full_like(rows, scene), rows, cols)


def scene_moved(arrays: Arrays, source: str, target: str, fields: tuple[str, ...] = SCENE_FIELDS) -> Arrays:
    """Scene (or image) 5 of `source` copied over scene 0 of `target`, in `fields` (by default every field of a
    ShapesMT scene)."""
    moved = {}
    for name in fields:
        values = arrays[f"{target}_{name}"].copy()
        values[0] = arrays[f"{source}_{name}"][5]
        moved[f"{target}_{name}"] = values
    return arrays | moved


DENSE_CASES: dict[str, tuple[Callable[..., object], bool, tuple[str, ...]]] = {
    "a label map of the wrong shape": (lambda a: a | {"val_semseg": a["val_semseg"][:, :63]}, False,
                                       (IN_SET, "(semseg_shape)", "[val]", "semseg of shape 64x64", "63x64")),
    "normals with two components": (lambda a: a | {"test_normals": a["test_normals"][..., :2]}, False,
                                    (IN_SET, "(normals_shape)", "[test]", "normals of shape 64x64x3", "64x64x2")),
    "float64 normals": (lambda a: a | {"train_normals": a["train_normals"].astype(np.float64)}, False,
                        (IN_SET, "(normals_dtype)", "[train]", "normals stored as float32", "float64")),
    "a semseg label outside the set": (lambda a: set_pixels(a, "train_semseg", (2, 0, 0), 7), False,
                                       (BETWEEN, "(semseg_outside_set)", "[train]", "scene=2",
                                        "semseg values only in {0..4, 255}")),
    "a part label outside the set": (lambda a: set_pixels(a, "ood_parts", (1, 5, 5), 4), False,
                                     (BETWEEN, "(parts_outside_set)", "[ood]", "scene=1", "parts values only in")),
    "a saliency value of 2": (lambda a: set_pixels(a, "val_saliency", (3, 9, 9), 2), False,
                              (BETWEEN, "(saliency_outside_set)", "[val]", "scene=3", "{0..1, 255}")),
    "non-unit normals": (lambda a: a | {"val_normals": a["val_normals"] * np.float32(0.5)}, False,
                         (BETWEEN, "(normals_not_unit)", "[val]", "scene=0", "normals unit length")),
    "NaN normals": (lambda a: set_pixels(a, "test_normals", (3, 10, 10, 0), np.nan), False,
                    (BETWEEN, "(normals_nonfinite)", "[test]", "scene=3", "no NaN or infinite normal")),
    "normals missing on most pixels": (lambda a: set_pixels(a, "ood_normals", (2, slice(0, 48)), 0.0), False,
                                       (BETWEEN, "(normals_valid_share)", "[ood]", "scene=2",
                                        "of a scene's pixels with a valid normal")),
    "an empty saliency mask": (lambda a: set_pixels(a, "train_saliency", 4, 0), False,
                               (BETWEEN, "(saliency_pixels)", "[train]", "scene=4", "saliency non-empty")),
    "a scene without an object": (lambda a: set_pixels(a, "test_semseg", 0, 0), False,
                                  (BETWEEN, "(semseg_object_pixels)", "[test]", "scene=0",
                                   "every scene shows an object")),
    "parts on a disc": (lambda a: set_pixels(a, "train_parts", on_class(a, "train", 1), 2), False,
                        (BETWEEN, "(parts_off_object)", "[train]", "parts only on pixels of semseg class 4")),
    "saliency on the floor": (lambda a: set_pixels(a, "val_saliency", on_class(a, "val", 0), 1), False,
                              (BETWEEN, "(saliency_off_object)", "[val]", "saliency only on object pixels")),
    "a train scene leaked into ood": (lambda a: scene_moved(a, "train", "ood"), False,
                                      (UNIQUE, "(image_sha1)", "[train+val+test+ood]", "no identical scene")),
    "a vanished class": (lambda a: a | {"val_semseg": np.where(a["val_semseg"] == 3, 0, a["val_semseg"])}, False,
                         (BETWEEN, "(pixels)", "[val]", "field=semseg, label=3", "every declared class occurs")),
    "too few scenes": (lambda a: a | {f"val_{n}": a[f"val_{n}"][:3] for n in SCENE_FIELDS}, False,
                       ("expect_table_row_count_to_be_between", "[val]", "at least 6 scenes")),
    "fields of different lengths": (lambda a: a | {"train_saliency": a["train_saliency"][:-1]}, False,
                                    ("dataset_files_readable", "the fields of split train hold different numbers",
                                     "train_saliency 15")),
    "a missing field": (lambda a: {k: v for k, v in a.items() if k != "ood_normals"}, False,
                        ("dataset_files_readable", "scenes.npz lacks array(s) ood_normals")),
    "brightened test images": (lambda a: a | {"test_image": np.minimum(a["test_image"].astype(np.int16) + 60, 255)
                                              .astype(np.uint8)}, True,
                               ("drift statistic pixel_mean", "split=test, label=0", "(shift)")),
}


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scenes(tmp_path_factory.mktemp("data") / "shapes_mt", {"train": 16, "val": 8, "test": 8, "ood": 8})


@pytest.fixture(scope="module")
def scenes_reference(scenes_dir: Path) -> DataReference:
    return _validated_reference(DENSE_MULTITASK, scenes_dir, DENSE_SPEC, "ffeeddccbbaa99887766554433221100.dir")


def split_fields(dataset, splits: tuple[str, ...], fields: tuple[str, ...]) -> Arrays:
    """The arrays of a dataset stored as `<split>_<field>` (data/dataset_dir.load_split_fields), by that key."""
    return {f"{split}_{name}": getattr(dataset.split(split), name) for split in splits for name in fields}


def copy_with_file(clean: Path, target: Path, data_file: str, arrays: Arrays) -> Path:
    """Dataset `clean`'s meta.json at `target`, beside a `data_file` holding `arrays`."""
    target.mkdir()
    shutil.copy(clean / "meta.json", target / "meta.json")
    np.savez(target / data_file, **arrays)
    return target


@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense_corruption_is_stopped_naming_split_field_and_expectation(case: str, scenes_dir: Path,
                                                                        scenes_reference: DataReference,
                                                                        tmp_path: Path) -> None:
    corrupt, drift, fragments = DENSE_CASES[case]
    arrays = split_fields(load_scene_dataset(scenes_dir), SCENE_SPLITS, SCENE_FIELDS)
    target = copy_with_file(scenes_dir, tmp_path / "shapes_mt", SCENES_FILE, corrupt(arrays))
    report = validate_dataset(DENSE_MULTITASK, target, DENSE_SPEC, scenes_reference if drift else None)
    assert_stopped_naming(report, *fragments)


# ---------------------------------------------------------------------------------------- ultrasound devices

US_SPEC = UltrasoundSuiteSpec(height=64, width=64, min_images_per_split=6)
US_ALL_SPLITS = "[" + "+".join(US_SPLITS) + "]"

US_CASES: dict[str, tuple[Callable[..., object], bool, tuple[str, ...]]] = {
    "a non-binary mask value": (lambda a: set_pixels(a, "train_mask", (2, 0, 0), 2), False,
                                (BETWEEN, "(mask_outside_set)", "[train]", "image=2",
                                 "mask values only 0 and 1 (binary)")),
    "a mask narrower than its image": (lambda a: a | {"test_convex_mask": a["test_convex_mask"][:, :, :63]}, False,
                                       (IN_SET, "(mask_shape)", "[test_convex]", "mask_shape=64x63, image=0",
                                        "mask of shape 64x64, the image's")),
    "an empty mask": (lambda a: set_pixels(a, "val_mask", 1, 0), False,
                      (BETWEEN, "(mask_pixels)", "[val]", "image=1", "at least 1 lumen pixel(s) per mask (non-empty)")),
    "a mask over most of the image": (lambda a: set_pixels(a, "test_phased_mask", (4, slice(0, 40)), 1), False,
                                      (BETWEEN, "(mask_share)", "[test_phased]", "image=4",
                                       "at most 0.5 of an image in the mask")),
    "a blank image": (lambda a: set_pixels(a, "test_linear_smooth_image", 2, 100), False,
                      (BETWEEN, "(image_std)", "[test_linear_smooth]", "image_std=0, image=2",
                       "grey-level std at least 2 (no blank image)")),
    "a saturated image": (lambda a: set_pixels(a, "val_image", (0, slice(0, 8)), 255), False,
                          (BETWEEN, "(saturated_share)", "[val]", "image=0",
                           "at most 0.05 of an image's pixels at 255")),
    "a source-device image among an unseen device's": (
        lambda a: set_pixels(a, "test_phased_device", 3, DEVICES.index(SOURCE_DEVICE)), False,
        (IN_SET, "(device)", "[test_phased]", "device=0, image=3",
         "device id 2 (phased), the device split test_phased is declared to hold")),
    "a train image leaked into val": (lambda a: scene_moved(a, "train", "val", ("image",)), False,
                                      (UNIQUE, "(image_sha1)", US_ALL_SPLITS, "no identical image in two of")),
    "a train scene rendered again in a test split": (
        lambda a: scene_moved(a, "train", "test_linear_smooth", ("anatomy",)), False,
        (UNIQUE, "(anatomy_sha1)", US_ALL_SPLITS, "no scene (anatomy) in two of")),
    "too few images": (lambda a: a | {f"val_{n}": a[f"val_{n}"][:3] for n in US_FIELDS}, False,
                       ("expect_table_row_count_to_be_between", "[val]", "at least 6 images", "observed 3")),
    "float32 images": (lambda a: a | {"train_image": a["train_image"].astype(np.float32)}, False,
                       (IN_SET, "(image_dtype)", "[train]", "image=0", "image stored as uint8", "float32")),
    "an int64 mask": (lambda a: a | {"val_mask": a["val_mask"].astype(np.int64)}, False,
                      (IN_SET, "(mask_dtype)", "[val]", "image=0", "mask stored as uint8", "int64")),
    "images narrower than declared": (
        lambda a: a | {f"test_convex_{n}": a[f"test_convex_{n}"][:, :, :60] for n in ("image", "mask")}, False,
        (IN_SET, "(image_shape)", "[test_convex]", "image_shape=64x60, image=0", "image of shape 64x64")),
    "fields of different lengths": (lambda a: a | {"val_device": a["val_device"][:-1]}, False,
                                    ("dataset_files_readable", "the fields of split val hold different numbers of "
                                     "images", "val_device 5")),
    "a missing field": (lambda a: {k: v for k, v in a.items() if k != "test_phased_anatomy"}, False,
                        ("dataset_files_readable", "ultrasound.npz lacks array(s) test_phased_anatomy")),
    "train masks flipped upside down": (lambda a: a | {"train_mask": a["train_mask"][:, ::-1]}, True,
                                        ("drift statistic pixel_mean", "split=train, label=1", "(shift)")),
}


@pytest.fixture(scope="module")
def us_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ultrasound(tmp_path_factory.mktemp("data") / "us_devices",
                            {"train": 10, "val": 6, "test_convex": 6, "test_phased": 6, "test_linear_smooth": 6})


@pytest.fixture(scope="module")
def us_reference(us_dir: Path) -> DataReference:
    return _validated_reference(US_DEVICE_SEGMENTATION, us_dir, US_SPEC, "99887766554433221100ffeeddccbbaa.dir")


@pytest.mark.parametrize("case", US_CASES)
def test_ultrasound_corruption_is_stopped_naming_split_image_and_expectation(case: str, us_dir: Path,
                                                                             us_reference: DataReference,
                                                                             tmp_path: Path) -> None:
    corrupt, drift, fragments = US_CASES[case]
    arrays = split_fields(load_ultrasound_dataset(us_dir), US_SPLITS, US_FIELDS)
    target = copy_with_file(us_dir, tmp_path / "us_devices", ULTRASOUND_FILE, corrupt(arrays))
    report = validate_dataset(US_DEVICE_SEGMENTATION, target, US_SPEC, us_reference if drift else None)
    assert_stopped_naming(report, *fragments)


def test_every_catalogue_has_at_least_ten_kinds() -> None:
    assert len(IMAGE_CASES) + len(IMAGE_FILE_CASES) >= 10 and len(FEWSHOT_CASES) >= 10 and len(TEXT_CASES) >= 10
    assert len(DENSE_CASES) >= 10 and len(US_CASES) >= 10
