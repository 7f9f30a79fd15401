"""Write a dataset directory all at once: an interrupted build never leaves half a dataset behind."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

META_FILE = "meta.json"


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
