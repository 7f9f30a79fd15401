"""The dependency audit (SECURITY.md): `pip-audit` checks every pin of requirements.lock against the advisories PyPI's
JSON API serves (the OSV database). An advisory fails `make test` unless .pip-audit-ignore lists it with the reason
it does not apply. Without that API (an offline machine) the audit is skipped, saying so: pip-audit itself would
then report "no known vulnerabilities" for packages it could not look up."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
IGNORE_FILE = ROOT / ".pip-audit-ignore"
# What pip-audit's default service asks for each pin (a release's JSON, with its "vulnerabilities").
AUDIT_SERVICE = "https://pypi.org/pypi/{name}/{version}/json"


def ignored_advisories() -> dict[str, str]:
    """ID -> "package: reason" of every advisory .pip-audit-ignore justifies."""
    entries = {}
    for line in IGNORE_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            advisory, _, reason = line.partition(" ")
            entries[advisory] = reason
    return entries


def audit_service_problem() -> str | None:
    """Why pip-audit cannot look the pins up from here (asked for the first one), or None when it can."""
    name, _, version = LOCK.read_text().splitlines()[0].partition("==")
    url = AUDIT_SERVICE.format(name=name, version=version)
    try:
        with urllib.request.urlopen(url, timeout=15) as reply:
            json.loads(reply.read())["vulnerabilities"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{url}: {type(exc).__name__}: {exc}"
    return None


def test_every_ignored_advisory_names_a_locked_package_and_a_reason():
    locked = {line.partition("==")[0].lower().replace("_", "-") for line in LOCK.read_text().splitlines()}
    entries = ignored_advisories()
    assert entries
    for advisory, reason in entries.items():
        package, _, why = reason.partition(": ")
        assert advisory.split("-")[0] in {"PYSEC", "GHSA", "CVE"}, advisory
        assert package.lower() in locked, f"{advisory}: {package} is not in requirements.lock"
        assert len(why) > 40, f"{advisory}: say why it does not apply"


def test_no_locked_package_has_a_known_advisory():
    problem = audit_service_problem()
    if problem is not None:
        pytest.skip(f"dependency audit skipped: pip-audit needs PyPI's JSON API, which does not answer from here "
                    f"({problem}); run `make test` where it does before a release")
    command = [sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--no-deps", "--disable-pip",
               "--strict", "--progress-spinner", "off", "--format", "json"]
    for advisory in ignored_advisories():
        command += ["--ignore-vuln", advisory]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip-audit found advisories (fix the pin or justify it in .pip-audit-ignore):\n" \
                                   f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
