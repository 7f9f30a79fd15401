"""Child process of tasks/data.py: reproduce (or pull) one DVC stage in the current directory (the repository
root) and write the verdict {kind, message} to a file instead of raising across the process boundary.

Its own module, importing DVC only, so the child does not pay for importing Prefect (seconds per call).
`repro --pull` wraps a failed fetch in ReproductionError, so the whole cause chain decides whether the failure
is infrastructure (lock, transfer, OS/network: retryable) or the stage's own (deterministic).
usage: python -m tasks.dvc_stage_runner STAGE OUTCOME_FILE push|no-push
"""
from __future__ import annotations

import json
import sys

INFRASTRUCTURE = "infrastructure"
STAGE = "stage"


def reproduce_stage(stage: str, push: bool) -> dict[str, str]:
    from dvc.exceptions import DvcException, FileTransferError
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        # Pipelines running at once (reproduction seeds, `run all --concurrency`) prepare stages in one repository:
        # wait for its lock as `dvc --wait-for-lock` does. It is an OS file lock, released when its holder exits.
        with Repo(".", _wait_for_lock=True) as repo:
            repo.reproduce(targets=[stage], pull=True)
            if push:
                repo.push(targets=[stage])
    except (DvcException, OSError) as exc:
        chain: list[BaseException] = [exc]
        while chain[-1].__cause__ is not None and len(chain) < 10:
            chain.append(chain[-1].__cause__)
        retryable = any(isinstance(cause, (LockError, FileTransferError, OSError)) for cause in chain)
        return {"kind": INFRASTRUCTURE if retryable else STAGE,
                "message": " <- ".join(f"{type(cause).__name__}: {cause}" for cause in chain)}
    return {"kind": "ok", "message": ""}


def main(argv: list[str]) -> int:
    stage, outcome_file, push = argv[0], argv[1], argv[2] == "push"
    outcome = reproduce_stage(stage, push)
    with open(outcome_file, "w", encoding="utf-8") as handle:
        json.dump(outcome, handle)
    return 0 if outcome["kind"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
