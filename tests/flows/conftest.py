"""A real Prefect API for the session (prefect_test_harness), each recipe's smoke pipeline run once per session
whichever test module asks first, and a real `paperops serve` model server process per test, on a free 127.0.0.1
port, stopped even when the test fails."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from typing import Any, Callable, Iterator

import pytest

from prefect.testing.utilities import prefect_test_harness

from tasks.refs import ServedModel
from tasks.serve import serve_command


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def smoke_run(prefect_api) -> Callable[[str], dict[str, Any]]:
    """The summary of `paper_pipeline(paper, "tiny", <the recipe's smoke_overrides>)`, run on first request: the
    recipe-wide checks (test_recipe_smoke.py) and the paper's own (test_<paper>_pipeline.py) read the same run."""
    from flows.pipeline import paper_pipeline
    from recipes import get_recipe

    runs: dict[str, dict[str, Any] | Exception] = {}

    def run(paper: str) -> dict[str, Any]:
        if paper not in runs:
            try:
                runs[paper] = paper_pipeline(paper, "tiny", list(get_recipe(paper).smoke_overrides))
            except Exception as exc:  # kept, so the tests that read this run fail at once instead of re-running it
                runs[paper] = exc
        outcome = runs[paper]
        if isinstance(outcome, Exception):
            raise RuntimeError(f"the {paper} smoke pipeline failed") from outcome
        return outcome

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def post_json() -> Callable[[str, dict[str, Any]], Any]:
    """POSTs a JSON payload and returns the decoded JSON answer (HTTP errors raise urllib.error.HTTPError)."""
    return _post_json


def _post_json(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


@pytest.fixture
def running_server() -> Iterator[Callable[..., str]]:
    """Starts the server `paperops serve` would start for a model (keyword options as serve_command takes them);
    returns its /invocations URL once /ping answers."""
    servers: list[subprocess.Popen] = []

    def start(model: ServedModel, **options: Any) -> str:
        port = free_port()
        command, env = serve_command(model, "127.0.0.1", port, **options)
        server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        servers.append(server)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        return f"http://127.0.0.1:{port}/invocations"
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"server did not come up (exit {server.poll()}):\n{server.stdout.read()[-3000:]}")
            time.sleep(1)

    yield start
    for server in servers:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
