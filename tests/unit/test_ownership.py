"""Who owns a pipeline run and whether it is abandoned (tasks/ownership.py), judged on real processes: this test's
own (alive), one that has exited, and a pid taken over by another process; a run on another machine by the age of
its heartbeat. Then the closing of abandoned runs on a real MLflow store (sqlite in the test's temp dir): only runs
whose owner is proven gone are closed, and the per-paper registry lock, which a killed holder never keeps."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from mlflow import MlflowClient

from settings import PROJECT_ROOT, tracking_uri
from tasks.ownership import (
    HEARTBEAT_STALE_S, HEARTBEAT_TAG, ProcessOwner, RegistryLockTimeout, owner_liveness, registry_lock,
)


def exited_process() -> ProcessOwner:
    """The owner record of a process that ran on this machine and has exited (and been reaped)."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = replace(ProcessOwner.current(), pid=child.pid, started=psutil.Process(child.pid).create_time())
    child.kill()
    child.wait()
    return owner


def test_the_owner_record_round_trips_through_run_tags():
    here = ProcessOwner.current()
    assert ProcessOwner.from_tags(here.tags()) == replace(here, started=round(here.started, 3))
    assert ProcessOwner.from_tags({}) is None
    assert ProcessOwner.from_tags(here.tags() | {"paperops.owner.pid": "not-a-pid"}) is None


def test_a_live_process_on_this_machine_is_alive_an_exited_one_or_a_reused_pid_is_not():
    here, now = ProcessOwner.current(), time.time()
    assert owner_liveness(here.tags(), here, now).alive is True
    gone = exited_process()
    verdict = owner_liveness(gone.tags(), here, now)
    assert (verdict.alive, verdict.seen) == (False, True)
    assert f"pid {gone.pid} on host {gone.host}" in verdict.reason and "is gone" in verdict.reason
    # The pid exists, but the process behind it started an hour after the recorded one: the owner is gone.
    reused = owner_liveness(replace(here, started=here.started - 3600).tags(), here, now)
    assert reused.alive is False and f"pid {here.pid} is now a process started" in reused.reason


def test_on_another_machine_only_a_stale_heartbeat_proves_the_owner_gone():
    here, now = ProcessOwner.current(), time.time()
    # Our own pid, on another machine: a pid there says nothing about this machine's process table.
    remote = replace(here, host="gpu-node-7", machine="gpu-node-7|boot|pid:[1]").tags()
    fresh = owner_liveness(remote | {HEARTBEAT_TAG: f"{now - 60:.0f}"}, here, now)
    assert (fresh.alive, fresh.seen) == (True, False)
    stale = owner_liveness(remote | {HEARTBEAT_TAG: f"{now - HEARTBEAT_STALE_S - 5:.0f}"}, here, now)
    assert stale.alive is False and "gpu-node-7" in stale.reason and "no heartbeat" in stale.reason
    # No beat recorded yet: the age counts from the process's start.
    assert owner_liveness(replace(here, machine="elsewhere", started=now - 10).tags(), here, now).alive is True


def test_a_run_that_records_no_owner_cannot_be_judged():
    assert owner_liveness({"paperops.step": "pipeline"}, ProcessOwner.current(), time.time()).alive is None


@pytest.fixture
def client() -> MlflowClient:
    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def pipeline_run(client: MlflowClient, experiment_id: str, owner: ProcessOwner | None, *steps: str) -> list[str]:
    """A RUNNING pipeline run owned by `owner` and its step runs, FINISHED or RUNNING as `steps` says; their ids."""
    tags = {"paperops.step": "pipeline"} | (owner.tags() if owner else {})
    parent = client.create_run(experiment_id, tags=tags).info.run_id
    ids = [parent]
    for status in steps:
        step = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "paperops.step": "train"})
        if status != "RUNNING":
            client.set_terminated(step.info.run_id, status)
        ids.append(step.info.run_id)
    return ids


def test_a_fresh_run_closes_only_the_runs_whose_owner_is_gone(client):
    from tasks.lineage import close_abandoned_runs

    experiment_id = client.create_experiment(f"abandoned-{time.time_ns()}")
    gone = exited_process()
    abandoned, abandoned_finished_step, abandoned_running_step = pipeline_run(client, experiment_id, gone, "FINISHED",
                                                                              "RUNNING")
    here = ProcessOwner.current()
    beside, beside_step = pipeline_run(client, experiment_id, here, "RUNNING")  # an identical run started beside us
    unowned, unowned_step = pipeline_run(client, experiment_id, None, "RUNNING")  # nothing says whether it lives
    own, = pipeline_run(client, experiment_id, here)

    closed = close_abandoned_runs.fn(own)

    assert closed == [abandoned_running_step, abandoned]  # the step before its pipeline run
    for run_id in closed:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        reason = run.data.tags["paperops.error"]
        assert reason.startswith("abandoned:") and f"pid {gone.pid} on host {gone.host}" in reason
        assert run.data.tags["paperops.closed_by"] == f"pipeline run {own}, {here}"
    assert client.get_run(abandoned_finished_step).info.status == "FINISHED"
    for run_id in (beside, beside_step, unowned, unowned_step, own):
        assert client.get_run(run_id).info.status == "RUNNING"


def test_a_retried_flow_run_closes_the_steps_its_dead_attempt_left_running_and_continues_its_run(client):
    from tasks.lineage import close_abandoned_runs

    experiment_id = client.create_experiment(f"retried-{time.time_ns()}")
    own, finished, running = pipeline_run(client, experiment_id, exited_process(), "FINISHED", "RUNNING")
    assert close_abandoned_runs.fn(own) == [running]
    assert "the retry redoes it" in client.get_run(running).data.tags["paperops.error"]
    assert [client.get_run(r).info.status for r in (own, finished, running)] == ["RUNNING", "FINISHED", "KILLED"]


def test_the_registry_lock_excludes_a_second_holder_and_names_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPEROPS_HOME", str(tmp_path))
    with registry_lock("paper-a"):
        with pytest.raises(RegistryLockTimeout, match=f"held by pid {ProcessOwner.current().pid} on host"):
            with registry_lock("paper-a", timeout_s=0.5):
                pass
        with registry_lock("paper-b", timeout_s=0.5):  # one lock per paper
            pass
    with registry_lock("paper-a", timeout_s=0.5):
        pass


def test_a_killed_holder_leaves_the_registry_lock_free(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPEROPS_HOME", str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom tasks.ownership import registry_lock\n"
                               "with registry_lock('paper'):\n    print('held', flush=True)\n    time.sleep(600)"],
        cwd=PROJECT_ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RegistryLockTimeout, match=f"held by pid {holder.pid} on host"):
            with registry_lock("paper", timeout_s=0.5):
                pass
        holder.kill()
        holder.wait()
        with registry_lock("paper", timeout_s=5):
            pass
    finally:
        holder.kill()
        holder.wait()
