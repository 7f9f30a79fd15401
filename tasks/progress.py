"""Progress events from running steps to whoever displays them (the CLI's progress bars, a test's list).

Prefect runs the tasks of an in-process flow in this process, so a process-wide listener list is enough; a
remote worker simply has no listener and the events go nowhere.
"""
from __future__ import annotations

import threading
from typing import Callable

ProgressListener = Callable[[str, int, int, str], None]  # (step, done, total, description)

_lock = threading.Lock()
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_progress_listener(listener: ProgressListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def report_progress(step: str, done: int, total: int, description: str) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(step, done, total, description)
