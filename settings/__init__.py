"""Where paperops keeps its state, and the environment it runs in. No side effects at import."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Offline, quiet defaults: no hub downloads, no telemetry, room for the ephemeral Prefect API to start
# on a busy 2-core machine. setdefault, so a user's own settings win.
RUNTIME_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def project_root() -> Path:
    return Path(os.environ.get("PAPEROPS_ROOT", PROJECT_ROOT)).resolve()


def state_dir() -> Path:
    """Everything paperops writes lives here (git-ignored): MLflow DB and artifacts, checkpoints, DVC remote."""
    return Path(os.environ.get("PAPEROPS_HOME", project_root() / ".paperops")).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


def apply_runtime_defaults() -> None:
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect's home and result storage sit beside the MLflow DB so cached task results survive between runs
    # of the ephemeral API (the cache lives in result files, not in the API's database).
    os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(state_dir() / "prefect" / "results"))
    for key in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)


def threads_per_process(concurrency: int) -> str:
    """OMP_NUM_THREADS for each of `concurrency` pipeline processes running at once: the cores shared out, unless
    the user set OMP_NUM_THREADS. torch's default (every core per process) oversubscribes the cores, and its
    threads then spin waiting on each other: on the 2-core machine, 40 training steps of a tiny profile's ViT took
    26 s of CPU with one thread and 123-132 s with two, while other processes ran."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // concurrency))


@contextmanager
def shared_cores(concurrency: int) -> Iterator[str]:
    """OMP_NUM_THREADS set to `threads_per_process(concurrency)` for the processes started inside, then restored."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads = threads_per_process(concurrency)
    try:
        yield threads
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
