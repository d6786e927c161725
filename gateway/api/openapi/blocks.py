"""The one shape every request body and query-string schema has."""

from __future__ import annotations

from typing import Any


def object_schema(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    """A JSON object of exactly these properties (unknown ones refused)."""
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }
