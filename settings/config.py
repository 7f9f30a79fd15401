"""Config mechanics every layer may use: a YAML file holds one block per profile (tiny, full, ...), `--set
key=value` overrides apply to it, a pydantic schema validates the result, and the resolved config is hashed per
section so each pipeline step's cache key covers exactly the settings that step reads. Which schema a paper's
config has is the recipe layer's business (`recipes.load_config`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

# Sections that cannot change a result: timeouts, the decisive criteria (they judge a result, written before the
# run) and what only a reproduction applies (its overrides change the config they are applied to, and so its digest).
# Left out of every digest, so editing them re-runs nothing.
RESULT_NEUTRAL_SECTIONS = ("runtime", "decisive", "reproduce")


class ConfigError(ValueError):
    """A config file, profile or override is wrong; the message says which and where."""


@dataclass(frozen=True)
class ResolvedConfig:
    paper: str
    profile: str
    source: str  # the YAML file it came from
    config: Any  # the validated schema instance (a recipe's RecipeConfig)

    def as_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def digest(self, excluding: Sequence[str] = ()) -> str:
        """sha256 of the canonical JSON of the resolved config without the `excluding` top-level sections.

        A step's key excludes the sections only later steps read (training ignores `compress`, `evaluate` and
        `promote`), so changing a compression knob re-runs compression and evaluation but not training."""
        excluded = set(excluding) | set(RESULT_NEUTRAL_SECTIONS)
        data = {k: v for k, v in self.as_dict().items() if k not in excluded}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=2")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def profiles(path: Path) -> dict[str, dict[str, Any]]:
    """The profile blocks (tiny, full, ...) of the YAML config file at `path`, by name, in file order."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return {k: v for k, v in document.items() if isinstance(v, dict)}


def read_profile(path: Path, profile: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The `profile` block of the YAML file at `path` with the overrides applied, as plain data."""
    blocks = profiles(path)
    if profile not in blocks:
        raise ConfigError(f"{path}: no profile {profile!r}; profiles: {', '.join(blocks)}")
    data = json.loads(json.dumps(blocks[profile]))  # deep copy
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, text)
    return data


def validate(schema: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    """`data` validated by `schema`; every problem is named by its dotted key, in one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from exc
