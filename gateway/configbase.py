"""What every part of the configuration shares: the error type and value checks."""

from __future__ import annotations

import os
import re
from pathlib import Path
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


def existing_file(value: Any, key: str) -> str:
    """A path to a readable file, or a ConfigError naming the key."""
    path = Path(config_str(value, key))
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(key, f"{path} is not a readable file")
    return str(path)


def read_secret_file(value: Any, key: str) -> str:
    """A secret kept in a file (a mounted secret): its text without the final newline."""
    path = existing_file(value, key)
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(key, f"cannot read {path}: {type(error).__name__}") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret
