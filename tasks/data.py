"""DVC adapters: reproduce or pull a dataset stage and name the result by its dvc.lock md5.

The Prefect task `prepare_data` retries only DataInfrastructureError (storage or lock trouble that can
clear up). DataStageError is deterministic: retrying repeats it.

DVC's Python API is used, but in a child process started in the repository root: DVC resolves stage
targets, the run cache and stage paths against the current directory (a repository elsewhere fails with
"file path ... is outside of DVC repo"), and changing the directory of a process whose threads run other
Prefect tasks would move their relative paths too. The child also gets the PATH that makes the stage
command's `python` this interpreter, without touching this process's environment.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from data.views import DatasetViews, step_views
from tasks.dvc_stage_runner import INFRASTRUCTURE, STAGE
from tasks.retry import IO_RETRIES, InfrastructureError, retry_on_infrastructure_errors

LOCK_FILE = "dvc.lock"
PIPELINE_FILE = "dvc.yaml"
# Longer than any stage's build on a 2-core machine takes while it holds the lock; past it a lock is taken as stale.
LOCK_WAIT_SECONDS = 900.0

logger = logging.getLogger(__name__)


class DataStageError(RuntimeError):
    """Deterministic failure: unknown stage, builder command failed, repository misconfigured."""


class DataInfrastructureError(InfrastructureError):
    """Transient failure: remote storage unreachable or failing, repository lock held by another process."""


@dataclass(frozen=True)
class DatasetRef:
    name: str  # dataset name: the output directory's basename
    stage: str  # dvc.yaml stage that builds it
    path: str  # absolute path of the stage output
    md5: str  # the output's md5 exactly as dvc.lock writes it ("<hash>.dir" for a directory)


def dataset_views(datasets: dict[str, DatasetRef], step: str) -> DatasetViews:
    """The prepared datasets by their Recipe.datasets name, as step `step` may read them (data/views.py: train and
    compress get every test split withheld, evaluate reads all): what Recipe.load_data takes."""
    return step_views({key: ref.path for key, ref in datasets.items()}, step)


# Tag of a train, compress or evaluate run: the splits its recipe's load_data was handed, per dataset.
SPLITS_READ_TAG = "paperops.splits_read"


def splits_read(views: DatasetViews) -> str:
    """What the views handed out, as the SPLITS_READ_TAG value: "data: train, val; pretrain: train, val"."""
    return "; ".join(f"{name}: {', '.join(split for split, _ in view.reads)}" for name, view in views.items())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as exc:
        raise DataStageError(f"{path} is not valid YAML: {exc}") from exc
    return content if isinstance(content, dict) else {}


def _locked_output(stage: str, root: Path) -> tuple[str, str] | None:
    """(output path, md5) of `stage` from dvc.lock, or None when the stage has not been reproduced yet."""
    declared = _read_yaml(root / PIPELINE_FILE).get("stages") or {}
    if stage not in declared:
        raise DataStageError(
            f"unknown stage {stage!r} in {root / PIPELINE_FILE}; known: {', '.join(sorted(declared)) or 'none'}"
        )
    locked = (_read_yaml(root / LOCK_FILE).get("stages") or {}).get(stage)
    if not locked:
        return None
    outs = locked.get("outs") or []
    if len(outs) != 1:
        raise DataStageError(f"stage {stage!r} in {root / LOCK_FILE} has {len(outs)} outputs; a dataset stage has one")
    return outs[0]["path"], outs[0]["md5"]


def dataset_ref(stage: str, repo_root: Path) -> DatasetRef:
    """The reference of `stage`'s single output as dvc.lock records it."""
    root = Path(repo_root).resolve()
    output = _locked_output(stage, root)
    if output is None:
        raise DataStageError(
            f"stage {stage!r} has not been reproduced yet: no entry in {root / LOCK_FILE} (run `dvc repro {stage}`)"
        )
    out_path, md5 = output
    return DatasetRef(name=Path(out_path).name, stage=stage, path=str(root / out_path), md5=md5)


def reproduce_dataset(stage: str, repo_root: Path, push: bool = True,
                      lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> DatasetRef:
    """Bring `stage`'s output into the workspace and return its reference.

    `dvc repro --pull` semantics: when the stage's dependencies and parameters match dvc.lock but the
    output is missing, its objects are pulled from the default remote (or checked out of the local cache);
    only when that is impossible, or when something changed, is the builder run. With `push`, the output is
    then uploaded to the default remote so other machines pull instead of rebuilding. A repository lock held by
    another pipeline is waited for up to `lock_wait_seconds`, then reported as a DataInfrastructureError.
    """
    root = Path(repo_root).resolve()
    _locked_output(stage, root)  # an unknown stage fails here with the list of known ones
    interpreter_bin = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": os.pathsep.join(filter(None, [interpreter_bin, os.environ.get("PATH")]))}
    with tempfile.TemporaryDirectory(prefix="paperops-dvc-") as scratch:
        outcome_file = Path(scratch) / "outcome.json"
        command = [sys.executable, "-m", "tasks.dvc_stage_runner", stage, str(outcome_file),
                   "push" if push else "no-push", str(lock_wait_seconds)]
        completed = subprocess.run(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        output = completed.stdout.strip()
        if output:
            logger.info("dvc (%s): %s", stage, output)
        outcome = json.loads(outcome_file.read_text(encoding="utf-8")) if outcome_file.exists() else None

    if outcome is None:
        # No verdict written: the child died. A signal (OOM killer, preemption) may not recur; a crash does.
        error = DataInfrastructureError if completed.returncode < 0 else DataStageError
        raise error(
            f"DVC process for stage {stage!r} in {root} exited with {completed.returncode}: {output[-2000:]}"
        )
    if outcome["kind"] == INFRASTRUCTURE:
        raise DataInfrastructureError(
            f"DVC storage or lock failure for stage {stage!r} in {root}: {outcome['message']}"
        )
    if outcome["kind"] == STAGE:
        # The builder's own traceback is in the captured output, after DVC's "Running stage" line.
        tail = "\n".join(output.splitlines()[-15:])
        raise DataStageError(f"stage {stage!r} in {root} failed: {outcome['message']}\n{tail}")
    return dataset_ref(stage, root)


# ------------------------------------------------------------------------------- the Prefect task


@task(name="prepare-data", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def prepare_data(stage: str) -> DatasetRef:
    """`dvc repro` (or pull) the stage in this project and push it to the default remote; retried only for
    DataInfrastructureError."""
    from settings import project_root

    return reproduce_dataset(stage, project_root())
