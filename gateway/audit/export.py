"""Streamed exports of the access log: CSV, JSON Lines, OCSF API Activity JSON Lines.

Nothing is built in memory: rows come off a server-side cursor (`stream_results`, a
PostgreSQL named cursor; SQLite steps its cursor) `batch` at a time, each batch becomes one
chunk of output and is dropped before the next is read, so a 10-million-row export runs in
the memory of one batch. Rows are in (time, id) order; `since` is inclusive, `until`
exclusive.

CSV and JSON Lines carry every column, the chain fields included, so an export can be
re-hashed off-box. CSV text cells that a spreadsheet would run as a formula (a user agent or path is
client-controlled) are prefixed with a single quote by the project's one CSV writer
(`gateway.audit.spreadsheet`); use JSON Lines for byte-exact values.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from heapq import merge
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from gateway.archive.reader import log_connections
from gateway.audit import ocsf
from gateway.audit.chain import HASHED_FIELDS, canonical_time
from gateway.audit.spreadsheet import SafeCsvWriter
from gateway.db.models import AccessEvent
from gateway.timestamps import utc

EXPORT_FIELDS = ("id", *HASHED_FIELDS, "row_hash")
_COLUMNS = tuple(getattr(AccessEvent, name) for name in EXPORT_FIELDS)
# format -> (media type, file suffix)
FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
    "ocsf": ("application/x-ndjson", "ocsf.jsonl"),
}


class ExportError(ValueError):
    """A bad export request; the message names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_time(text: str, field: str) -> datetime:
    """ISO 8601 (a date, or a date and time; no offset means UTC) -> aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ExportError(
            field, f"{text!r} is not an ISO 8601 time (e.g. 2025-01-31 or 2025-01-31T12:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class ExportFilter:
    vendor: str | None = None
    project: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ExportError("until", "must be later than since")

    def clauses(self) -> list[Any]:
        clauses = []
        if self.vendor is not None:
            clauses.append(AccessEvent.vendor == self.vendor)
        if self.project is not None:
            clauses.append(AccessEvent.project == self.project)
        if self.since is not None:
            clauses.append(AccessEvent.time >= self.since)
        if self.until is not None:
            clauses.append(AccessEvent.time < self.until)
        return clauses

    def as_json(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "project": self.project,
            "since": canonical_time(self.since) if self.since else None,
            "until": canonical_time(self.until) if self.until else None,
        }


def count_rows(engine: Engine, filters: ExportFilter) -> int:
    query = select(func.count()).select_from(AccessEvent).where(*filters.clauses())
    with log_connections(engine, filters.since, filters.until) as connections:
        return sum(int(connection.execute(query).scalar_one()) for connection in connections)


def iter_rows(
    engine: Engine, filters: ExportFilter, *, batch: int = 2000
) -> Iterator[list[dict[str, Any]]]:
    """Batches of rows (as mappings of EXPORT_FIELDS), off server-side cursors on the
    database and the archives overlapping the window, merged in (time, id) order."""
    query = select(*_COLUMNS).where(*filters.clauses()).order_by(AccessEvent.time, AccessEvent.id)
    with log_connections(engine, filters.since, filters.until) as connections:
        results = [
            connection.execution_options(stream_results=True, yield_per=batch).execute(query)
            for connection in connections
        ]
        if len(results) == 1:
            for partition in results[0].partitions():
                yield [dict(zip(EXPORT_FIELDS, row, strict=True)) for row in partition]
            return
        rows = merge(*results, key=lambda row: (utc(row[1]), row[0]))
        while chunk := list(islice(rows, batch)):
            yield [dict(zip(EXPORT_FIELDS, row, strict=True)) for row in chunk]


def export_chunks(
    engine: Engine,
    fmt: str,
    filters: ExportFilter,
    *,
    batch: int = 2000,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The export as a stream of byte chunks, one per batch of rows.

    The first chunk comes only once the database and the archives in the window are open
    (`ArchiveUnavailable` otherwise), so a caller that takes it before answering never
    starts a download it cannot finish."""
    if fmt not in FORMATS:
        raise ExportError("format", f"must be one of {', '.join(FORMATS)}")
    encode = {"csv": _csv_chunk, "jsonl": _jsonl_chunk, "ocsf": _ocsf_chunk}[fmt]
    batches = iter_rows(engine, filters, batch=batch)
    first = next(batches, None)
    if fmt == "csv":
        yield _csv_line(EXPORT_FIELDS)
    for rows in [first] if first is not None else []:
        yield encode(rows)
        if on_rows is not None:
            on_rows(len(rows))
    for rows in batches:
        yield encode(rows)
        if on_rows is not None:
            on_rows(len(rows))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "time": canonical_time(row["time"])}


def _jsonl_chunk(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(_plain(row)) + b"\n" for row in rows)


def _ocsf_chunk(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(ocsf.to_event(row)) + b"\n" for row in rows)


def _csv_line(values: tuple[Any, ...] | list[Any]) -> bytes:
    buffer = io.StringIO()
    SafeCsvWriter(buffer).writerow(values)
    return buffer.getvalue().encode()


def _csv_chunk(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    for row in rows:
        values = list(row.values())
        values[1] = canonical_time(row["time"])
        writer.writerow(values)
    return buffer.getvalue().encode()
