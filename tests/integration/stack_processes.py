"""The compose stack as local processes on 127.0.0.1 (no Docker engine here): PostgreSQL, `prefect server` and
MLflow's basic-auth server (started by the same `python mlflow/server.py start` the compose file runs), each on a
free port, each stopped even when a test fails."""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MLFLOW_SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "mlflow" / "server.py"


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen | None, log: Path | None, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if process is not None and process.poll() is not None:
            break
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise ServerStartError(f"{url} did not answer (exit {process.poll() if process else None}):\n{tail}")


def stop_process(process: subprocess.Popen, signals: int = 1, grace_s: float = 30) -> None:
    """SIGTERM `signals` times, a few seconds apart (a Prefect worker only stops on the second), then SIGKILL."""
    for i in range(signals):
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s if i == signals - 1 else 3)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.kill()
        process.wait()


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process and every process it started, as when a worker's container dies with its flow runs.
    The tree, not the process group: a process worker starts each flow run in a session of its own."""
    import psutil

    try:
        tree = [psutil.Process(process.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    process.wait()


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster with password authentication on 127.0.0.1."""

    root: Path
    user: str = "paperops"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.bin = self.binaries()
        # initdb refuses to run as root: the cluster belongs to Debian's `postgres` account then.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data = self.root / "data"

    @staticmethod
    def binaries() -> Path:
        found = [shutil.which("pg_ctl")] + sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
        for candidate in filter(None, found):
            return Path(candidate).resolve().parent
        raise ServerStartError("PostgreSQL is not installed: `make test` installs it (scripts/install-postgres.sh, "
                               "Debian's `postgresql` package); or put pg_ctl/initdb on PATH")

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, databases: tuple[str, ...]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "pw"
        password_file.write_text(self.password)
        if self.run_as:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerStartError("running as root needs the `postgres` account Debian's package creates")\
                    from exc
            os.chown(self.root, account.pw_uid, account.pw_gid)
            os.chown(password_file, account.pw_uid, account.pw_gid)
        self._pg(["initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}",
                  "--auth=scram-sha-256", "--encoding=UTF8"])
        self._pg(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}", "start"])
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            for database in databases:
                connection.execute(f'CREATE DATABASE "{database}"')

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg(self, command: list[str], check: bool = True) -> None:
        completed = subprocess.run(self.run_as + [str(self.bin / command[0])] + command[1:], capture_output=True,
                                   text=True, cwd=self.root)
        if check and completed.returncode != 0:
            log = self.root / "postgres.log"
            raise ServerStartError(f"{command[0]} failed ({completed.returncode}): {completed.stdout}"
                                   f"{completed.stderr}\n{log.read_text()[-2000:] if log.exists() else ''}")


@dataclass
class Stack:
    """PostgreSQL + Prefect server + MLflow server, and the client environment that reaches them."""

    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Its own directory under /tmp: the `postgres` account cannot enter pytest's private temp tree.
        self.postgres = Postgres(Path(tempfile.mkdtemp(prefix="paperops-pg-")))
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.prefect_auth = f"paperops:{secrets.token_urlsafe(16)}"
        self.mlflow_admin_password = secrets.token_urlsafe(16)
        self.mlflow_user, self.mlflow_password = "pipeline", secrets.token_urlsafe(16)
        self.state = self.root / "state"  # PAPEROPS_HOME shared by every worker: task results live here

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def client_environment(self) -> dict[str, str]:
        """What a client (the CLI, a worker) needs: the servers' URLs and credentials, no admin secret."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        return environment | {
            "PREFECT_API_URL": self.prefect_api, "PREFECT_API_AUTH_STRING": self.prefect_auth,
            "PREFECT_HOME": str(self.root / "prefect-client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOCAL_STORAGE_PATH": str(self.state / "prefect" / "results"),
            "MLFLOW_TRACKING_URI": self.mlflow_uri, "MLFLOW_TRACKING_USERNAME": self.mlflow_user,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password, "PAPEROPS_HOME": str(self.state),
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        }

    def start(self) -> None:
        self.postgres.start(("prefect", "mlflow"))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        prefect_env = base | {
            "PREFECT_HOME": str(self.root / "prefect-server"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.postgres.url("prefect", "postgresql+asyncpg"),
            "PREFECT_SERVER_API_AUTH_STRING": self.prefect_auth, "PREFECT_API_AUTH_STRING": self.prefect_auth,
            "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_SERVER_LEVEL": "INFO",
        }
        prefect = self.spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                "--port", str(self.prefect_port)], prefect_env)
        mlflow_env = base | {"MLFLOW_ADMIN_PASSWORD": self.mlflow_admin_password,
                             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        allowed = f"127.0.0.1:{self.mlflow_port},localhost:{self.mlflow_port}"
        mlflow = self.spawn("mlflow-server", [
            sys.executable, str(MLFLOW_SERVER_SCRIPT), "start", "--backend-store-uri", self.postgres.url("mlflow"),
            "--artifacts-destination", (self.root / "mlflow-artifacts").as_uri(), "--host", "127.0.0.1",
            "--port", str(self.mlflow_port), "--allowed-hosts", allowed], mlflow_env)
        wait_for_http(f"{self.prefect_api}/health", prefect, self.root / "prefect-server.log")
        wait_for_http(f"{self.mlflow_uri}/health", mlflow, self.root / "mlflow-server.log")
        created = self.create_mlflow_user(self.mlflow_user, self.mlflow_password)
        if created.returncode != 0:
            raise ServerStartError(f"creating the MLflow user failed: {created.stdout}{created.stderr}")

    def spawn(self, name: str, command: list[str], environment: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start_worker(self, pool: str, slot: str | None, name: str) -> subprocess.Popen:
        command = [str(BIN / "paperops"), "worker", "--pool", pool, "--name", name]
        if slot:
            command += ["--slot", slot]
        return self.spawn(f"worker-{name}", command, self.client_environment())

    def command(self, arguments: list[str], extra: dict[str, str] | None = None,
                timeout_s: float = 600) -> subprocess.CompletedProcess:
        """Runs a command of the venv (`paperops`, `prefect`) as a client of the stack."""
        return subprocess.run([str(BIN / arguments[0]), *arguments[1:]], env=self.client_environment() | (extra or {}),
                              capture_output=True, text=True, timeout=timeout_s)

    def paperops(self, arguments: list[str], extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.command(["paperops", *arguments], extra)

    def create_mlflow_user(self, username: str, password: str) -> subprocess.CompletedProcess:
        """The compose stack's `mlflow-users` job: `python mlflow/server.py create-user` with the admin's password."""
        return self.command(["python", str(MLFLOW_SERVER_SCRIPT), "create-user"], {
            "MLFLOW_ADMIN_PASSWORD": self.mlflow_admin_password, "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password})

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text()[-6000:] if path.exists() else ""

    def stop(self) -> None:
        """Workers first (two SIGTERMs each), then the servers, then PostgreSQL; a flow run a worker left behind
        (it runs in a session of its own) is killed too."""
        import psutil

        for process in reversed(self.processes):
            try:
                descendants = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            stop_process(process, signals=2 if "worker" in " ".join(map(str, process.args)) else 1)
            for leftover in descendants:
                try:
                    leftover.kill()
                except psutil.NoSuchProcess:
                    pass
        self.postgres.stop()
