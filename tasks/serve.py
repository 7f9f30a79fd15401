"""Serve a registered paper model over REST with `mlflow models serve`, pickle-free.

The alias is resolved once, before the server starts, and the version it names is what gets served. When the
alias later moves, the running server refuses requests with a message naming the new version (see
mlflow/paper_model.py) instead of silently answering for the old one: restart `paperops serve` to follow it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from settings import tracking_uri
from tasks.tracking import configure_tracking, registered_model_name


class ServingError(RuntimeError):
    """The requested model cannot be served; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class ServedModel:
    model_name: str
    alias: str
    version: str
    model_uri: str          # models:/<name>/<version>: pinned, not the moving alias


def resolve_served_model(paper: str, alias: str) -> ServedModel:
    client = configure_tracking()
    name = registered_model_name(paper)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise ServingError(f"no registered model {name} in {tracking_uri()}: run `paperops run {paper}` first") from exc
    try:
        version = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise ServingError(f"{name} has no version with alias @{alias}; promote one first "
                           f"(`paperops run {paper}` promotes when the gate passes)") from exc
    return ServedModel(name, alias, version, f"models:/{name}/{version}")


def serve_command(model: ServedModel, host: str, port: int, workers: int = 1) -> tuple[list[str], dict[str, str]]:
    """The `mlflow models serve` command line and environment for `model`: the project's own interpreter
    (--env-manager local), the registry it came from, and pickle deserialization off."""
    # mlflow execs `uvicorn` by name: the project's environment must come first on PATH
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_REGISTRY_URI=tracking_uri(),
               MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",
               PAPEROPS_SERVED_ALIAS=f"{model.model_name}@{model.alias}={model.version}")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model.model_uri, "--env-manager", "local",
               "--host", host, "--port", str(port), "--workers", str(workers)]
    return command, env
