"""The scale-out pieces that need no server: the deployments `paperops deploy` expands from prefect.yaml and the
recipe registry, the placeholders it fills, idempotency keys, the worker's environment, the retry rule for
timeouts and the closing of steps a dead worker abandoned. The MLflow server's own checks are in
tests/stack/test_mlflow_server.py."""
from __future__ import annotations

import re

import pytest
import yaml
from mlflow import MlflowClient
from prefect.task_engine import TaskRunTimeoutError
from typer.testing import CliRunner

from recipes import available_recipes
from paperops.cli import app
from recipes import load_config
from settings import project_root, tracking_uri
from tasks.data import dataset_ref
from tasks.retry import is_infrastructure_error
from tasks.scaleout import (
    CPU_POOL, GPU_POOL, SLOT_ENV, DeployOptions, ScaleOutError, expanded_prefect_file, gpu_slot,
    pipeline_idempotency_key, prefect_file_text, worker_command, worker_environment,
)

PREFECT_YAML = project_root() / "prefect.yaml"


def test_deploy_expands_one_gpu_deployment_per_registered_recipe_and_keeps_the_cpu_fan_out():
    deployments = expanded_prefect_file()["deployments"]
    by_name = {d["name"]: d for d in deployments}
    recipes = available_recipes()
    assert len(by_name) == len(deployments) and set(by_name) == set(recipes) | {"all-papers"}
    for paper, recipe in recipes.items():
        entry = by_name[paper]
        assert entry["entrypoint"] == "flows/pipeline.py:paper_pipeline"
        assert entry["work_pool"] == {"name": GPU_POOL} and entry["enforce_parameter_schema"] is True
        assert entry["parameters"] == {"paper": paper, "profile": "{{ $PAPEROPS_PROFILE }}"}
        assert entry["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert entry["schedules"] == [{"cron": "{{ $PAPEROPS_CRON }}", "timezone": "UTC",
                                       "active": "{{ $PAPEROPS_SCHEDULE_ACTIVE }}"}]
        assert entry["description"] == recipe.deployment_description
        assert entry["tags"] == ["paperops", *recipe.deployment_tags, paper]
    fan_out = by_name["all-papers"]
    assert fan_out["entrypoint"] == "flows/fanout.py:all_papers" and fan_out["work_pool"] == {"name": CPU_POOL}
    assert fan_out["parameters"] == {"profile": "{{ $PAPEROPS_PROFILE }}"}


def test_prefect_yaml_itself_names_no_paper():
    listed = {d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    assert listed == {"all-papers"}


def test_a_hand_written_paper_deployment_is_refused(tmp_path, monkeypatch):
    document = yaml.safe_load(PREFECT_YAML.read_text())
    document["deployments"].append({"name": "ppt", "entrypoint": "flows/pipeline.py:paper_pipeline"})
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setenv("PAPEROPS_ROOT", str(tmp_path))
    with pytest.raises(ScaleOutError, match=r"deployments named like registered papers \(ppt\)"):
        expanded_prefect_file()


def test_deploy_print_shows_the_expanded_file_without_a_server(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["deploy", "--print", "--profile", "full"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == expanded_prefect_file()
    assert "#   PAPEROPS_PROFILE=full" in result.output and "#   PAPEROPS_SCHEDULE_ACTIVE=true" in result.output
    # a pool or schedule shared by every deployment is written out, not as a YAML alias a reader must chase
    assert "&id" not in result.output and "*id" not in result.output
    assert prefect_file_text(expanded_prefect_file(), {}).count("name: gpu") == len(available_recipes())


def test_every_deploy_time_placeholder_of_prefect_yaml_is_filled_by_paperops_deploy():
    placeholders = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", PREFECT_YAML.read_text()))
    # PAPEROPS_ROOT is resolved on the worker when a run pulls its code (`paperops worker` sets it).
    assert placeholders - {"PAPEROPS_ROOT"} == set(DeployOptions().environment())
    assert "PAPEROPS_ROOT" in worker_environment(GPU_POOL, "gpu-0")


@pytest.mark.parametrize("profile, explicit, active", [
    ("tiny", None, "false"), ("full", None, "true"), ("tiny", True, "true"), ("full", False, "false"),
])
def test_schedules_are_off_for_tiny_unless_asked(profile, explicit, active):
    environment = DeployOptions(profile=profile, schedule_active=explicit, cron="15 2 * * 1").environment()
    assert (environment["PAPEROPS_SCHEDULE_ACTIVE"], environment["PAPEROPS_PROFILE"]) == (active, profile)
    assert environment["PAPEROPS_CRON"] == "15 2 * * 1"


def test_idempotency_key_is_paper_profile_data_md5_and_config_hash():
    key = pipeline_idempotency_key("ppt", "tiny")
    md5 = dataset_ref(load_config("ppt", "tiny").config.data.stage, project_root()).md5
    assert key == f"ppt:tiny:{md5}:{load_config('ppt', 'tiny').digest()}"
    assert pipeline_idempotency_key("ppt", "tiny") == key
    assert pipeline_idempotency_key("ppt", "tiny", ["train.epochs=3"]) != key
    # A timeout cannot change a result, so it cannot make a new run either.
    assert pipeline_idempotency_key("ppt", "tiny", ["runtime.train_timeout_s=60"]) == key


def test_gpu_slot_is_a_no_op_without_a_worker_slot(monkeypatch):
    monkeypatch.delenv(SLOT_ENV, raising=False)
    with gpu_slot() as slot:
        assert slot is None


def test_worker_environment_gives_gpu_workers_a_slot_and_every_worker_heartbeats():
    gpu = worker_environment(GPU_POOL, "gpu-3")
    cpu = worker_environment(CPU_POOL, None)
    assert gpu[SLOT_ENV] == "gpu-3" and SLOT_ENV not in cpu
    assert worker_environment(GPU_POOL, None)[SLOT_ENV].endswith("-0")
    assert gpu["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30" and gpu["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    command = worker_command(GPU_POOL, "w1", 2)
    assert command[1:] == ["worker", "start", "--pool", "gpu", "--type", "process", "--with-healthcheck",
                           "--name", "w1", "--limit", "2"]


def test_a_timed_out_step_is_not_retried_but_a_lost_connection_is():
    assert not is_infrastructure_error(TaskRunTimeoutError("train exceeded 60 s"))
    assert is_infrastructure_error(TimeoutError("read timed out"))
    assert is_infrastructure_error(ConnectionError("reset by peer"))
    assert not is_infrastructure_error(ValueError("shape mismatch"))


def test_runtime_limits_are_validated_and_left_out_of_every_digest():
    base = load_config("cbq", "tiny")
    tuned = load_config("cbq", "tiny", ["runtime.evaluate_timeout_s=30"])
    assert tuned.config.runtime.evaluate_timeout_s == 30
    assert tuned.digest() == base.digest() and tuned.digest(excluding=("promote",)) == base.digest(("promote",))
    from settings.config import ConfigError

    with pytest.raises(ConfigError, match="runtime.train_timeout_s"):
        load_config("cbq", "tiny", ["runtime.train_timeout_s=0"])


def test_deploy_and_worker_without_a_server_exit_2_saying_what_to_set(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for command in (["deploy"], ["worker", "--pool", "gpu"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "PREFECT_API_URL" in result.output


def test_a_retry_closes_the_step_runs_a_dead_attempt_left_running():
    from tasks.lineage import close_abandoned_runs

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    experiment = client.get_experiment_by_name("abandoned-steps") or client.create_experiment("abandoned-steps")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    parent = client.create_run(experiment_id).info.run_id
    finished = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(finished, "FINISHED")
    running = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    unrelated = client.create_run(experiment_id).info.run_id

    assert close_abandoned_runs.fn(parent) == [running]
    assert client.get_run(running).info.status == "KILLED"
    assert "abandoned" in client.get_run(running).data.tags["paperops.error"]
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(unrelated).info.status == "RUNNING"
