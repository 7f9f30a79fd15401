"""The MLflow tracking server of the stack, started the same way by docker-compose.yml and the integration test,
and the one-shot job that creates the pipeline's service user on it.

    python mlflow/server.py start --backend-store-uri URI --artifacts-destination URI [--host --port ...]
    python mlflow/server.py create-user

`start` renders basic_auth.ini.template and execs `mlflow server --app-name basic-auth --serve-artifacts`:
basic-auth with no permission by default, and artifacts proxied by the server, which alone holds the object
store's keys. `create-user` creates MLFLOW_TRACKING_USERNAME (password MLFLOW_TRACKING_PASSWORD) on the server
at MLFLOW_TRACKING_URI with the admin's credentials, and does nothing when it exists.

Secrets come only from the environment (an untracked `.env` in compose): nothing here has a default password,
and a placeholder or a known default (MLflow's historical `password1234`) is refused, exit status 2.

Run as a script, this folder comes first on sys.path: no file in it may take the name of a module it or a
library imports (a `mlflow.py` here would shadow MLflow itself).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import string
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

AUTH_CONFIG_TEMPLATE = Path(__file__).with_name("basic_auth.ini.template")
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


def write_auth_config(directory: Path, database_uri: str) -> Path:
    """basic_auth.ini.template with `database_uri` filled in, written to `directory` readable by its owner only
    (it holds the database password)."""
    # ConfigParser interpolates "%": a percent-encoded password in the URI must be escaped.
    text = string.Template(AUTH_CONFIG_TEMPLATE.read_text()).substitute(database_uri=database_uri.replace("%", "%%"))
    path = Path(directory) / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


def exec_mlflow_server(arguments: argparse.Namespace) -> None:
    """Replaces this process with the MLflow server (so the container's signals reach it directly)."""
    environment = mlflow_server_environment(Path("/nonexistent"))  # validates the secrets before writing
    config_dir = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    auth_database_uri = arguments.auth_database_uri or arguments.backend_store_uri
    environment["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(config_dir, auth_database_uri))
    command = mlflow_server_command(arguments.backend_store_uri, arguments.artifacts_destination, arguments.host,
                                    arguments.port, arguments.allowed_hosts, arguments.workers)
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
    except urllib.error.URLError as exc:
        raise StackConfigError(f"MLFLOW_TRACKING_URI={base} does not answer: {exc.reason}") from exc
    try:
        _basic_auth_request(f"{base}/api/2.0/mlflow/users/create", admin_username, admin_password,
                            {"username": username, "password": password}, method="POST")
    except urllib.error.HTTPError as exc:  # e.g. MLflow's password rule: 12 characters at least
        raise StackConfigError(f"{base}: creating user {username!r} failed with HTTP {exc.code}: "
                               f"{exc.read()[:300]!r}") from exc
    return True


def create_pipeline_user() -> str:
    """`create-user`: the service user from the environment, created unless it exists; says which."""
    username = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    if not username:
        raise StackConfigError("MLFLOW_TRACKING_USERNAME is not set: put it in .env (see .env.example)")
    created = ensure_mlflow_user(
        os.environ.get("MLFLOW_TRACKING_URI") or "http://127.0.0.1:5000",
        os.environ.get("MLFLOW_ADMIN_USERNAME") or "admin", required_secret("MLFLOW_ADMIN_PASSWORD"),
        username, required_secret("MLFLOW_TRACKING_PASSWORD"))
    return f"MLflow user {username!r} {'created' if created else 'already exists'}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlflow/server.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="exec the basic-auth MLflow server (admin from MLFLOW_ADMIN_USERNAME"
                                              "/MLFLOW_ADMIN_PASSWORD, CSRF key from MLFLOW_FLASK_SERVER_SECRET_KEY)")
    start.add_argument("--backend-store-uri", required=True, help="e.g. postgresql://user:pw@host/mlflow")
    start.add_argument("--artifacts-destination", required=True, help="e.g. s3://mlflow-artifacts")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument("--allowed-hosts", default="localhost,127.0.0.1",
                       help="Host headers the server answers (DNS-rebinding guard)")
    start.add_argument("--auth-database-uri", default=None, help="users and permissions; default: the backend store")
    start.add_argument("--workers", type=int, default=1)
    commands.add_parser("create-user", help="create MLFLOW_TRACKING_USERNAME on the server at MLFLOW_TRACKING_URI "
                                            "with the admin's credentials; nothing when it exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_args(argv)
    try:
        if arguments.command == "start":
            exec_mlflow_server(arguments)
        else:
            print(create_pipeline_user())
    except StackConfigError as exc:
        action = "start MLflow" if arguments.command == "start" else "create the MLflow user"
        print(f"cannot {action}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
