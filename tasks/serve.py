"""Serve a registered paper model over REST with paperops' model server (tasks/model_server.py), pickle-free.

The alias is resolved once, before the server starts, and the version it names is what gets served. When the
alias later moves, the running server refuses requests with a message naming the new version instead of silently
answering for the old one: restart `paperops serve` to follow it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys

from mlflow.exceptions import MlflowException

from settings import tracking_uri
from tasks.model_server import DEFAULT_MAX_REQUEST_BYTES, MAX_REQUEST_BYTES_ENV, SERVED_MODEL_ENV
from tasks.refs import ServedModel
from tasks.tracking import configure_tracking, registered_model_name


class ServingError(RuntimeError):
    """The requested model cannot be served; the message says what is missing and how to get it."""


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


def check_address(host: str, port: int) -> None:
    """Raises ServingError when a server could not listen on host:port (an unknown host, an address of another
    machine, a port in use), before anything is loaded. The probe sets SO_REUSEADDR as uvicorn does."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServingError(f"--host {host!r} does not resolve: {exc.strerror}") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServingError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def serve_command(model: ServedModel, host: str, port: int, workers: int = 1,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line and environment of the model server for `model`: the project's own interpreter,
    the registry it came from, pickle deserialization off, and the request body limit."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_REGISTRY_URI=tracking_uri(),
               MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", **{
                   SERVED_MODEL_ENV: json.dumps(dataclasses.asdict(model)),
                   MAX_REQUEST_BYTES_ENV: str(max_request_bytes)})
    command = [sys.executable, "-m", "uvicorn", "tasks.model_server:app_from_environment", "--factory",
               "--host", host, "--port", str(port), "--workers", str(workers)]
    return command, env
