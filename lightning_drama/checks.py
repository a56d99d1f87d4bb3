"""Checks of the values a user gives (config files, command line, Python): a bad value stops the
run at construction, before any environment, directory or model is made, with one message that
names the option, the value and what is allowed.

`ConfigError` is a `ValueError`, so Python callers can catch either; the CLI prints it as one
`error: ...` line and exits with code 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A value a user chose cannot work; the message says which and what would."""


def _name(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_int(
    where: str, name: str, value: Any, minimum: int | None = None, maximum: int | None = None
) -> int:
    """`value` must be an int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_name(where, name)} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{_name(where, name)} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{_name(where, name)} must be <= {maximum}, got {value}")
    return value


def check_float(
    where: str,
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """`value` must be a finite real number with minimum <= value <= maximum and
    above < value < below (each bound only where given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_name(where, name)} must be a finite number, got {value!r}")
    for ok, relation, bound in (
        (minimum is None or value >= minimum, ">=", minimum),
        (maximum is None or value <= maximum, "<=", maximum),
        (above is None or value > above, ">", above),
        (below is None or value < below, "<", below),
    ):
        if not ok:
            raise ConfigError(f"{_name(where, name)} must be {relation} {bound}, got {value}")
    return float(value)


def check_choice(where: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(
            f"{_name(where, name)} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def check_ints(where: str, name: str, values: Any, minimum: int = 1) -> list[int]:
    """A non-empty sequence of ints, each >= minimum."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(
            f"{_name(where, name)} must be a non-empty list of integers, got {values!r}"
        )
    return [check_int(where, f"{name}[{i}]", v, minimum) for i, v in enumerate(values)]
