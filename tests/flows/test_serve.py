"""`paperops serve`'s server for real: a registered, aliased paper model served by tasks/model_server.py on a free
127.0.0.1 port with pickle deserialization off, answering a REST request with the logged signature's format and
refusing hostile ones (too large, malformed, non-finite, the wrong shape) with a short 4xx, never a 500 or NaN."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest

from recipes import get_recipe
from recipes import load_config
from tasks.serve import ServingError, resolve_served_model
from tasks.tracking import configure_tracking, ensure_experiment, log_paper_model


@pytest.fixture(scope="module")
def champion():
    client = configure_tracking()
    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", ["model.embed_dim=24", "model.depth=2"]).config
    run = client.create_run(ensure_experiment(client, "ppt"), run_name="serve-test")
    uri = log_paper_model(recipe, cfg, recipe.build_model(cfg), np.zeros((2, 28, 28), np.float32), None,
                          run.info.run_id)
    client.set_terminated(run.info.run_id)
    version = mlflow.register_model(uri, "paperops-ppt").version
    client.set_registered_model_alias("paperops-ppt", "serve-test", version)
    return str(version)


def test_unknown_alias_is_refused_clearly(champion):
    with pytest.raises(ServingError, match="no version with alias @nonexistent"):
        resolve_served_model("ppt", "nonexistent")


def test_server_answers_a_request_and_refuses_once_the_alias_moves(champion, running_server, post_json):
    model = resolve_served_model("ppt", "serve-test")
    assert model.version == champion and model.model_uri.endswith(f"/{champion}")
    url = running_server(model)
    images = np.random.default_rng(0).integers(0, 255, (3, 28, 28)).astype(np.float32)
    predictions = np.asarray(post_json(url, {"inputs": images.tolist()})["predictions"])
    assert predictions.shape == (3, 10)
    assert np.allclose(predictions.sum(axis=1), 1.0, atol=1e-4)    # class probabilities
    # the alias moves: the server refuses, naming the new version, instead of answering for the old one
    client = configure_tracking()
    moved_to = str(mlflow.register_model(model.model_uri, "paperops-ppt").version)
    client.set_registered_model_alias("paperops-ppt", "serve-test", moved_to)
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as refused:
        post_json(url, {"inputs": images.tolist()})
    assert f"moved from v{champion} to v{moved_to}" in refused.value.read().decode()


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _strict_json(answer: bytes) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in an answer: not JSON")

    return json.loads(answer, parse_constant=refuse)


def _send_head_of(url: str, declared: int | None, first: bytes) -> tuple[int, bytes]:
    """Sends only the start of a body (declared by Content-Length, or chunked when `declared` is None) and reads
    the answer the server gives without waiting for the rest."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.putrequest("POST", address.path)
    connection.putheader("Content-Type", "application/json")
    if declared is None:
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(f"{len(first):x}\r\n".encode() + first + b"\r\n")
    else:
        connection.putheader("Content-Length", str(declared))
        connection.endheaders()
        connection.send(first)
    reply = connection.getresponse()
    try:
        return reply.status, reply.read()
    finally:
        connection.close()


def test_hostile_requests_get_a_short_4xx_never_a_500_an_echo_or_nan(champion, running_server):
    url = running_server(resolve_served_model("ppt", "serve-test"), max_request_bytes=1_000_000)
    image = np.zeros((28, 28), np.float32).tolist()

    def refused(status: int, answer: bytes, says: str) -> None:
        body = _strict_json(answer)
        assert status == body["error_code"] and says in body["message"], (status, answer[:300])
        assert len(answer) < 600  # short, whatever came in

    # a body over the limit: refused from its Content-Length before it is read, or once a chunked one passes it
    refused(*_send_head_of(url, 50_000_000, b'{"inputs": "' + b"A" * 60_000), "exceeds the server's limit of "
            "1000000 bytes")
    status, answer = _send_head_of(url, None, b'{"inputs": "' + b"A" * 1_100_000)
    refused(status, answer, "exceeds the server's limit")
    assert status == 413
    # a long string where the images go: described, not echoed back
    status, answer = _post(url, b'{"inputs": "' + b"A" * 900_000 + b'"}')
    refused(status, answer, "inputs must be a (n, 28, 28) array of finite float32 numbers")
    assert status == 400 and b"AAAA" not in answer
    # deeply nested, malformed, NaN, beyond float32, the wrong shape, not numbers, the wrong content type: 4xx
    for body, says in [(b"[" * 200_000 + b"]" * 200_000, "nests JSON too deeply"),
                       (b'{"inputs": [[1, 2,', "not valid JSON"),
                       (json.dumps({"inputs": [image[:-1] + [[float("nan")] * 28]]}).encode(), "NaN and Infinity"),
                       (json.dumps({"inputs": [image[:-1] + [[1e39] * 28]]}).encode(), "beyond the float32 range"),
                       (json.dumps({"inputs": [image[:20]]}).encode(), "its shape is (1, 20, 28)"),
                       (json.dumps({"inputs": [[["x"] * 28] * 28]}).encode(), "something other than numbers"),
                       (json.dumps({"inputs": [image], "params": {"temperature": 2}}).encode(), "params must be"),
                       (json.dumps({"instances": [image]}).encode(), 'a request is a JSON object {"inputs"')]:
        status, answer = _post(url, body)
        assert status == 400, (says, status, answer[:300])
        refused(status, answer, says)
    refused(*_post(url, json.dumps({"inputs": [image]}).encode(), "text/csv"), "Content-Type: application/json")
    # finite pixels a random ViT overflows on: the NaN answer becomes a 422, so a 200 is always strict JSON
    status, answer = _post(url, json.dumps({"inputs": [[[1e30] * 28] * 28]}).encode())
    assert status == 422
    refused(status, answer, "not finite")
    # and the server still answers a good request
    status, answer = _post(url, json.dumps({"inputs": [image, image]}).encode())
    assert status == 200 and np.asarray(_strict_json(answer)["predictions"]).shape == (2, 10)
