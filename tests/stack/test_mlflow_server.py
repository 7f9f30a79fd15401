"""mlflow/server.py, the stack's MLflow server entrypoint and its service-user job, without a server: the secrets
it refuses, the basic-auth config it renders (read back by MLflow's own reader), the command it execs, the users
API calls against a stand-in server, and its exit status when run by path as compose runs it."""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from script_module import REPO, load_script

server = load_script("mlflow/server.py")
MLFLOW_DIR = REPO / "mlflow"


@pytest.mark.parametrize("value, problem", [
    (None, "is not set"), ("", "is not set"), ("change-me-mlflow-admin", "placeholder"),
    ("password1234", "placeholder or default"), ("Admin", "placeholder or default"),
])
def test_refuses_missing_placeholder_and_default_secrets(monkeypatch, value, problem):
    if value is None:
        monkeypatch.delenv("MLFLOW_ADMIN_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ADMIN_PASSWORD", value)
    with pytest.raises(server.StackConfigError, match=f"^MLFLOW_ADMIN_PASSWORD (still has a )?{problem}"):
        server.required_secret("MLFLOW_ADMIN_PASSWORD")


def test_auth_config_gives_no_default_permission_and_keeps_a_percent_encoded_password(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    path = server.write_auth_config(tmp_path, "postgresql://mlflow:p%40ss@db:5432/mlflow")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the database password
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.database_uri == "postgresql://mlflow:p%40ss@db:5432/mlflow"
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert config.grant_default_workspace_access is False


def test_server_runs_basic_auth_with_proxied_artifacts_and_the_admin_from_the_environment(tmp_path, monkeypatch):
    command = server.mlflow_server_command("postgresql://x/mlflow", "s3://bucket", "0.0.0.0", 5000, "mlflow:5000")
    assert command[1:4] == ["server", "--app-name", "basic-auth"] and "--serve-artifacts" in command
    assert command[command.index("--allowed-hosts") + 1] == "mlflow:5000"
    monkeypatch.setenv("MLFLOW_ADMIN_PASSWORD", "s3cret-admin")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "k" * 32)
    monkeypatch.delenv("MLFLOW_ADMIN_USERNAME", raising=False)
    environment = server.mlflow_server_environment(tmp_path / "basic_auth.ini")
    assert environment["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == "s3cret-admin"
    assert environment["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "basic_auth.ini")


class UsersApi(BaseHTTPRequestHandler):
    """MLflow's users endpoints as the job calls them, with MLflow's password rule: `users` holds name ->
    password, `admin` the credentials that may call them; every request is recorded as (method, path, user,
    payload)."""

    users: dict[str, str] = {}
    admin = ("admin", "s3cret-admin")
    requests: list[tuple] = []

    def _answer(self, status: int, body: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def _caller(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return name, password

    def _handle(self, payload: dict | None) -> None:
        caller = self._caller()
        self.requests.append((self.command, self.path, caller and caller[0], payload))
        if caller != self.admin:
            return self._answer(401, {"error_code": "UNAUTHENTICATED"})
        if self.command == "GET":
            name = self.path.split("username=", 1)[1]
            return self._answer(200, {"user": {"username": name}}) if name in self.users else \
                self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
        if len(payload["password"]) < 12:
            return self._answer(400, {"error_code": "INVALID_PARAMETER_VALUE",
                                      "message": "Password must be at least 12 characters."})
        self.users[payload["username"]] = payload["password"]
        return self._answer(200, {})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._handle(None)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._handle(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def users_api():
    UsersApi.users, UsersApi.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), UsersApi)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_creates_the_service_user_once_with_the_admin_credentials(users_api):
    assert server.ensure_mlflow_user(users_api, "admin", "s3cret-admin", "pipeline", "pipeline-pw-1") is True
    assert server.ensure_mlflow_user(users_api, "admin", "s3cret-admin", "pipeline", "pipeline-pw-2") is False
    assert UsersApi.users == {"pipeline": "pipeline-pw-1"}
    assert [(method, path.split("?")[0], caller) for method, path, caller, _ in UsersApi.requests] == [
        ("GET", "/api/2.0/mlflow/users/get", "admin"), ("POST", "/api/2.0/mlflow/users/create", "admin"),
        ("GET", "/api/2.0/mlflow/users/get", "admin")]


def test_wrong_admin_password_short_password_or_no_server_is_a_clear_error(users_api, monkeypatch, capsys):
    with pytest.raises(server.StackConfigError, match="reading user 'pipeline' as 'admin' failed with HTTP 401"):
        server.ensure_mlflow_user(users_api, "admin", "wrong-password", "pipeline", "pipeline-pw-1")
    with pytest.raises(server.StackConfigError, match="creating user 'pipeline' failed with HTTP 400: .*12 char"):
        server.ensure_mlflow_user(users_api, "admin", "s3cret-admin", "pipeline", "short-pw")
    assert UsersApi.users == {}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pipeline-pw-1")
    monkeypatch.setenv("MLFLOW_ADMIN_PASSWORD", "s3cret-admin")
    assert server.main(["create-user"]) == 2
    assert "cannot create the MLflow user: MLFLOW_TRACKING_URI=http://127.0.0.1:9 does not answer" in \
        capsys.readouterr().err


def test_run_by_path_it_exits_2_naming_the_missing_secret_before_starting_anything(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    start = subprocess.run([sys.executable, "mlflow/server.py", "start", "--backend-store-uri",
                            f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", tmp_path.as_uri()],
                           cwd=REPO, env=environment, capture_output=True, text=True, timeout=60)
    assert start.returncode == 2 and "Traceback" not in start.stderr
    assert start.stderr.strip() == ("cannot start MLflow: MLFLOW_ADMIN_PASSWORD is not set: put it in .env "
                                    "(see .env.example)")
    user = subprocess.run([sys.executable, "mlflow/server.py", "create-user"], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=60)
    assert user.returncode == 2 and "MLFLOW_TRACKING_USERNAME is not set" in user.stderr


def test_mlflow_folder_is_no_package_and_shadows_nothing():
    """A script in mlflow/ runs with the folder first on sys.path: a file named like an importable module
    (mlflow.py, flask.py) would replace it for the script and everything it imports."""
    assert not (MLFLOW_DIR / "__init__.py").exists()
    shadowing = [path.name for path in MLFLOW_DIR.glob("*.py") if importlib.util.find_spec(path.stem) is not None]
    assert shadowing == []
