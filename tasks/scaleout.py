"""Scale-out on a Prefect server: the work pools, the deployments (prefect.yaml's, plus one per registered recipe
expanded from its template), the GPU slot a heavy step occupies, the automation that marks a run whose worker died
as Crashed, and the commands behind `paperops deploy` and `paperops worker`.

On one laptop none of this runs: with no PREFECT_API_URL the pipeline uses the ephemeral API, no worker sets a
GPU slot, and `gpu_slot()` is a no-op.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import yaml
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from settings import project_root, state_dir
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors

GPU_POOL = "gpu"
CPU_POOL = "cpu"
PIPELINE_FLOW = "paper-pipeline"
SLOT_ENV = "PAPEROPS_GPU_SLOT"
CRASH_AUTOMATION = "paperops-mark-crashed-on-missing-heartbeats"
# Prefect's floor for flow-run heartbeats; the automation waits three of them before calling a run dead.
HEARTBEAT_SECONDS = 30
MISSED_HEARTBEATS = 3
DEFAULT_CRON = "0 3 * * *"
PREFECT_FILE = "prefect.yaml"
# The key under prefect.yaml's `definitions` that holds every paper's deployment but its name, description and tags.
PAPER_DEPLOYMENT_TEMPLATE = "paper_deployment"


# train / compress / evaluate: cached by inputs + source with results persisted (to shared storage on a worker),
# so a flow run retried on another worker reuses finished steps; retried only for infrastructure errors.
# Their timeouts come from the config's `runtime` section (flows/pipeline.py).
HEAVY_STEP_OPTIONS = {
    "cache_policy": TASK_SOURCE + INPUTS - "parent_run_id" - "config",
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [30, 120],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_infrastructure_errors,
}


class ScaleOutError(RuntimeError):
    """The Prefect server is missing or refuses a scale-out operation; the message says what to fix."""


def slot_limit_name(slot: str) -> str:
    return f"gpu:{slot}"


@contextmanager
def gpu_slot() -> Iterator[str | None]:
    """Holds the worker's GPU slot (a global concurrency limit of 1) for the duration of a heavy step.

    A process worker may run several flow runs at once; the slot keeps two heavy steps off one GPU. The lease
    is renewed while the step runs and expires a minute after its holder dies, so a killed worker's slot
    frees itself."""
    slot = os.environ.get(SLOT_ENV)
    if not slot:
        yield None
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(slot_limit_name(slot), occupy=1, lease_duration=60, strict=True):
        yield slot


def require_server() -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    if not api:
        raise ScaleOutError("no Prefect server configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) "
                            "and PREFECT_API_AUTH_STRING; deployments and workers need a server, not the "
                            "ephemeral API of `paperops run`")
    return api


def ensure_work_pool(name: str) -> bool:
    """Creates the process work pool `name` unless it exists; True when created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type=ProcessWorker.type,
                base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


def ensure_slot_limit(slot: str) -> None:
    """The global concurrency limit `gpu:<slot>` with one slot (created, or reset to one)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    name = slot_limit_name(slot)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))


def ensure_crash_detection() -> None:
    """Installs (or refreshes) the automation that marks a flow run Crashed when its heartbeats stop.

    A worker that dies with its flow-run process (a lost node, an OOM-killed container) reports nothing; without
    this the run would stay Running forever and hold its deployment's concurrency slot."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    automation = Automation(
        name=CRASH_AUTOMATION,
        description="Marks a flow run Crashed after three missed heartbeats (its worker or process died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_SECONDS * MISSED_HEARTBEATS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="No heartbeat: the flow run's worker or process died.")],
    )
    try:
        existing = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:
        existing = None
    if existing is None:
        automation.create()
    else:
        automation.id = existing.id
        automation.update()


@dataclass(frozen=True)
class DeployOptions:
    profile: str = "tiny"
    schedule_active: bool | None = None  # None: on except for the tiny profile
    cron: str = DEFAULT_CRON

    def environment(self) -> dict[str, str]:
        """The values prefect.yaml's {{ $PAPEROPS_* }} placeholders take."""
        from tasks.lineage import git_commit

        active = self.profile != "tiny" if self.schedule_active is None else self.schedule_active
        return {"PAPEROPS_PROFILE": self.profile, "PAPEROPS_SCHEDULE_ACTIVE": str(active).lower(),
                "PAPEROPS_CRON": self.cron, "PAPEROPS_GIT_SHA": git_commit()[:12]}


@dataclass(frozen=True)
class RegisteredDeployment:
    name: str  # "<flow>/<deployment>"
    work_pool: str
    parameters: dict
    schedules: list[str]  # "<cron> (on|off)"


def expanded_prefect_file() -> dict[str, Any]:
    """prefect.yaml as `prefect deploy` gets it: one deployment per registered recipe, made from the
    `definitions.paper_deployment` template with the recipe's name, declared description and tags and its `paper`
    parameter, followed by the deployments prefect.yaml lists itself (the fan-out). The `definitions`, already
    merged into the deployments, are left out."""
    from recipes import available_recipes

    path = project_root() / PREFECT_FILE
    document = yaml.safe_load(path.read_text())
    template = document.pop("definitions", {}).get(PAPER_DEPLOYMENT_TEMPLATE)
    if not isinstance(template, dict):
        raise ScaleOutError(f"{path} has no definitions.{PAPER_DEPLOYMENT_TEMPLATE}: the template every paper's "
                            "deployment is made from")
    recipes = available_recipes()
    listed = document.get("deployments") or []
    hand_written = sorted({entry.get("name") for entry in listed} & set(recipes))
    if hand_written:
        raise ScaleOutError(f"{path} lists deployments named like registered papers ({', '.join(hand_written)}): "
                            "a paper's deployment is generated from its recipe; remove them")
    papers = [{"name": name, "description": recipe.deployment_description, **template,
               "tags": ["paperops", *recipe.deployment_tags, name],
               "parameters": {"paper": name, **template.get("parameters", {})}}
              for name, recipe in recipes.items()]
    return document | {"deployments": papers + listed}


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several deployments (a pool, a schedule) out in full each time, not as &id aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def prefect_file_text(document: dict[str, Any], environment: dict[str, str]) -> str:
    """The expanded deployments file, headed by the values `prefect deploy` gives its placeholders."""
    header = ["# Generated by `paperops deploy` from prefect.yaml and the recipe registry: edit those, not this.",
              "# `prefect deploy` fills the {{ $PAPEROPS_* }} placeholders with",
              *(f"#   {key}={value}" for key, value in environment.items()),
              "# and a worker's run with PAPEROPS_ROOT, the checkout `paperops worker` serves."]
    body = yaml.dump(document, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def deploy_project(options: DeployOptions) -> list[RegisteredDeployment]:
    """Work pools `gpu` and `cpu`, every deployment (one per registered paper and prefect.yaml's own), and the
    crash-detection automation, against the configured server; returns the deployments as the server now has
    them."""
    from recipes import available_recipes, load_config

    require_server()
    for paper in available_recipes():
        load_config(paper, options.profile)  # a profile some paper lacks fails here, before anything is created
    environment = options.environment()
    text = prefect_file_text(expanded_prefect_file(), environment)
    for pool in (GPU_POOL, CPU_POOL):
        ensure_work_pool(pool)
    with tempfile.TemporaryDirectory(prefix="paperops-deploy-") as scratch:
        prefect_file = Path(scratch) / PREFECT_FILE
        prefect_file.write_text(text)
        # Entrypoints are relative to the project root, the working directory of `prefect deploy`.
        command = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
                   "--prefect-file", str(prefect_file)]
        completed = subprocess.run(command, cwd=project_root(), env=os.environ | environment,
                                   capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ScaleOutError(f"`prefect deploy` failed (exit {completed.returncode}):\n"
                            f"{(completed.stdout + completed.stderr)[-4000:]}")
    ensure_crash_detection()
    return registered_deployments()


def registered_deployments() -> list[RegisteredDeployment]:
    """The deployments tagged `paperops` (every entry of prefect.yaml is) on the configured server."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["paperops"])))
        flow_names = {d.flow_id: client.read_flow(d.flow_id).name for d in deployments}
    return sorted((RegisteredDeployment(
        name=f"{flow_names[d.flow_id]}/{d.name}", work_pool=d.work_pool_name or "", parameters=dict(d.parameters),
        schedules=[f"{s.schedule.cron} ({'on' if s.active else 'off'})" for s in d.schedules])
        for d in deployments), key=lambda d: d.name)


def worker_environment(pool: str, slot: str | None) -> dict[str, str]:
    """What a worker and the flow runs it starts see: this project as the code to run, state (task results,
    DVC remote) under PAPEROPS_HOME — shared storage in the compose stack, so a run retried on another worker
    finds the finished steps — and heartbeats often enough for crash detection."""
    from settings import RUNTIME_DEFAULTS

    home = state_dir()
    environment = RUNTIME_DEFAULTS | {
        "PAPEROPS_ROOT": str(project_root()),
        "PAPEROPS_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": os.environ.get("PREFECT_LOCAL_STORAGE_PATH", str(home / "prefect" / "results")),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    }
    if pool == GPU_POOL:
        environment[SLOT_ENV] = slot or f"{socket.gethostname()}-0"
    return environment


def worker_command(pool: str, name: str | None, limit: int | None) -> list[str]:
    command = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
               "--with-healthcheck"]
    if name:
        command += ["--name", name]
    if limit:
        command += ["--limit", str(limit)]
    return command


def exec_worker(pool: str, slot: str | None, name: str | None, limit: int | None) -> None:
    """Prepares the pool (and the GPU slot's limit), then replaces this process with `prefect worker start`, so
    signals reach the worker directly (it stops on the second SIGTERM)."""
    require_server()
    environment = os.environ | worker_environment(pool, slot)
    Path(environment["PREFECT_LOCAL_STORAGE_PATH"]).mkdir(parents=True, exist_ok=True)
    ensure_work_pool(pool)
    if SLOT_ENV in environment:
        ensure_slot_limit(environment[SLOT_ENV])
    command = worker_command(pool, name, limit)
    os.execvpe(command[0], command, environment)


def pipeline_idempotency_key(paper: str, profile: str, overrides: list[str] | None = None) -> str:
    """paper + profile + data md5s (every dataset of the recipe, joined by +) + config hash: the same inputs fan out
    to the same flow run, however often the parent is retried or triggered."""
    from recipes import get_recipe, load_config
    from tasks.data import DataStageError, dataset_ref

    resolved = load_config(paper, profile, overrides or [])
    md5s = []
    for section in get_recipe(paper).datasets(resolved.config).values():
        try:
            md5s.append(dataset_ref(section.stage, project_root()).md5)
        except DataStageError:
            md5s.append("unbuilt")  # the child run builds it; the key changes once dvc.lock records it
    return f"{paper}:{profile}:{'+'.join(md5s)}:{resolved.digest()}"


@dataclass(frozen=True)
class FannedOutRun:
    paper: str
    flow_run_id: str
    state: str  # the child's final state name ("Completed", "Failed", "Crashed", ...)
    idempotency_key: str


@task(name="run-paper-deployment", task_run_name="{paper}", retry_condition_fn=retry_on_infrastructure_errors,
      **IO_RETRIES)
def run_paper_deployment(paper: str, profile: str, overrides: list[str], idempotency_key: str,
                         registers: bool = True) -> FannedOutRun:
    """Runs `paper-pipeline/<paper>` on the GPU pool and waits for it; a key seen before returns that flow run
    instead of starting another. `registers` False: a reproduction's seed run, which registers nothing."""
    from prefect.deployments import run_deployment

    child = run_deployment(f"{PIPELINE_FLOW}/{paper}",
                           parameters={"paper": paper, "profile": profile, "overrides": overrides,
                                       "registers": registers},
                           idempotency_key=idempotency_key, as_subflow=True)
    return FannedOutRun(paper=paper, flow_run_id=str(child.id), state=child.state.name if child.state else "unknown",
                        idempotency_key=idempotency_key)
