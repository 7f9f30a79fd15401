"""Expected failures as a user meets them: the real `paperops` command in a subprocess, on the session's Prefect API
and MLflow store. Each prints its clean message verbatim (brackets included) under its exit code, with no Prefect
traceback before it, and registers nothing; a rejected candidate makes `paperops run` exit 6."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml
from mlflow import MlflowClient

from recipes import available_recipes, get_recipe, load_config
from settings import project_root, tracking_uri
from settings.config import ConfigError

PAPEROPS = Path(sys.executable).with_name("paperops")


@pytest.fixture(scope="module")
def paperops(prefect_api) -> Callable[..., subprocess.CompletedProcess]:
    """Runs `paperops <args>` against the session's Prefect API (no ephemeral server of its own to wait for)."""
    from prefect.settings import PREFECT_API_URL

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        environment = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()} | env
        return subprocess.run([str(PAPEROPS), *args], env=environment, capture_output=True, text=True, timeout=900)

    return run


def assert_no_prefect_failure_log(result: subprocess.CompletedProcess) -> None:
    """Prefect's console record of a failed run (its traceback, its final state) is left out for a handled error."""
    printed = result.stdout + result.stderr
    assert "Traceback" not in printed and "Finished in state Failed" not in printed, result.stderr


def _versions(paper: str) -> set[str]:
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    return {v.version for v in client.search_model_versions(f"name='paperops-{paper}'")}


def test_a_failed_suite_exits_3_with_each_expectation_verbatim_and_no_traceback(paperops):
    before = _versions("ppt")
    result = paperops("run", "ppt", "--set", "data.expect.height=27")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "ppt: data validation failed — nothing was trained or registered:" in result.stdout
    for split in ("train", "test"):
        assert f"expect_column_values_to_be_between (height): [{split}] expected height 27;" in result.stdout
    assert_no_prefect_failure_log(result)
    assert _versions("ppt") == before


def test_an_empty_data_file_exits_3_naming_it(paperops, tmp_path):
    # A checkout whose mnist5k builder writes an empty images.npz: DVC records it, the suite cannot read it.
    root = tmp_path / "checkout"
    (root / "configs").mkdir(parents=True)
    shutil.copy(project_root() / "configs" / "ppt.yaml", root / "configs")
    build = f"PYTHONPATH={project_root()} {sys.executable} -m data build mnist5k --out data/mnist5k"
    stage = {"cmd": f"{build} && truncate -s 0 data/mnist5k/images.npz", "outs": ["data/mnist5k"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"mnist5k": stage}}))
    remote = ["remote", "add", "--default", "local", str(tmp_path / "remote")]
    for dvc_command in (["init", "--no-scm", "--quiet"], remote):
        subprocess.run([sys.executable, "-m", "dvc", *dvc_command], cwd=root, check=True)
    before = _versions("ppt")
    result = paperops("run", "ppt", "--set", "data.stage=mnist5k", PAPEROPS_ROOT=str(root))  # tiny reads fashion_mnist
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"dataset_files_readable: {root / 'data' / 'mnist5k' / 'images.npz'} is not a readable .npz archive" \
        in result.stdout
    assert_no_prefect_failure_log(result)
    assert _versions("ppt") == before


def test_promoting_a_missing_version_exits_5_without_a_traceback(paperops):
    result = paperops("promote", "ppt", "--version", "999")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "cannot promote: paperops-ppt has no version 999" in result.stdout
    assert_no_prefect_failure_log(result)


def test_a_candidate_the_gate_rejects_makes_run_exit_6(paperops, smoke_run):
    smoke_run("ppt")  # training is cached; another r makes a new candidate, leaving the smoke run's one as it was
    overrides = [arg for override in get_recipe("ppt").smoke_overrides for arg in ("--set", override)]
    result = paperops("run", "ppt", *overrides, "--set", "compress.r=6", "--set", "promote.max_cost_ratio=0.01")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "macs_ratio is" in result.stdout and "the gate requires <= 0.010" in result.stdout
    assert "the promotion gate rejected the candidate of ppt" in result.stdout


def test_the_pipeline_refuses_a_knob_the_model_cannot_take_before_it_opens_a_run(prefect_api):
    from flows.pipeline import paper_pipeline

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    experiment = client.get_experiment_by_name("paperops-ppt")
    runs_before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    with pytest.raises(ConfigError, match=r"compress\.r=100000 exceeds 32, the most tokens block 3 can remove"):
        paper_pipeline("ppt", "tiny", ["compress.r=100000"])
    experiment = client.get_experiment_by_name("paperops-ppt")
    assert (len(client.search_runs([experiment.experiment_id])) if experiment else 0) == runs_before


def test_run_all_at_once_runs_every_paper_and_exits_with_the_first_failure(paperops, tmp_path):
    # A checkout with every paper's config but no data stage: each paper's own process stops at prepare-data (4).
    root = tmp_path / "checkout"
    shutil.copytree(project_root() / "configs", root / "configs")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {}}))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=root, check=True)
    papers = sorted(available_recipes())
    result = paperops("run", "all", "--concurrency", "2", PAPEROPS_ROOT=str(root))
    assert result.returncode == 4, result.stdout + result.stderr
    for paper in papers:  # every paper ran, whatever the one before it did, and its message is shown once
        assert result.stdout.count(f"{paper}: the dataset could not be prepared") == 1, result.stdout
        assert f"{paper}: running (" in result.stdout
    assert f"run all: {', '.join(f'{paper} exited 4' for paper in papers)} (output above)" in result.stdout
    started = sorted(papers, key=lambda paper: result.stdout.index(f"{paper}: running ("))
    minutes = [load_config(paper, "tiny").config.runtime.expected_minutes for paper in started]
    assert minutes == sorted(minutes, reverse=True) and started != papers, started  # the longest first
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))
    assert f"2 at once, {threads} thread(s) each" in result.stdout  # the cores shared out between the processes
    assert_no_prefect_failure_log(result)
