"""What every part of the configuration shares: the error type and value checks."""

from __future__ import annotations

import re
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key
        self.problem = problem


def config_str(value: Any, key: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "missing" if value is None else "must be a non-empty string")
    return value


def config_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value
