"""Child process of tasks/data.py: reproduce (or pull) one DVC stage in the current directory (the repository
root) and write the verdict {kind, message} to a file instead of raising across the process boundary.

Its own module, importing DVC only, so the child does not pay for importing Prefect (seconds per call).
`repro --pull` wraps a failed fetch in ReproductionError, so the whole cause chain decides whether the failure
is infrastructure (lock, transfer, OS/network: retryable) or the stage's own (deterministic).
usage: python -m tasks.dvc_stage_runner STAGE OUTCOME_FILE push|no-push LOCK_WAIT_SECONDS
"""
from __future__ import annotations

import json
import sys
import time

INFRASTRUCTURE = "infrastructure"
STAGE = "stage"


def _reproduce_waiting_for_the_lock(stage: str, push: bool, lock_wait_seconds: float) -> None:
    """Pipelines running at once (reproduction seeds, `run all --concurrency`) prepare stages in one repository, so
    a held lock is waited for, but only for `lock_wait_seconds`: a holder that never lets go (a stale lock, a hung
    process) must end in a LockError, not a pipeline that hangs. Reproducing again after a LockError is safe: DVC
    takes the lock before it touches the workspace."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    deadline = time.monotonic() + lock_wait_seconds
    while True:
        try:
            with Repo(".") as repo:
                repo.reproduce(targets=[stage], pull=True)
                if push:
                    repo.push(targets=[stage])
            return
        except LockError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def reproduce_stage(stage: str, push: bool, lock_wait_seconds: float) -> dict[str, str]:
    from dvc.exceptions import DvcException, FileTransferError
    from dvc.lock import LockError

    try:
        _reproduce_waiting_for_the_lock(stage, push, lock_wait_seconds)
    except (DvcException, OSError) as exc:
        chain: list[BaseException] = [exc]
        while chain[-1].__cause__ is not None and len(chain) < 10:
            chain.append(chain[-1].__cause__)
        retryable = any(isinstance(cause, (LockError, FileTransferError, OSError)) for cause in chain)
        return {"kind": INFRASTRUCTURE if retryable else STAGE,
                "message": " <- ".join(f"{type(cause).__name__}: {cause}" for cause in chain)}
    return {"kind": "ok", "message": ""}


def main(argv: list[str]) -> int:
    stage, outcome_file, push, lock_wait_seconds = argv[0], argv[1], argv[2] == "push", float(argv[3])
    outcome = reproduce_stage(stage, push, lock_wait_seconds)
    with open(outcome_file, "w", encoding="utf-8") as handle:
        json.dump(outcome, handle)
    return 0 if outcome["kind"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
