"""How every command prints: `--json` for programs, aligned text for people.

JSON goes to stdout as one document (indented), with every time as RFC 3339 UTC `Z`
(`gateway.timestamps`); messages for people that are not the result go to stderr.
`--format` is kept for what writes an export file (csv, jsonl, ocsf).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any, TypeVar

import click
import orjson

from gateway.timestamps import rfc3339

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="print the result as JSON (for programs)"
)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


def to_json(value: Any, *, indent: bool = True) -> str:
    """`value` as JSON text, datetimes as RFC 3339 UTC `Z` (never `+00:00`)."""
    option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
    if indent:
        option |= orjson.OPT_INDENT_2
    return orjson.dumps(value, default=_default, option=option).decode()


def print_json(value: Any) -> None:
    click.echo(to_json(value))


def format_time(epoch: float) -> str:
    return rfc3339(epoch)


def format_datetime(value: datetime) -> str:
    """Stored times are UTC; SQLite hands them back without a zone."""
    return rfc3339(value)


def format_span(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{max(minutes, 1)}m"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())
