"""The data-to-endpoint chain of one registered version, read back from the registry and the tracking store:
DVC stage and md5 -> GX result (for every dataset the recipe trains on) -> training run -> compression run ->
evaluation run -> registered version -> aliases -> serving endpoint, plus the "paper vs ours" certificate.
Rendered as markdown for the terminal, the version's description and an artifact of its run."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task

from recipes.base import MAIN_DATASET
from tasks.record import data_tag, extra_datasets_in, validation_artifact
from tasks.retry import IO_RETRIES, retry_on_infrastructure_errors
from tasks.tracking import configure_tracking, registered_model_name

SERVING_PORT = 5001


class LineageError(LookupError):
    """The version asked for does not exist or carries no paperops record."""


@dataclass
class Lineage:
    paper: str
    model_name: str
    version: str
    chain: list[tuple[str, str]] = field(default_factory=list)       # (link, what and where)
    certificate: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### Lineage of {self.model_name} v{self.version}", "", "| link | record |", "|---|---|"]
        lines += [f"| {link} | {record} |" for link, record in self.chain]
        if self.certificate:
            lines += ["", "### Paper vs ours", "",
                      "| figure | paper | ours | our parent (same run) | verdict | source |", "|---|---|---|---|---|---|"]
            lines += [f"| {row['metric']} | {_number(row['paper_figure'])} | {_number(row['ours'])} | "
                      f"{row['baseline']} | {row['verdict']} | {row['source']} |" for row in self.certificate]
        return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "—"


def _resolve_version(client: MlflowClient, name: str, version: str | None) -> str:
    if version is not None:
        return version
    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise LineageError(f"{name} has no registered version") from None
        return str(max(int(v.version) for v in versions))


def gx_link(tags: dict[str, str], key: str, pipeline_run_id: str) -> str:
    """The GX step of a version's chain for its dataset `key`: suite, verdict, result artifact, and an accepted
    data change (the dataset drifted from its last validated version and the user accepted it)."""
    suite, success = tags[data_tag("gx", key, "suite")], tags[data_tag("gx", key, "success")]
    accepted = tags.get(data_tag("gx", key, "data_change_accepted")) == "true"
    return (f"suite `{suite}` passed: {success}; result `runs:/{pipeline_run_id}/{validation_artifact(key, suite)}`"
            + ("; drift from the last validated version accepted (--accept-data-change)" if accepted else ""))


def version_lineage(paper: str, version: str | None = None) -> Lineage:
    """The lineage of `version` (default: @champion, else the newest) of paperops-<paper>."""
    client = configure_tracking()
    name = registered_model_name(paper)
    version = _resolve_version(client, name, version)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise LineageError(f"{name} has no version {version}") from exc
    tags = mv.tags
    if "paperops.pipeline_run_id" not in tags:
        raise LineageError(f"{name} v{version} was not registered by a paperops pipeline (no paperops tags)")
    lineage = Lineage(paper, name, version)
    pipeline = tags["paperops.pipeline_run_id"]
    lineage.chain.append(("DVC stage", f"`{tags['dataset.stage']}` md5 `{tags['dataset.md5']}` (dvc.lock)"))
    lineage.chain.append(("GX validation", gx_link(tags, MAIN_DATASET, pipeline)))
    for key in extra_datasets_in(tags):
        stage, md5 = tags[data_tag("dataset", key, "stage")], tags[data_tag("dataset", key, "md5")]
        lineage.chain.append((f"DVC stage ({key})", f"`{stage}` md5 `{md5}` (dvc.lock)"))
        lineage.chain.append((f"GX validation ({key})", gx_link(tags, key, pipeline)))
    parent_tags = tags
    if tags["paperops.role"] == "method":
        parent_tags = client.get_model_version(name, tags["compression.parent_version"]).tags
    lineage.chain.append(("training run", f"`runs:/{parent_tags['paperops.training_run_id']}` "
                                          f"(pipeline run `{parent_tags['paperops.pipeline_run_id']}`)"))
    if tags["paperops.role"] == "method":
        lineage.chain.append(("compression run", f"`runs:/{tags['paperops.training_run_id']}`: "
                                                 f"{tags['compression.method']} {tags['compression.knobs']}, "
                                                 f"from v{tags['compression.parent_version']}"))
    elif "compression.skipped" in tags:
        lineage.chain.append(("compression run", f"not applied: {tags['compression.skipped']}"))
    else:
        lineage.chain.append(("compression run", "none: this is the dense parent"))
    evaluation = tags["paperops.evaluation_run_id"]
    lineage.chain.append(("evaluation run", f"`runs:/{evaluation}` (variants as its sibling child runs)"))
    lineage.chain.append(("registered version", f"`models:/{name}/{version}` from `{tags['paperops.model_uri']}`, "
                                                f"validation_status {tags.get('validation_status', '?')}"))
    aliases = sorted(mv.aliases)
    lineage.chain.append(("aliases", ", ".join(f"@{a}" for a in aliases) or "none"))
    lineage.chain.append(("serving endpoint", "; ".join(
        f"`paperops serve {paper} --alias {a}` -> http://127.0.0.1:{SERVING_PORT}/invocations" for a in aliases)
        or "not served: no alias points here"))
    lineage.certificate = _certificate(client, evaluation, parent_tags, tags)
    return lineage


def _certificate(client: MlflowClient, evaluation_run: str, parent_tags: dict[str, str],
                 tags: dict[str, str]) -> list[dict[str, Any]]:
    try:
        path = mlflow.artifacts.download_artifacts(run_id=evaluation_run, artifact_path="tables/paper_vs_ours.json")
    except (MlflowException, OSError):
        return []
    with open(path) as f:
        table = json.load(f)
    primary = tags["primary_metric"]
    baseline = f"{primary} {parent_tags.get('metrics.' + primary, '?')} (ours: {tags.get('metrics.' + primary, '?')})"
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    return [{**row, "baseline": baseline, "verdict": row.get("verdict", "—")} for row in rows]


@task(name="store-lineage", **IO_RETRIES, retry_condition_fn=retry_on_infrastructure_errors)
def store_lineage(paper: str, versions: list[str]) -> None:
    """Writes each version's lineage as its registry description and as `lineage/v<N>.md` in its source run."""
    client = configure_tracking()
    for version in versions:
        lineage = version_lineage(paper, version)
        text = lineage.markdown()
        client.update_model_version(lineage.model_name, version, description=text)
        run_id = client.get_model_version(lineage.model_name, version).run_id
        client.log_text(run_id, text, f"lineage/v{version}.md")
