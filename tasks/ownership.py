"""Which process owns a pipeline run, whether that process is still alive, and the per-paper registry lock.

A pipeline run records its owner (host, pid, process start time, and an identity of the machine's process table)
and a heartbeat. Another run may close it as abandoned only on proof that the owner is gone: on the same machine the
pid is gone or now belongs to a younger process; on another machine, where a pid says nothing, the heartbeat stopped
long ago. A run whose owner cannot be judged (none recorded) is never closed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
from mlflow import MlflowClient

from settings import state_dir

logger = logging.getLogger(__name__)

OWNER_TAGS = {"host": "paperops.owner.host", "machine": "paperops.owner.machine", "pid": "paperops.owner.pid",
              "started": "paperops.owner.started"}
HEARTBEAT_TAG = "paperops.heartbeat"
HEARTBEAT_INTERVAL_S = 30.0
# Ten missed beats: a busy machine or a slow tracking server delays a beat, it does not miss ten in a row.
HEARTBEAT_STALE_S = 10 * HEARTBEAT_INTERVAL_S
# Process start times are computed from the boot time, which the kernel reports to the second: a process whose start
# differs by more than this is another process that reuses the pid.
START_TIME_TOLERANCE_S = 2.0
REGISTRY_LOCK_TIMEOUT_S = 600.0


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.readline().strip()
    except OSError:
        return ""


def machine_identity() -> str:
    """Host name, boot id and pid namespace: two processes with the same identity see the same process table, so a
    pid recorded by one can be looked up by the other. A container sharing the host's name (host networking) has
    its own pid namespace; a rebooted machine has a new boot id. Outside Linux only the host name is known."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{_read_first_line('/proc/sys/kernel/random/boot_id')}|{namespace}"


@dataclass(frozen=True)
class ProcessOwner:
    host: str
    machine: str  # machine_identity() of the owner
    pid: int
    started: float  # the process's start, seconds since the epoch

    @classmethod
    def current(cls) -> ProcessOwner:
        return cls(host=socket.gethostname(), machine=machine_identity(), pid=os.getpid(),
                   started=psutil.Process().create_time())

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessOwner | None:
        """The owner recorded in a run's tags, or None when none (or an unreadable one) is recorded."""
        try:
            return cls(host=tags[OWNER_TAGS["host"]], machine=tags[OWNER_TAGS["machine"]],
                       pid=int(tags[OWNER_TAGS["pid"]]), started=float(tags[OWNER_TAGS["started"]]))
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        return {OWNER_TAGS["host"]: self.host, OWNER_TAGS["machine"]: self.machine, OWNER_TAGS["pid"]: str(self.pid),
                OWNER_TAGS["started"]: f"{self.started:.3f}"}

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} (started {_iso(self.started)})"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Liveness:
    alive: bool | None  # None: no owner is recorded, so nothing can be said
    reason: str
    seen: bool = False  # judged from this machine's process table (not from a heartbeat)


def owner_liveness(tags: dict[str, str], here: ProcessOwner, now: float) -> Liveness:
    """Whether the process that owns the run with these tags is alive, judged from `here` at time `now`."""
    owner = ProcessOwner.from_tags(tags)
    if owner is None:
        return Liveness(None, "the run records no owner process")
    if owner.machine == here.machine:
        try:
            process = psutil.Process(owner.pid)
            started, status = process.create_time(), process.status()
        except psutil.NoSuchProcess:
            return Liveness(False, f"its process, {owner}, is gone", seen=True)
        except psutil.AccessDenied:
            return Liveness(True, f"{owner} exists (owned by another user)", seen=True)
        if abs(started - owner.started) > START_TIME_TOLERANCE_S:
            return Liveness(False, f"its process, {owner}, is gone (pid {owner.pid} is now a process started "
                                   f"{_iso(started)})", seen=True)
        if status == psutil.STATUS_ZOMBIE:
            return Liveness(False, f"its process, {owner}, has exited", seen=True)
        return Liveness(True, f"{owner} is running", seen=True)
    try:
        beat = float(tags.get(HEARTBEAT_TAG, owner.started))
    except ValueError:
        beat = owner.started
    silent = now - beat
    if silent > HEARTBEAT_STALE_S:
        return Liveness(False, f"its process, {owner}, on another machine, sent no heartbeat for {silent:.0f} s "
                               f"(last {_iso(beat)}; stale after {HEARTBEAT_STALE_S:.0f} s)")
    return Liveness(True, f"{owner} on another machine sent a heartbeat {silent:.0f} s ago")


class Heartbeat:
    """Stamps a run's heartbeat tag now and every `interval_s`, on a daemon thread, until `stop()` or until the
    process dies: the age of the last stamp is how another machine tells a live run from an abandoned one."""

    def __init__(self, client: MlflowClient, run_id: str, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"paperops-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while True:
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as exc:  # noqa: BLE001 - a missed beat only ages the run; the next one tries again
                logger.warning("heartbeat of run %s not recorded: %s", self.run_id, exc)
            if self._stopped.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=60)


class RegistryLockTimeout(RuntimeError):
    """Another live process held a paper's registry lock for longer than the wait allows."""


def registry_lock_path(paper: str) -> Path:
    return state_dir() / "locks" / f"registry-{paper}.lock"


@contextlib.contextmanager
def registry_lock(paper: str, timeout_s: float = REGISTRY_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive, between the processes of this machine (and of every machine sharing PAPEROPS_HOME), for
    registering or promoting versions of `paper`. An flock: the kernel releases it when its holder dies, so a
    killed run never leaves it taken. The holder writes who it is into the file, for the message of a waiter that
    gives up."""
    path = registry_lock_path(paper)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(descriptor, 1000, 0).decode(errors="replace").strip() or "an unknown process"
                    raise RegistryLockTimeout(f"the registry lock of {paper} ({path}) is held by {holder} for over "
                                              f"{timeout_s:.0f} s; wait for that run or stop it") from None
                time.sleep(0.2)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{ProcessOwner.current()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
