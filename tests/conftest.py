"""Test environment: offline, no telemetry, and every bit of paperops state (MLflow sqlite DB and artifacts,
Prefect results, checkpoints) in a temporary directory — set before prefect/mlflow are imported, because both
read their settings at import."""
from __future__ import annotations

import os
import tempfile

_STATE = tempfile.mkdtemp(prefix="paperops-test-")
os.environ["PAPEROPS_HOME"] = _STATE
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_HOME"] = os.path.join(_STATE, "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(_STATE, "prefect", "results")

from settings import apply_runtime_defaults  # noqa: E402

apply_runtime_defaults()
