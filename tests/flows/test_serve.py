"""`paperops serve`'s server for real: a registered, aliased paper model served by `mlflow models serve` on a free
127.0.0.1 port with pickle deserialization off, answering a REST request with the logged signature's format."""
from __future__ import annotations

import time
import urllib.error

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
