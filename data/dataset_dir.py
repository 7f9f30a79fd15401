"""The on-disk layout every dataset builder shares: a directory of data files plus meta.json, written all at once
(an interrupted build never leaves half a dataset behind) and read back with errors that name the file."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

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
