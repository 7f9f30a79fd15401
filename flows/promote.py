"""`paperops promote <paper> [--version N]`: the promotion gate as its own flow, on any registered version (default:
the newest compressed one), with the thresholds of the profile the version was trained with."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from recipes import load_config
from tasks.promote import newest_candidate_version, promote_version, version_profile


@flow(name="promote", flow_run_name="promote-{paper}", validate_parameters=True)
def promote_flow(paper: str, version: str | None = None) -> dict[str, Any]:
    version = version or newest_candidate_version(paper)
    gate = load_config(paper, version_profile(paper, version)).config.promote
    return asdict(promote_version(paper, version, gate, actor="promote flow"))

