"""What every part of the configuration shares: the error type, the model base, value types.

Each table of the config file is a pydantic model (strict: no silent coercion, unknown
keys refused); a validation failure becomes a `ConfigError` naming the key, e.g.
`issuers[0].leeway_seconds`, so an operator never learns of a typo from a 500.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
NAME_PATTERN = NAME.pattern.replace(r"\Z", "$")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""

    def __init__(self, key: str, problem: str, *, more: Iterable[tuple[str, str]] = ()) -> None:
        self.key = key
        self.problem = problem
        # Further problems found in the same pass, for operators fixing a file at once.
        self.more = tuple(more)
        text = f"config key '{key}': {problem}"
        if self.more:
            text += "".join(f"\nconfig key '{k}': {p}" for k, p in self.more)
        super().__init__(text)


class Problem(ValueError):
    """Raised by a model's own checks: `field` (relative to the model) is at fault."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class Section(BaseModel):
    """A table of the config file: exact types, no unknown keys, immutable once loaded."""

    # Field docstrings become the descriptions of `gateway config schema`.
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, use_attribute_docstrings=True
    )


S = TypeVar("S", bound=BaseModel)


def validated(model: type[S], raw: Any, key: str = "") -> S:
    """`raw` as a `model`, or a ConfigError naming the first key at fault (and the rest)."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = [_problem(item, key) for item in error.errors(include_url=False)]
        (first_key, first_problem), *more = problems
        raise ConfigError(first_key, first_problem, more=more) from None


def key_name(prefix: str, loc: Iterable[Any]) -> str:
    """('issuers', 0, 'name') under prefix '' → 'issuers[0].name'."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_PLAIN = {
    "missing": "missing",
    "extra_forbidden": "unknown key",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _problem(item: Any, prefix: str) -> tuple[str, str]:
    loc = list(item["loc"])
    error = (item.get("ctx") or {}).get("error")
    if isinstance(error, Problem):
        if error.field:
            loc.append(error.field)
        return key_name(prefix, loc), error.problem
    if isinstance(error, ConfigError):
        return key_name(prefix, [*loc, error.key]) if error.key else key_name(prefix, loc), (
            error.problem
        )
    kind = item["type"]
    if kind in _PLAIN:
        problem = _PLAIN[kind]
        if kind not in ("missing", "extra_forbidden"):
            problem += f" (got {_type_name(item.get('input'))})"
    elif kind == "value_error":
        problem = str(error) if error is not None else item["msg"]
    else:
        # Ranges, lengths, patterns: pydantic says what was expected; the value is not
        # echoed (it may be a secret).
        problem = item["msg"][0].lower() + item["msg"][1:]
    return key_name(prefix, loc), problem


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


# --- value types -----------------------------------------------------------------------


def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError("use lower-case letters, digits, '.', '_' or '-' (at most 63)")
    return value


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as error:
        raise ValueError(f"is not a URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    return value


def _readable_file(value: str) -> str:
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not a readable file")
    return str(path)


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
    return value


Text = Annotated[str, Field(min_length=1)]
HostPort = Annotated[str, AfterValidator(_host_port)]
# The checks are the validators (their messages say what to write); the schema tells too.
Name = Annotated[str, AfterValidator(_name), Field(json_schema_extra={"pattern": NAME_PATTERN})]
HttpURL = Annotated[
    str,
    AfterValidator(_http_url),
    Field(json_schema_extra={"format": "uri", "pattern": "^https?://[^/?#]+"}),
]
ReadableFile = Annotated[str, AfterValidator(_readable_file), Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(gt=0, le=1)]


def _not_empty(items: tuple[Any, ...]) -> tuple[Any, ...]:
    if not items:
        raise ValueError("must not be empty")
    return items


# A list that must hold something. (Field(min_length=1) would add a second, confusing
# error whenever one of the items is refused.)
NotEmpty = AfterValidator(_not_empty)
NOT_EMPTY_SCHEMA = Field(json_schema_extra={"minItems": 1})


def read_secret_file(value: Any, key: str) -> str:
    """A secret kept in a file (a mounted secret): its text without the final newline."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a file path")
    try:
        path = _readable_file(value)
    except ValueError as error:
        raise ConfigError(key, str(error)) from None
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(key, f"cannot read {path}: {type(error).__name__}") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


def secret_from_file(data: Any, field: str = "client_secret") -> Any:
    """For a model's "before" check: `<field>_file` read into `<field>` (not both given)."""
    file_field = f"{field}_file"
    if isinstance(data, dict) and data.get(file_field) is not None:
        if data.get(field) is not None:
            raise Problem(file_field, f"set {field} or {file_field}, not both")
        data = {**data, field: read_secret_file(data[file_field], file_field)}
    return data
