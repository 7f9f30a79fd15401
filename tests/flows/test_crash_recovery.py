"""A killed `paperops run` leaves nothing RUNNING once the next run has started, and the next run reuses the steps
the killed one finished; two identical runs at once register one version and leave one champion.

Real `paperops run` processes of the cheapest paper, the one docs/adding-a-paper.md shows, at its smoke size, in a
copy of the project (tests/flows/guide_paper.py). Each process has a PAPEROPS_HOME of its own (Prefect results and
ephemeral API, registry lock); the test reads their MLflow store while they run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from guide_paper import PAPER, copy_project_with_the_guides_paper, running_in

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 900
# The parent state of the test process that must not leak into a run: each run finds its own from PAPEROPS_HOME.
NOT_INHERITED = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Project:
    root: Path
    overrides: list[str]  # the guide paper's smoke_overrides


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """The project copy with the guide's paper, its datasets already built (runs started at once would otherwise
    all build them)."""
    from recipes import get_recipe, load_config
    from tasks.data import reproduce_dataset

    copy = copy_project_with_the_guides_paper(tmp_path_factory.mktemp("crash") / "project")
    with running_in(copy):
        recipe = get_recipe(PAPER)
        for section in recipe.datasets(load_config(PAPER, "tiny").config).values():
            reproduce_dataset(section.stage, copy)
        return Project(copy, list(recipe.smoke_overrides))


def tracking_store(uri: str) -> MlflowClient:
    """A client of the store the runs will use, its tables created now: not by two processes at once."""
    client = MlflowClient(uri, registry_uri=uri)
    client.search_experiments()
    return client


def start_run(project: Project, home: Path, log: Path, tracking_uri: str | None = None) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED} | {
        "PAPEROPS_ROOT": str(project.root), "PAPEROPS_HOME": str(home), "PYTHONPATH": str(project.root)}
    if tracking_uri:
        environment["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [str(Path(sys.executable).parent / "paperops"), "run", PAPER,
               *[part for override in project.overrides for part in ("--set", override)]]
    return subprocess.Popen(command, cwd=project.root, env=environment, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, f"paperops run exited {process.returncode}:\n{log.read_text()[-6000:]}"


def kill(process: subprocess.Popen) -> None:
    """SIGKILL of `paperops run`, as `kill -9` sends it; then the processes it leaves behind (its ephemeral Prefect
    API server) are reaped, which a dead run's owner check does not look at."""
    orphans = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for orphan in orphans:
        try:
            orphan.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(orphans, timeout=30)


def paper_runs(client: MlflowClient) -> list[Run]:
    experiment = client.get_experiment_by_name(f"paperops-{PAPER}")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def steps(runs: list[Run], step: str) -> list[Run]:
    return [run for run in runs if run.data.tags.get("paperops.step") == step]


def wait_for_step(client: MlflowClient, process: subprocess.Popen, log: Path, step: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not steps(paper_runs(client), step):
        assert process.poll() is None, f"paperops run exited {process.returncode} before {step}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {step} run after {RUN_TIMEOUT_S} s:\n{log.read_text()[-6000:]}"
        time.sleep(0.05)


def summary(client: MlflowClient, run: Run, destination: Path) -> dict:
    return json.loads(Path(client.download_artifacts(run.info.run_id, "pipeline/summary.json",
                                                     str(destination))).read_text())


def test_a_killed_run_is_closed_by_the_next_run_which_reuses_the_steps_it_finished(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    client = tracking_store(f"sqlite:///{home / 'mlflow.db'}")
    killed = start_run(project, home, tmp_path / "killed.log")
    # Evaluate starts only once train has returned, and so once train's result is persisted: the kill lands after
    # training finished, and (checked below) while evaluate is still running.
    wait_for_step(client, killed, tmp_path / "killed.log", "evaluate")
    kill(killed)
    left = paper_runs(client)
    assert [run.info.status for run in steps(left, "train")] == ["FINISHED"]
    assert [run.info.status for run in steps(left, "evaluate")] == ["RUNNING"], "killed after evaluate finished"
    assert [run.info.status for run in steps(left, "pipeline")] == ["RUNNING"]
    abandoned = {run.info.run_id for run in left if run.info.status == "RUNNING"}

    fresh = start_run(project, home, tmp_path / "fresh.log")
    finish(fresh, tmp_path / "fresh.log")

    runs = paper_runs(client)
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    pipeline = next(run for run in steps(runs, "pipeline") if run.info.run_id not in abandoned)
    assert pipeline.info.status == "FINISHED"
    for run in runs:
        if run.info.run_id in abandoned:
            assert run.info.status == "KILLED"
            reason = run.data.tags["paperops.error"]
            assert reason.startswith("abandoned:") and f"pid {killed.pid} on host {socket.gethostname()}" in reason
            assert run.data.tags["paperops.closed_by"].startswith(f"pipeline run {pipeline.info.run_id}, pid ")
    done = summary(client, pipeline, tmp_path)["steps"]
    # Training finished before the kill: taken from the cache. Evaluate was killed mid-way: run again.
    assert (done["train"], done["evaluate"], done["register"]) == ("Cached", "Completed", "Completed")
    assert [run.info.status for run in steps(runs, "train")] == ["FINISHED"]
    assert sorted(run.info.status for run in steps(runs, "evaluate")) == ["FINISHED", "KILLED"]
    versions = client.search_model_versions(f"name='paperops-{PAPER}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert client.get_model_version_by_alias(f"paperops-{PAPER}", "champion").version == versions[0].version


def test_two_identical_runs_at_once_register_one_version_and_leave_one_champion(project, tmp_path):
    """Two machines sharing one tracking store (the runs share no Prefect results and no registry lock): both
    train, neither closes the other's live run, and one version is registered for the inputs they share."""
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    client = tracking_store(uri)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [start_run(project, tmp_path / f"home-{name}", log, uri) for name, log in zip("ab", logs)]
    try:
        for process, log in zip(processes, logs):
            finish(process, log)
    finally:
        for process in processes:
            process.kill()

    runs = paper_runs(client)
    assert [run.info.status for run in steps(runs, "pipeline")] == ["FINISHED", "FINISHED"]
    assert [run.info.status for run in steps(runs, "train")] == ["FINISHED", "FINISHED"]  # no result was shared
    versions = client.search_model_versions(f"name='paperops-{PAPER}'")
    assert len(versions) == 1, [(v.version, v.tags.get("paperops.model_uri")) for v in versions]
    champion = client.get_model_version_by_alias(f"paperops-{PAPER}", "champion")
    assert champion.version == versions[0].version
    assert champion.tags["validation_status"] == "approved"
