"""Bound checks for the `__post_init__` of plain config dataclasses: a bad value raises ValueError naming the field,
the bound and the value, so a typo in a config file or a test is caught where the config is made, not steps later.
A field that is None (an optional setting left unset) passes every check."""
from __future__ import annotations

from typing import Any, Callable, Iterable


def _check(config: object, names: Iterable[str], holds: Callable[[Any], bool], bound: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not holds(value):  # `not holds` also rejects NaN
            raise ValueError(f"{name} must be {bound}, got {value!r}")


def positive(config: object, *names: str) -> None:
    _check(config, names, lambda v: v > 0, "> 0")


def non_negative(config: object, *names: str) -> None:
    _check(config, names, lambda v: v >= 0, ">= 0")


def at_least(config: object, low: int, *names: str) -> None:
    _check(config, names, lambda v: v >= low, f">= {low}")


def below(config: object, high: float, *names: str) -> None:
    _check(config, names, lambda v: v < high, f"< {high}")


def at_most(config: object, high: float, *names: str) -> None:
    _check(config, names, lambda v: v <= high, f"<= {high}")


def one_of(config: object, name: str, choices: tuple[str, ...]) -> None:
    _check(config, (name,), lambda v: v in choices, f"one of {choices}")
