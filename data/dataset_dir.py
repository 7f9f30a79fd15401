"""The on-disk layout every dataset builder shares: a directory of data files plus meta.json, written all at once
(an interrupted build never leaves half a dataset behind) and read back with errors that name the file."""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.views import DatasetView, Withheld, as_view

META_FILE = "meta.json"
LABEL_DTYPE = "int64"  # the documented dtype of every stored label array (images.npz, fewshot.npz)


class DatasetSourceMissingError(RuntimeError):
    """The packaged source of a dataset is not installed on this machine."""


class DatasetFormatError(ValueError):
    """A dataset directory exists but its files do not have the documented layout."""


def write_dataset_dir(out: Path, meta: dict[str, Any], write_files: Callable[[Path], None]) -> Path:
    """Build into a staging directory beside `out` (`write_files(staging)` plus meta.json), then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_files(staging)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def read_dataset_meta(root: Path, data_files: tuple[str, ...]) -> dict[str, Any]:
    """meta.json of the dataset directory `root` as a dict, after checking that it and `data_files` exist."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist (build it with `dvc repro`)")
    meta_path = root / META_FILE
    for required in (meta_path, *(root / name for name in data_files)):
        if not required.is_file():
            raise FileNotFoundError(f"dataset file {required} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{meta_path} does not hold a JSON object")
    return meta


def load_split_fields(source: str | Path | DatasetView, data_file: str, meta_keys: Sequence[str],
                      split_roles: Mapping[str, str], fields: Sequence[str], items: str
                      ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray] | Withheld]]:
    """A dataset stored as one .npz of `<split>_<field>` arrays: its meta.json (which must hold `meta_keys`) and, per
    split in `split_roles` order, its fields' arrays, or the view's Withheld stand-in for a split the reading step
    may not see (never read from the archive). Errors name the file and what is wrong: a missing key or array, an
    unreadable archive, fields of one split holding different numbers of `items`."""
    view = as_view(source)
    root = view.path
    meta = read_dataset_meta(root, (data_file,))
    missing_meta = [key for key in meta_keys if key not in meta]
    if missing_meta:
        raise DatasetFormatError(f"{root / META_FILE} lacks {', '.join(missing_meta)}")
    path = root / data_file
    readable = [split for split, role in split_roles.items() if view.take(split, role)]
    wanted = [f"{split}_{name}" for split in readable for name in fields]
    try:
        with np.load(path, allow_pickle=False) as archive:  # lazy: a withheld split is never read
            found = list(archive.files)
            arrays = {key: archive[key] for key in wanted if key in found}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DatasetFormatError(f"{path} is not a readable .npz archive: {exc}") from exc
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DatasetFormatError(f"{path} lacks array(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})")
    splits: dict[str, dict[str, np.ndarray] | Withheld] = {}
    for split in split_roles:
        if split not in readable:
            splits[split] = view.withheld(split)
            continue
        lengths = {name: len(arrays[f"{split}_{name}"]) for name in fields}
        if len(set(lengths.values())) != 1:
            raise DatasetFormatError(f"{path}: the fields of split {split} hold different numbers of {items}: "
                                     + ", ".join(f"{split}_{name} {n}" for name, n in lengths.items()))
        splits[split] = {name: arrays[f"{split}_{name}"] for name in fields}
    return meta, splits
