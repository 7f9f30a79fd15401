"""The servers of the scale-out stack, started the same way by docker-compose.yml and by the integration test:
MLflow's tracking server with basic-auth and proxied artifacts, and the pipeline's MLflow service user.

Secrets come only from the environment (an untracked `.env` in compose): nothing here has a default password,
and MLflow's historical default admin password is refused outright.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REFUSED_PASSWORDS = {"password1234", "password", "admin", "changeme"}
PLACEHOLDER_PREFIX = "change-me"  # what .env.example ships for every secret


class StackConfigError(ValueError):
    """A server of the stack is misconfigured; the message names the setting."""


def required_secret(name: str) -> str:
    """The value of the environment secret `name`, refusing it when unset, a placeholder or a known default."""
    value = os.environ.get(name, "")
    if not value:
        raise StackConfigError(f"{name} is not set: put it in .env (see .env.example)")
    if value.lower().startswith(PLACEHOLDER_PREFIX) or value.lower() in REFUSED_PASSWORDS:
        raise StackConfigError(f"{name} still has a placeholder or default value: choose a real secret in .env")
    return value


def write_mlflow_auth_config(directory: Path, database_uri: str) -> Path:
    """MLflow's basic-auth ini: users and permissions in `database_uri` (Postgres in the stack), and every
    resource closed to users without a grant — the default `READ` would open every experiment to every user."""
    # ConfigParser interpolates "%": a percent-encoded password in the URI must be escaped.
    text = "\n".join([
        "[mlflow]",
        "default_permission = NO_PERMISSIONS",
        f"database_uri = {database_uri.replace('%', '%%')}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        "",
    ])
    path = Path(directory) / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the database password
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def mlflow_server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                          allowed_hosts: str, workers: int = 1) -> list[str]:
    """`mlflow server` with basic-auth and proxied artifacts: clients upload through the server, which alone
    holds the object-store keys; `--allowed-hosts` guards against DNS rebinding."""
    return [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination, "--serve-artifacts",
            "--host", host, "--port", str(port), "--allowed-hosts", allowed_hosts, "--workers", str(workers)]


def mlflow_server_environment(auth_config: Path) -> dict[str, str]:
    """The environment `mlflow server` needs on top of ours: the auth ini, the admin bootstrap credentials and
    the CSRF key (the same on every replica)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_USERNAME": os.environ.get("MLFLOW_ADMIN_USERNAME") or "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": required_secret("MLFLOW_ADMIN_PASSWORD"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": required_secret("MLFLOW_FLASK_SERVER_SECRET_KEY"),
    }


def exec_mlflow_server(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                       allowed_hosts: str, auth_database_uri: str | None, workers: int) -> None:
    """Replaces this process with the MLflow server (so the container's signals reach it directly)."""
    environment = mlflow_server_environment(Path("/nonexistent"))  # validates the secrets before writing
    config_dir = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    environment["MLFLOW_AUTH_CONFIG_PATH"] = str(write_mlflow_auth_config(config_dir,
                                                                          auth_database_uri or backend_store_uri))
    command = mlflow_server_command(backend_store_uri, artifacts_destination, host, port, allowed_hosts, workers)
    os.execvpe(command[0], command, os.environ | environment)


def _basic_auth_request(url: str, username: str, password: str, payload: dict | None = None,
                        method: str = "GET") -> dict:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(url, method=method, headers={
        "Authorization": f"Basic {token}", "Content-Type": "application/json"},
        data=json.dumps(payload).encode() if payload is not None else None)
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = reply.read()
    return json.loads(body) if body else {}


def ensure_mlflow_user(tracking_uri: str, admin_username: str, admin_password: str, username: str,
                       password: str) -> bool:
    """Creates `username` on a basic-auth MLflow server unless it exists; True when it was created.

    The pipeline's service user owns what it creates (MLflow grants MANAGE to a resource's creator), so it can
    register versions and move aliases on its own models; other users see nothing unless granted."""
    base = tracking_uri.rstrip("/")
    try:
        _basic_auth_request(f"{base}/api/2.0/mlflow/users/get?username={username}", admin_username, admin_password)
        return False
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise StackConfigError(f"{base}: reading user {username!r} as {admin_username!r} failed with HTTP "
                                   f"{exc.code}: {exc.read()[:300]!r}") from exc
    _basic_auth_request(f"{base}/api/2.0/mlflow/users/create", admin_username, admin_password,
                        {"username": username, "password": password}, method="POST")
    return True
