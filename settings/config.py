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


# What PyYAML raises on text it cannot read: its own errors, and what its constructors let through on a malformed
# tagged or implicit scalar (`!!float abc`, `2001-13-45`, `!!timestamp x`) or on nesting deeper than the stack.
_YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError, RecursionError)
# The values a config holds: what JSON has. YAML's dates, bytes and sets would pass a free-form section and fail
# later; anchors can make a value that refers to itself or expands exponentially, hence the depth and size bounds.
_PLAIN_SCALARS = (str, int, float, bool, type(None))
MAX_VALUE_DEPTH = 32
MAX_VALUE_ITEMS = 10_000


def _check_plain(value: Any, where: str) -> None:
    pending, visited = [(value, 0)], 0
    while pending:
        item, depth = pending.pop()
        visited += 1
        if depth > MAX_VALUE_DEPTH:
            raise ConfigError(f"{where}: the value nests deeper than {MAX_VALUE_DEPTH} levels")
        if visited > MAX_VALUE_ITEMS:
            raise ConfigError(f"{where}: the value holds more than {MAX_VALUE_ITEMS} items")
        if isinstance(item, dict):
            pending += [(child, depth + 1) for pair in item.items() for child in pair]
        elif isinstance(item, list):
            pending += [(child, depth + 1) for child in item]
        elif not isinstance(item, _PLAIN_SCALARS):
            raise ConfigError(f"{where}: YAML reads a {type(item).__name__} here; a value is a number, string, "
                              "boolean, null, list or mapping (quote it for a string)")
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode()
            except UnicodeEncodeError as exc:  # YAML's "\ud800" escapes decode to lone surrogates
                raise ConfigError(f"{where}: a string holds a lone surrogate ({exc.reason}), not a character") \
                    from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """`key=value` as (the dotted key's parts, the value read as YAML); ConfigError names the override."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=2")
    where = f"--set {key.strip()}"
    try:
        value = yaml.safe_load(raw)
    except RecursionError as exc:
        raise ConfigError(f"{where}: the value nests deeper than {MAX_VALUE_DEPTH} levels") from exc
    except _YAML_ERRORS as exc:
        raise ConfigError(f"{where}: value is not valid YAML: {exc}") from exc
    _check_plain(value, where)
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
    except _YAML_ERRORS as exc:
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
