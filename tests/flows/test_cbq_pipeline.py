"""The language half of the house through the same flow, at CBQ's declared smoke size: a tiny LLaMA trained on the
real Shakespeare stage, quantized with CBQ, compared with RTN / GPTQ / SmoothQuant / CBQ-without-CFP at two
settings, registered as FP and integer-packed versions, promoted, and loaded back by alias to generate text with
pickle deserialization off. What every recipe's run must do is in test_recipe_smoke.py, on the same run."""
from __future__ import annotations

import json
import os

import mlflow
import pytest
from mlflow import MlflowClient

from settings import tracking_uri
from tasks.tracking import load_pyfunc_model

METHODS = ("rtn", "gptq", "smoothquant", "cbq", "cbq_no_cfp")
VARIANTS = {"fp"} | {f"{method}_{setting}" for method in METHODS for setting in ("W4A16", "W4A4")}


@pytest.fixture(scope="module")
def cbq_run(smoke_run):
    return smoke_run("cbq")


def test_registers_fp_and_packed_cbq_versions_with_their_record(cbq_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = cbq_run["versions"]
    fp = client.get_model_version("paperops-cbq", versions["parent_version"])
    cbq = client.get_model_version("paperops-cbq", versions["method_version"])
    assert fp.tags["dataset.stage"] == cbq.tags["dataset.stage"] == "shakespeare"
    assert fp.tags["gx.suite"] == "text_corpus" and fp.tags["gx.success"] == "true"
    assert cbq.tags["compression.parent_version"] == str(fp.version)
    assert cbq.tags["compression.method"] == "cbq"
    knobs = json.loads(cbq.tags["compression.knobs"])
    assert knobs["setting"] == "W4A16" and knobs["weight"]["bits"] == 4 and knobs["act"] is None
    assert (knobs["rank"], knobs["window"], knobs["overlap"], knobs["epochs"], knobs["calib_segments"]) == (
        4, 2, 1, 1, 8)
    assert [cbq.tags[f"compression.{knob}"] for knob in ("rank", "window", "epochs")] == ["4", "2", "1"]
    assert (cbq.tags["compression.weight_bits"], cbq.tags["compression.weight_granularity"],
            cbq.tags["compression.act_bits"]) == ("4", "per_channel", "fp32")
    assert float(cbq.tags["compression.latency_p50_ms"]) > 0
    assert float(cbq.tags["compression.size_ratio"]) < 0.6
    assert float(cbq.tags["metrics.ppl_shakespeare"]) > 1.0 and float(cbq.tags["metrics.ppl_milton"]) > 1.0
    assert {v["variant"] for v in cbq_run["variants"]} == VARIANTS
    # the size is the real file: the registered quantized weights are smaller than the FP ones
    sizes = {}
    for version in (fp, cbq):
        artifacts = mlflow.artifacts.download_artifacts(f"models:/paperops-cbq/{version.version}")
        sizes[version.version] = os.path.getsize(os.path.join(artifacts, "artifacts", "weights.safetensors"))
    assert sizes[cbq.version] < 0.6 * sizes[fp.version]
    # FP perplexity was unchanged by the outlier injection
    training = client.get_run(fp.tags["paperops.training_run_id"]).data.metrics
    assert training["outlier_injection_ppl_change"] < 1e-3 * training["ppl_val"]


def test_method_by_setting_table_covers_every_method_and_setting(cbq_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    evaluation_run = client.get_model_version("paperops-cbq", cbq_run["versions"]["method_version"]) \
        .tags["paperops.evaluation_run_id"]
    path = mlflow.artifacts.download_artifacts(run_id=evaluation_run, artifact_path="tables/method_by_setting.json")
    with open(path) as f:
        table = json.load(f)
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert {(r["setting"], r["method"]) for r in rows} == {
        (s, m) for s in ("W4A16", "W4A4") for m in METHODS}
    assert all(r["ppl_shakespeare"] > 1.0 and r["ppl_milton"] > 1.0 for r in rows)
    figures = {a.path for a in client.list_artifacts(evaluation_run, "figures")}
    assert "figures/ppl_by_setting.png" in figures


def test_champion_loads_by_alias_without_pickle_and_generates(cbq_run, monkeypatch):
    assert cbq_run["promotion"]["promoted"], cbq_run["promotion"]["reasons"]
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = load_pyfunc_model("models:/paperops-cbq@champion")
    completions = model.predict(["ROMEO:\n", "To be"], params={"max_new_tokens": 5})
    assert len(completions) == 2 and all(isinstance(c, str) and c for c in completions)
    from models.quant import PackedQuantLinear

    module = model.unwrap_python_model().module
    assert sum(isinstance(m, PackedQuantLinear) for m in module.modules()) == 7 * 2


def test_lineage_chain_and_certificate_are_stored_and_printed(cbq_run):
    from tasks.lineage_view import version_lineage

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    method_version = cbq_run["versions"]["method_version"]
    lineage = version_lineage("cbq")                         # default: @champion
    assert lineage.version == method_version
    links = dict(lineage.chain)
    version = client.get_model_version("paperops-cbq", method_version)
    assert version.tags["dataset.md5"] in links["DVC stage"]
    assert "text_corpus" in links["GX validation"] and "passed: true" in links["GX validation"]
    assert version.tags["paperops.training_run_id"] in links["compression run"]
    assert version.tags["paperops.evaluation_run_id"] in links["evaluation run"]
    # the SLA aliases may sit on the champion too (test_pareto_fronts_and_sla_aliases_are_stored checks them)
    assert {"@challenger", "@champion"} <= set(links["aliases"].split(", "))
    assert "paperops serve cbq --alias champion" in links["serving endpoint"]
    assert {row["metric"] for row in lineage.certificate} == {
        "w4a16_ppl_gain_vs_gptq", "w4a4_ppl_ratio_vs_fp", "w2a16g64_ppl_ratio_vs_fp"}
    assert all(row["verdict"] in ("meets the paper", "short of the paper", "not measured")
               for row in lineage.certificate)
    # the registry holds it: the description and a markdown artifact of the version's run
    assert version.description == lineage.markdown()
    text = mlflow.artifacts.load_text(f"runs:/{version.run_id}/lineage/v{method_version}.md")
    assert text == lineage.markdown()
    parent_links = dict(version_lineage("cbq", cbq_run["versions"]["parent_version"]).chain)
    assert parent_links["compression run"] == "none: this is the dense parent"


def test_pareto_fronts_and_sla_aliases_are_stored(cbq_run):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    assert cbq_run["steps"]["pareto"] == "Completed"
    model = client.get_registered_model("paperops-cbq")
    fronts = {cost: json.loads(model.tags[f"pareto.tiny.{cost}_front"]) for cost in ("latency", "size")}
    assert cbq_run["versions"]["method_version"] in fronts["size"]     # the smallest version is always on it
    for version in (cbq_run["versions"]["parent_version"], cbq_run["versions"]["method_version"]):
        tags = client.get_model_version("paperops-cbq", version).tags
        assert tags["pareto.size_front"] == str(version in fronts["size"]).lower()
    small = str(client.get_model_version_by_alias("paperops-cbq", "small").version)
    assert small in fronts["size"]


def test_the_packed_version_records_its_bits_and_size_ratio(cbq_run):
    from tasks.record import VersionRecord

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    method = VersionRecord.model_validate(mlflow.artifacts.load_dict(
        client.get_model_version("paperops-cbq", cbq_run["versions"]["method_version"]).tags["record.artifact"]))
    assert method.weight_bits == 4 and method.latency_batch == 2
    assert method.cost_ratio == pytest.approx(method.metrics["size_ratio"])


def test_champion_serves_generations_over_rest(cbq_run, running_server, post_json):
    from tasks.serve import resolve_served_model

    url = running_server(resolve_served_model("cbq", "champion"))
    reply = post_json(url, {"inputs": ["ROMEO:\n", "To be"], "params": {"max_new_tokens": 4}})
    assert len(reply["predictions"]) == 2 and all(isinstance(p, str) for p in reply["predictions"])

