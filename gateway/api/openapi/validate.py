"""Request input checked against the document's schemas (the `jsonschema` library), with
errors said per field the way the API says them: `{"fields": {"reason": "is required"}}`.

Query strings arrive as text: integer and boolean parameters are converted first, array
parameters may repeat, every other parameter may be given once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

MAX_ERRORS = 20
_MAX_FIELD_NAME = 64
_INTEGER = re.compile(r"^-?[0-9]{1,12}$")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    # ECMA-262 `$` (what JSON Schema means) does not match before a trailing newline;
    # Python's does: "alice\n" must not pass as a name.
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterable[ValidationError]:
    if isinstance(instance, str) and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _validator(schema: Mapping[str, Any]) -> Any:
    """One compiled validator per schema object (the schemas are module constants)."""
    entry = _VALIDATORS.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = (schema, _Validator(schema))
        _VALIDATORS[id(schema)] = entry
    return entry[1]


def validate(instance: Any, schema: Mapping[str, Any]) -> dict[str, str]:
    """Field → message for everything wrong with `instance` (empty when it is valid)."""
    validator = _validator(schema)
    errors: dict[str, str] = {}
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        for where, message in _messages(error):
            errors.setdefault(where, message)
        if len(errors) >= MAX_ERRORS:
            break
    return errors


def parse_query(args: Mapping[str, list[str]], schema: Mapping[str, Any]) -> tuple[dict, dict]:
    """Query parameters (name → all its values) → (values, errors) under an object schema."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    properties = schema.get("properties", {})
    for name, given in args.items():
        kind = properties.get(name, {}).get("type")
        if kind == "array":
            values[name] = list(given)
            continue
        if len(given) != 1:
            errors[_field(name)] = "must be given once"
            continue
        text = given[0]
        if kind == "integer":
            if not _INTEGER.match(text.strip()):
                errors[_field(name)] = "must be an integer"
                continue
            values[name] = int(text)
        elif kind == "boolean":
            if text.strip().lower() not in _TRUE + _FALSE:
                errors[_field(name)] = "must be true or false"
                continue
            values[name] = text.strip().lower() in _TRUE
        else:
            values[name] = text
    if errors:
        return values, errors
    # A repeated parameter's bad value is the parameter's problem (`status`, not `status[1]`).
    problems: dict[str, str] = {}
    for where, message in validate(values, schema).items():
        problems.setdefault(re.sub(r"\[\d+\]$", "", where), message)
    return values, problems


def _field(path: str) -> str:
    return path if len(path) <= _MAX_FIELD_NAME else path[:_MAX_FIELD_NAME] + "…"


def _where(path: Iterable[Any], name: str | None = None) -> str:
    text = ""
    for part in [*path, *([name] if name is not None else [])]:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return _field(text) or "body"


_ARTICLE = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    for kind, name in ((str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _messages(error: ValidationError) -> list[tuple[str, str]]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    kind = error.validator
    value = error.validator_value
    instance = error.instance
    if kind == "required":
        return [(_where(path, n), "is required") for n in value if n not in instance]
    if kind == "additionalProperties":
        known = set(schema.get("properties", {}))
        return [(_where(path, n), "is not a known field") for n in instance if n not in known]
    if kind == "type":
        kinds = [value] if isinstance(value, str) else value
        wanted = " or ".join(_ARTICLE[k] for k in kinds)
        return [(_where(path), f"must be {wanted}, not {_type_name(instance)}")]
    if kind == "enum":
        return [(_where(path), f"must be one of {value}")]
    if kind == "minLength":
        return [
            (
                _where(path),
                "must not be empty" if value == 1 else f"must be at least {value} characters",
            )
        ]
    if kind == "maxLength":
        return [(_where(path), f"must be at most {value} characters")]
    if kind == "pattern":
        return [(_where(path), schema.get("x-invalid", f"must match {value}"))]
    if kind in ("minimum", "exclusiveMinimum"):
        return [(_where(path), f"must be at least {value}")]
    if kind in ("maximum", "exclusiveMaximum"):
        return [(_where(path), f"must be at most {value}")]
    if kind == "minItems":
        return [(_where(path), f"must have at least {value} item(s)")]
    if kind == "maxItems":
        return [(_where(path), f"must have at most {value} items")]
    if kind == "minProperties":
        names = ", ".join(schema.get("properties", {}))
        return [(_where(path), f"give at least one of {names}")]
    if kind == "oneOf":
        names = [n for option in value for n in option.get("required", [])]
        quoted = " or ".join(f"'{n}'" for n in names)
        where = _where(path, names[0]) if names else _where(path)
        return [(where, f"give exactly one of {quoted}" if names else "must match one alternative")]
    return [(_where(path), error.message[:200])]
