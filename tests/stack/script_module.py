"""The stack's scripts (docker/s3/create_buckets.py, mlflow/server.py) as modules, for tests that call their
functions: they are files run by path, not importable packages (mlflow/ must never become one)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(relative_path: str) -> ModuleType:
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
