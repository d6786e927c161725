"""Read the per-record access log: filtered, time-ordered pages with a stable cursor.

The auditor's views (`gateway.api.audit`) and commands (`gateway audit query|record`) are
thin layers over this module. Everything they accept arrives as text and is validated
here; a refusal is a `QueryError` naming the parameter.

Ordering and paging: events come sorted by (time, id). A page's `next_cursor` is the
base64url of the last event's (time, id); the next page holds the events strictly after
it. Pages therefore never repeat or skip an event that was committed before the walk
reached its position, however many rows arrive meanwhile. A row is committed a few
milliseconds after its `time` (the request's start), so a walk that runs up to "now" can
miss rows of requests still in flight at that moment; end the window (`until`) a few
seconds in the past for a complete reading.

Time windows are half-open: `since` <= time < `until`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from heapq import merge
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from gateway.archive.reader import log_connections
from gateway.audit.chain import canonical_time
from gateway.db.models import AccessEvent
from gateway.db.times import time_param
from gateway.policy.store import record_admin_event

DECISIONS = ("allow", "deny", "filtered")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_VALUE_LENGTH = 255
_INTEGER = re.compile(r"^[0-9]{1,7}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Filter parameters, in the order they are documented and echoed.
FILTERS = (
    "contractor",
    "vendor",
    "issuer",
    "project",
    "task",
    "record",
    "decision",
    "since",
    "until",
    "client_ip",
    "request_id",
)
PAGING = ("limit", "cursor")

# The columns an event carries (docs/DESIGN.md §6, plus its id and place in its hash chain).
EVENT_COLUMNS = (
    AccessEvent.id,
    AccessEvent.time,
    AccessEvent.request_id,
    AccessEvent.issuer,
    AccessEvent.subject,
    AccessEvent.vendor,
    AccessEvent.client_ip,
    AccessEvent.user_agent,
    AccessEvent.method,
    AccessEvent.path,
    AccessEvent.project,
    AccessEvent.task,
    AccessEvent.record_id,
    AccessEvent.record_sha256,
    AccessEvent.action,
    AccessEvent.decision,
    AccessEvent.reason,
    AccessEvent.policy_version,
    AccessEvent.upstream_status,
    AccessEvent.bytes,
    AccessEvent.chain_id,
    AccessEvent.seq,
)


class QueryError(ValueError):
    """Refused query input; `param` names the parameter at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


# --- values ----------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive value (SQLite may return one) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_time(value: datetime | None) -> str | None:
    """Microsecond UTC text, `2026-11-24T01:00:26.139874Z`."""
    return None if value is None else canonical_time(utc(value))


def parse_time(param: str, text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (`Z` or `+02:00`) → aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or len(text) > 64:
        raise QueryError(
            param, f"{text[:64]!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00Z)"
        )
    if value.tzinfo is None:
        raise QueryError(param, f"{text!r} needs a UTC offset (e.g. 2026-12-01T00:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise QueryError(param, f"{text!r} is out of range") from None


def check_text(param: str, value: str) -> str:
    if not value:
        raise QueryError(param, "must not be empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise QueryError(param, f"is longer than {MAX_VALUE_LENGTH} characters")
    if _CONTROL.search(value):
        raise QueryError(param, "must not contain control characters")
    return value


def parse_contractor(param: str, value: str) -> tuple[str, str]:
    issuer, sep, subject = check_text(param, value).partition(":")
    if not sep or not issuer or not subject:
        raise QueryError(param, f"{value!r} is not <issuer name>:<sub> (e.g. acme-idp:alice)")
    return issuer, subject


def parse_limit(text: str) -> int:
    if not _INTEGER.match(text.strip()) or not 1 <= int(text) <= MAX_LIMIT:
        raise QueryError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


@dataclass(frozen=True)
class Cursor:
    time: datetime
    id: int

    def encode(self) -> str:
        raw = orjson.dumps([format_time(self.time), self.id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, param: str = "cursor") -> Cursor:
        problem = QueryError(param, "is not a cursor returned by this API")
        if not text or len(text) > 200:
            raise problem
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            stamp, row_id = orjson.loads(raw)
            if not isinstance(stamp, str) or type(row_id) is not int or row_id < 0:
                raise problem
            value = datetime.fromisoformat(stamp)
            if value.tzinfo is None:
                raise problem
            return cls(value.astimezone(UTC), row_id)
        except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
            raise problem from None


# --- filters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    contractor: tuple[str, str] | None = None
    vendor: str | None = None
    issuer: str | None = None
    project: str | None = None
    task: str | None = None
    record: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    client_ip: str | None = None
    request_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The filters given, as the text an auditor would type (for logs and echoes)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if item.name == "contractor":
                value = f"{value[0]}:{value[1]}"
            elif isinstance(value, datetime):
                value = format_time(value)
            out[item.name] = value
        return out

    def conditions(self, dialect: str) -> list[ColumnElement[bool]]:
        """SQL conditions for these filters on `access_log`."""
        event = AccessEvent
        out: list[ColumnElement[bool]] = []
        if self.contractor is not None:
            out += [event.issuer == self.contractor[0], event.subject == self.contractor[1]]
        for name, column in (
            ("vendor", event.vendor),
            ("issuer", event.issuer),
            ("project", event.project),
            ("task", event.task),
            ("record", event.record_id),
            ("decision", event.decision),
            ("client_ip", event.client_ip),
            ("request_id", event.request_id),
        ):
            value = getattr(self, name)
            if value is not None:
                out.append(column == value)
        if self.since is not None:
            out.append(event.time >= time_param(self.since, dialect))
        if self.until is not None:
            out.append(event.time < time_param(self.until, dialect))
        return out


def check_params(params: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, str]:
    """Parameter name → its one text value; unknown or repeated parameters are refused."""
    values: dict[str, str] = {}
    for name, given in params.items():
        if name not in allowed:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise QueryError(shown, f"unknown parameter (expected one of: {', '.join(allowed)})")
        if isinstance(given, list | tuple):
            if len(given) != 1:
                raise QueryError(name, "must be given once")
            given = given[0]
        if given is None:
            continue
        if not isinstance(given, str):
            raise QueryError(name, "must be text")
        values[name] = given
    return values


def parse_filter(values: Mapping[str, str]) -> EventFilter:
    """Validated filters out of checked parameter values (`check_params`)."""
    parsed: dict[str, Any] = {}
    for name in FILTERS:
        text = values.get(name)
        if text is None:
            continue
        if name == "contractor":
            parsed[name] = parse_contractor(name, text)
        elif name in ("since", "until"):
            parsed[name] = parse_time(name, text)
        elif name == "decision":
            if text not in DECISIONS:
                raise QueryError(name, f"{text[:32]!r} is not one of {', '.join(DECISIONS)}")
            parsed[name] = text
        else:
            parsed[name] = check_text(name, text)
    result = EventFilter(**parsed)
    if result.since and result.until and result.until <= result.since:
        raise QueryError("until", "must be later than since")
    if result.contractor and result.issuer and result.issuer != result.contractor[0]:
        raise QueryError("issuer", "contradicts the issuer of contractor")
    return result


@dataclass(frozen=True)
class EventQuery:
    filter: EventFilter
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None


def parse_event_query(params: Mapping[str, Any]) -> EventQuery:
    """`GET /events` / `gateway audit query` input → EventQuery, or QueryError."""
    values = check_params(params, (*FILTERS, *PAGING))
    limit = parse_limit(values["limit"]) if "limit" in values else DEFAULT_LIMIT
    cursor = Cursor.decode(values["cursor"]) if "cursor" in values else None
    return EventQuery(parse_filter(values), limit, cursor)


# --- reading ---------------------------------------------------------------------------


def event_json(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data["time"] = format_time(data["time"])
    issuer, subject = data["issuer"], data["subject"]
    data["contractor"] = f"{issuer}:{subject}" if issuer and subject else None
    return data


@dataclass
class Page:
    events: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "next_cursor": self.next_cursor}


def after_cursor(cursor: Cursor, dialect: str) -> ColumnElement[bool]:
    """(time, id) > cursor, written so that the time index bounds the scan."""
    stamp = time_param(cursor.time, dialect)
    return and_(
        AccessEvent.time >= stamp,
        or_(AccessEvent.time > stamp, AccessEvent.id > cursor.id),
    )


def query_events(
    db: Engine | Connection,
    where: EventFilter,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: Cursor | None = None,
) -> Page:
    """One page of events matching `where`, after `cursor`, in (time, id) order, from the
    database and the archives overlapping the window alike."""
    # Archives wholly before the cursor hold nothing for this page.
    since = where.since
    if cursor is not None and (since is None or utc(cursor.time) > utc(since)):
        since = cursor.time
    with log_connections(db, since, where.until) as connections:
        answers = []
        for connection in connections:
            dialect = connection.dialect.name
            conditions = where.conditions(dialect)
            if cursor is not None:
                conditions.append(after_cursor(cursor, dialect))
            statement = (
                select(*EVENT_COLUMNS)
                .where(*conditions)
                .order_by(AccessEvent.time, AccessEvent.id)
                .limit(limit + 1)
            )
            answers.append(list(connection.execute(statement)))
    rows = answers[0] if len(answers) == 1 else list(merge(*answers, key=_time_order))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = Cursor(utc(rows[-1].time), rows[-1].id).encode() if more else None
    return Page([event_json(row) for row in rows], next_cursor)


def _time_order(row: Any) -> tuple[datetime, int]:
    return utc(row.time), row.id


def iter_events(
    db: Engine, where: EventFilter, *, page_size: int = MAX_LIMIT, cursor: Cursor | None = None
) -> Iterator[dict[str, Any]]:
    """Every matching event, page by page (bounded memory)."""
    while True:
        page = query_events(db, where, limit=page_size, cursor=cursor)
        yield from page.events
        if page.next_cursor is None:
            return
        cursor = Cursor.decode(page.next_cursor)


# --- record provenance -----------------------------------------------------------------

PROVENANCE_FIELDS = (
    "id",
    "time",
    "request_id",
    "contractor",
    "issuer",
    "subject",
    "vendor",
    "client_ip",
    "project",
    "task",
    "action",
    "decision",
    "reason",
    "policy_version",
    "record_sha256",
)


def parse_record_query(record_id: str, params: Mapping[str, Any]) -> EventQuery:
    values = check_params(params, PAGING)
    record = check_text("record_id", record_id)
    limit = parse_limit(values["limit"]) if "limit" in values else MAX_LIMIT
    cursor = Cursor.decode(values["cursor"]) if "cursor" in values else None
    return EventQuery(EventFilter(record=record), limit, cursor)


def record_summary(db: Engine | Connection, record_id: str) -> dict[str, Any]:
    """Counts, distinct contractors and content hashes, first and last access of one
    record, over the database and every archive (the record's accesses may span years)."""
    event = AccessEvent
    allow = event.decision == "allow"
    counts = select(
        func.count(),
        func.count().filter(allow),
        func.count().filter(event.decision == "deny"),
        func.count().filter(event.decision == "filtered"),
        func.min(event.time),
        func.max(event.time),
    ).where(event.record_id == record_id)
    contractors = (
        select(event.issuer, event.subject)
        .where(event.record_id == record_id, event.issuer.is_not(None), event.subject.is_not(None))
        .distinct()
    )
    hashes = (
        select(event.record_sha256)
        .where(event.record_id == record_id, event.record_sha256.is_not(None))
        .distinct()
    )
    totals = [0, 0, 0, 0]
    first: datetime | None = None
    last: datetime | None = None
    people: set[tuple[str, str]] = set()
    digests: set[str] = set()
    with log_connections(db) as connections:
        for connection in connections:
            *numbers, low, high = connection.execute(counts).one()
            totals = [a + int(b or 0) for a, b in zip(totals, numbers, strict=True)]
            if low is not None:
                first = utc(low) if first is None else min(first, utc(low))
                last = utc(high) if last is None else max(last, utc(high))
            people.update((issuer, subject) for issuer, subject in connection.execute(contractors))
            digests.update(connection.execute(hashes).scalars())
    total, allowed, denied, filtered = totals
    return {
        "accesses": total,
        "allowed": allowed,
        "denied": denied,
        "filtered": filtered,
        "contractors": len(people),
        "distinct_sha256": len(digests),
        "first_access": format_time(first),
        "last_access": format_time(last),
    }


def record_provenance(db: Engine, query: EventQuery) -> dict[str, Any]:
    """Every access to one record (a page of them), oldest first, and a summary."""
    record_id = query.filter.record or ""
    page = query_events(db, query.filter, limit=query.limit, cursor=query.cursor)
    return {
        "record_id": record_id,
        "summary": record_summary(db, record_id) if query.cursor is None else None,
        "accesses": [{k: event[k] for k in PROVENANCE_FIELDS} for event in page.events],
        "next_cursor": page.next_cursor,
    }


# --- the auditor's reads are themselves logged ------------------------------------------


def log_read(
    db: Engine, *, actor: str, action: str, query: Mapping[str, Any], result: Mapping[str, Any]
) -> None:
    """Record an auditor read in admin_events: target = the filters, after = what it found."""
    target = orjson.dumps(dict(query), option=orjson.OPT_SORT_KEYS).decode()
    with db.begin() as connection:
        record_admin_event(
            connection,
            actor=actor,
            action=action,
            target=target,
            reason="",
            after={"query": dict(query), "result": dict(result)},
        )
