"""The promotion gate on a real MLflow registry: each failing check alone blocks promotion and leaves the alias
where it was; a passing version moves @challenger and @champion and leaves an audit trail."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from recipes import get_recipe
from recipes.base import PromotionSection
from recipes import load_config
from tasks.promote import PromotionRequestError, promote_version, version_profile
from tasks.tracking import configure_tracking, ensure_experiment, log_paper_model

GATE = PromotionSection(max_metric_drop=0.5, max_cost_ratio=0.70)
PASSING = {"paperops.role": "method", "paperops.profile": "tiny", "gx.success": "true",
           "gx.suite": "image_classification", "metrics.delta_vs_parent": "-0.2", "metrics.macs_ratio": "0.62"}


@pytest.fixture(scope="module")
def model_uris() -> dict[str, str]:
    """A loadable tiny PPT model, and one whose logged config does not match its weights (cannot be served)."""
    client = configure_tracking()
    recipe = get_recipe("ppt")
    small = load_config("ppt", "tiny", ["model.embed_dim=24", "model.depth=2"]).config
    wider = load_config("ppt", "tiny", ["model.embed_dim=32", "model.depth=2"]).config
    run = client.create_run(ensure_experiment(client, "ppt"), run_name="gate-test")
    example = np.zeros((2, 28, 28), np.float32)
    good = log_paper_model(recipe, small, recipe.build_model(small), example, None, run.info.run_id)
    broken = log_paper_model(recipe, wider, recipe.build_model(small), example, None, run.info.run_id)
    client.set_terminated(run.info.run_id)
    return {"good": good, "broken": broken}


def register(uri: str, **changes: str) -> str:
    return str(mlflow.register_model(uri, "paperops-ppt", tags=PASSING | changes).version)


def champion() -> str | None:
    client = configure_tracking()
    try:
        return str(client.get_model_version_by_alias("paperops-ppt", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


@pytest.fixture(scope="module")
def promoted(model_uris) -> str:
    version = register(model_uris["good"])
    decision = promote_version.fn("ppt", version, GATE, actor="test")
    assert decision.promoted, decision.reasons
    return version


def test_passing_version_moves_champion_and_challenger_with_an_audit_trail(promoted):
    client = configure_tracking()
    assert champion() == promoted
    assert str(client.get_model_version_by_alias("paperops-ppt", "challenger").version) == promoted
    tags = client.get_model_version("paperops-ppt", promoted).tags
    assert tags["validation_status"] == "approved"
    assert "serving smoke request answered" in tags["promotion.audit"] and "by paperops test" in tags["promotion.audit"]
    assert ("top1 worse by <= 0.5 vs the parent on the point estimate (top1 changed by -0.20 vs the parent (higher "
            "is better), no item-level interval") in tags["promotion.audit"]
    history = json.loads(client.get_registered_model("paperops-ppt").tags["promotion.history"])
    assert history[-1]["version"] == promoted and history[-1]["alias"] == "champion"


@pytest.mark.parametrize("changes, reason", [
    ({"gx.success": "false"}, "did not pass its validation suite"),
    ({"metrics.delta_vs_parent": "-0.51"}, "top1 changed by -0.51"),
    ({"metrics.delta_vs_parent": "-0.51", "compression.delta_top1_ci": "[-0.9000, -0.1000]",
      "compression.delta_top1_ci_method": "paired bootstrap over 256 items (10000 resamples)"},
     "top1 changed by -0.51 vs the parent (higher is better), 95 % interval [-0.90, -0.10] (paired bootstrap over "
     "256 items (10000 resamples)): worse than the parent at 95 %; the gate allows 0.50 worse at most (its rule: the "
     "threshold on the point estimate)"),
    ({"metrics.macs_ratio": "0.71"}, "macs_ratio is 0.710"),
    ({"paperops.role": "parent"}, "not a compressed one"),
    ({"broken": "true"}, "serving smoke request failed"),
])
def test_each_check_alone_blocks_promotion_and_keeps_the_alias(model_uris, promoted, changes, reason):
    uri = model_uris["broken"] if changes.pop("broken", None) else model_uris["good"]
    version = register(uri, **changes)
    decision = promote_version.fn("ppt", version, GATE, actor="test")
    assert not decision.promoted and len(decision.reasons) == 1 and reason in decision.reasons[0]
    assert champion() == promoted and decision.previous_version == promoted
    tags = configure_tracking().get_model_version("paperops-ppt", version).tags
    assert tags["validation_status"] == "rejected" and tags["promotion.reasons"] == decision.reasons[0]


def test_unknown_version_is_refused_by_name():
    with pytest.raises(PromotionRequestError, match="no version 9999"):
        version_profile("ppt", "9999")
