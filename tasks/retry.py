"""Which failures a task may retry: infrastructure (I/O, network, a locked database), never deterministic ones
(a failed validation suite, a shape error, a bad config) — retrying those only hides them for longer."""
from __future__ import annotations

import sqlite3
from typing import Any

from prefect.tasks import exponential_backoff


class InfrastructureError(RuntimeError):
    """Base of the project's own transient failures (a DVC remote or lock, a store that may come back): retried."""


INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, sqlite3.OperationalError,
                                                          InfrastructureError)

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
}


def is_infrastructure_error(exc: BaseException) -> bool:
    import requests
    from prefect.task_engine import TaskRunTimeoutError
    from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

    if isinstance(exc, TaskRunTimeoutError):
        return False  # a step over its time budget would be over it again
    return isinstance(exc, INFRASTRUCTURE_ERRORS + (requests.ConnectionError, requests.Timeout,
                                                    SQLAlchemyOperationalError))


def retry_on_infrastructure_errors(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # noqa: BLE001 - we only classify it
            exc = raised
    return exc is not None and is_infrastructure_error(exc)
