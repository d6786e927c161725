"""The database side of the detectors' data: an hourly rollup of the access log, kept
fresh by every scan, and the few raw-row lookups detectors make.

`refresh_rollup` aggregates access-log rows into `anomaly_hourly` with one
`INSERT ... SELECT ... GROUP BY` per missing stretch of hours: the first scan over a
window pays for it once, later scans (`watch`) only re-aggregate the last few hours
(`rollup_late_hours`, for audit rows committed late). `SqlSource` reads the rollup and,
for the few contractor-hours a detector looks into, the access log itself (by the
(subject, time) index).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Engine,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.types import BigInteger, Float

from gateway.anomaly.data import (
    CATALOGUE_MISMATCH,
    ERROR_REASONS,
    LOCK_PREFIX,
    STREAM_CUT_LOCKED,
    UNMATCHED_REASONS,
    CanaryHit,
    DetailRow,
    HourlyRow,
    MismatchHit,
    PolicyGrant,
    Who,
)
from gateway.db.models import (
    AccessEvent,
    AnomalyHourly,
    AnomalyState,
    CanaryRecord,
    PolicyVersion,
)
from gateway.db.times import time_param
from gateway.policy.rules import PolicyFileError, parse_csv

ROLLUP_STATE = "rollup"
ROLLUP_WORK_MEM = "256MB"
# A scan and `watch` must not refresh the same hours at once (PostgreSQL advisory lock).
_LOCK_KEY = 0x616E6F6D  # "anom"


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def hour_expr(dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", AccessEvent.time) / 3600), BigInteger)
    return cast(func.strftime("%s", AccessEvent.time), BigInteger) / 3600


def epoch_expr(column: Any, dialect: str) -> Any:
    """Epoch seconds of a stored time (SQLite: to the millisecond, exactly)."""
    if dialect == "postgresql":
        return func.extract("epoch", column)
    seconds = cast(func.strftime("%s", column), BigInteger)
    whole = cast(func.strftime("%S", column), BigInteger)
    return seconds - whole + cast(func.strftime("%f", column), Float)


def _locked() -> Any:
    return or_(AccessEvent.reason.like(LOCK_PREFIX + "%"), AccessEvent.reason == STREAM_CUT_LOCKED)


def kind_expr() -> Any:
    """`gateway.anomaly.data.classify` in SQL."""
    return case(
        (_locked(), literal("locked")),
        (
            and_(AccessEvent.decision == "allow", AccessEvent.action == "annotate"),
            literal("annotate"),
        ),
        (
            and_(
                AccessEvent.decision == "allow",
                AccessEvent.record_id.is_not(None),
                AccessEvent.reason == "released",
            ),
            literal("read"),
        ),
        (AccessEvent.decision == "allow", literal("other")),
        (AccessEvent.decision == "filtered", literal("filtered")),
        (AccessEvent.reason.in_(UNMATCHED_REASONS), literal("unmatched")),
        (
            or_(
                AccessEvent.reason.in_(ERROR_REASONS),
                AccessEvent.reason.like("upstream\\_%", escape="\\"),
                AccessEvent.reason.like("stream\\_broken:%", escape="\\"),
            ),
            literal("error"),
        ),
        else_=literal("denied"),
    )


def _aggregate(engine: Engine, connection: Any, first_hour: int, end_hour: int) -> int:
    """Insert the rollup rows of hours [first_hour, end_hour); the number inserted."""
    if end_hour <= first_hour:
        return 0
    dialect = engine.dialect.name
    hour = hour_expr(dialect)
    kind = kind_expr()
    lock_reason = case((_locked(), AccessEvent.reason), else_=literal(""))
    if dialect == "postgresql":
        # Whole hours are an exact time range: no per-row hour test needed.
        window = [
            AccessEvent.time >= time_param(from_ts(first_hour * 3600), dialect),
            AccessEvent.time < time_param(from_ts(end_hour * 3600), dialect),
        ]
    else:
        # The time range uses the (time) index; the hour expression makes it exact
        # (SQLite compares the stored text, whose format may differ from the bound one).
        window = [
            AccessEvent.time
            >= time_param(from_ts(first_hour * 3600) - timedelta(minutes=1), dialect),
            AccessEvent.time < time_param(from_ts(end_hour * 3600) + timedelta(minutes=1), dialect),
            hour >= first_hour,
            hour < end_hour,
        ]
    query = (
        select(
            hour,
            AccessEvent.issuer,
            AccessEvent.subject,
            AccessEvent.vendor,
            AccessEvent.client_ip,
            AccessEvent.project,
            AccessEvent.task,
            kind,
            lock_reason,
            func.count(),
            func.count(func.distinct(AccessEvent.request_id)),
            epoch_expr(func.min(AccessEvent.time), dialect),
            epoch_expr(func.max(AccessEvent.time), dialect),
            func.min(AccessEvent.id),
            func.max(AccessEvent.id),
        )
        .where(*window)
        .group_by(
            hour,
            AccessEvent.issuer,
            AccessEvent.subject,
            AccessEvent.vendor,
            AccessEvent.client_ip,
            AccessEvent.project,
            AccessEvent.task,
            kind,
            lock_reason,
        )
    )
    columns = [
        "hour",
        "issuer",
        "subject",
        "vendor",
        "client_ip",
        "project",
        "task",
        "kind",
        "lock_reason",
        "rows",
        "requests",
        "first_ts",
        "last_ts",
        "first_id",
        "last_id",
    ]
    connection.execute(
        delete(AnomalyHourly).where(AnomalyHourly.hour >= first_hour, AnomalyHourly.hour < end_hour)
    )
    connection.execute(insert(AnomalyHourly).from_select(columns, query))
    return connection.execute(
        select(func.count())
        .select_from(AnomalyHourly)
        .where(AnomalyHourly.hour >= first_hour, AnomalyHourly.hour < end_hour)
    ).scalar_one()


def get_state(engine_or_connection: Any, key: str) -> Any:
    def read(connection: Any) -> Any:
        value = connection.execute(
            select(AnomalyState.value).where(AnomalyState.key == key)
        ).scalar_one_or_none()
        return orjson.loads(value) if value is not None else None

    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.connect() as connection:
            return read(connection)
    return read(engine_or_connection)


def set_state(connection: Any, key: str, value: Any) -> None:
    now = datetime.now(UTC)
    data = orjson.dumps(value).decode()
    updated = connection.execute(
        AnomalyState.__table__.update()
        .where(AnomalyState.key == key)
        .values(value=data, updated_at=now)
    ).rowcount
    if not updated:
        connection.execute(insert(AnomalyState).values(key=key, value=data, updated_at=now))


def refresh_rollup(
    engine: Engine,
    first_hour: int,
    end_hour: int,
    *,
    late_hours: int = 2,
    rebuild: bool = False,
) -> dict[str, Any]:
    """Make `anomaly_hourly` cover [first_hour, end_hour); returns what was aggregated."""
    done: list[tuple[int, int]] = []
    inserted = 0
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            # The GROUP BY over a month of log sorts millions of rows: in memory, not in
            # temporary files (this transaction only; a scan is one batch job at a time).
            connection.execute(text(f"SET LOCAL work_mem = '{ROLLUP_WORK_MEM}'"))
        else:
            # Take SQLite's write lock now, so two scans cannot interleave their refreshes.
            connection.execute(delete(AnomalyState).where(AnomalyState.key == "-"))
        state = get_state(connection, ROLLUP_STATE)
        if state is None or rebuild:
            stretches = [(first_hour, end_hour)]
            covered = (first_hour, end_hour)
            if state is not None and not rebuild:
                covered = (min(first_hour, state["from"]), max(end_hour, state["until"]))
        else:
            low, high = state["from"], state["until"]
            stretches = []
            if first_hour < low:
                stretches.append((first_hour, low))
            tail_from = max(min(low, first_hour), high - late_hours)
            if end_hour > tail_from:
                stretches.append((tail_from, max(end_hour, high)))
            covered = (min(low, first_hour), max(high, end_hour))
        for start, stop in stretches:
            inserted += _aggregate(engine, connection, start, stop)
            done.append((start, stop))
        set_state(connection, ROLLUP_STATE, {"from": covered[0], "until": covered[1]})
    return {"aggregated_hours": sum(b - a for a, b in done), "rollup_rows": inserted}


class SqlSource:
    """A LogSource over the database: the rollup, plus access-log rows on demand."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def vendors(self, start_hour: int, end_hour: int) -> list[tuple[str | None, int]]:
        who = func.coalesce(
            AnomalyHourly.issuer + ":" + AnomalyHourly.subject,
            "ip:" + func.coalesce(AnomalyHourly.client_ip, "unknown"),
        )
        query = (
            select(AnomalyHourly.vendor, func.count(func.distinct(who)))
            .where(AnomalyHourly.hour >= start_hour, AnomalyHourly.hour < end_hour)
            .group_by(AnomalyHourly.vendor)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return sorted(((v, n) for v, n in rows), key=lambda item: item[0] or "")

    def hourly(self, vendor: str | None, start_hour: int, end_hour: int) -> Iterator[HourlyRow]:
        h = AnomalyHourly
        query = select(
            h.hour,
            h.issuer,
            h.subject,
            h.vendor,
            h.client_ip,
            h.project,
            h.task,
            h.kind,
            h.lock_reason,
            h.rows,
            h.requests,
            h.first_ts,
            h.last_ts,
            h.first_id,
            h.last_id,
        ).where(
            h.hour >= start_hour,
            h.hour < end_hour,
            h.vendor == vendor if vendor is not None else h.vendor.is_(None),
        )
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=20_000).execute(
                query
            )
            for row in result:
                yield HourlyRow(
                    int(row[0]),
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    row[5],
                    row[6],
                    row[7],
                    row[8] or "",
                    int(row[9]),
                    int(row[10]),
                    float(row[11]),
                    float(row[12]),
                    int(row[13]),
                    int(row[14]),
                )

    def daily_reads(
        self, start_hour: int, end_hour: int
    ) -> Iterator[tuple[int, str, str | None, int]]:
        h = AnomalyHourly
        day = h.hour / 24
        if self.dialect == "postgresql":
            day = cast(func.floor(h.hour / 24), BigInteger)
        query = (
            select(day, h.issuer, h.subject, h.project, func.sum(h.rows))
            .where(
                h.hour >= start_hour,
                h.hour < end_hour,
                h.kind == "read",
                h.subject.is_not(None),
            )
            .group_by(day, h.issuer, h.subject, h.project)
        )
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                yield int(row[0]), f"{row[1]}:{row[2]}", row[3], int(row[4])

    def _who(self, who: Who) -> list[Any]:
        if who.subject is not None:
            return [AccessEvent.subject == who.subject, AccessEvent.issuer == who.issuer]
        return [AccessEvent.subject.is_(None), AccessEvent.client_ip == who.client_ip]

    def detail(
        self, who: Who, start_ts: float, end_ts: float, kinds: Sequence[str], limit: int
    ) -> list[DetailRow]:
        query = (
            select(
                AccessEvent.id,
                AccessEvent.time,
                AccessEvent.request_id,
                AccessEvent.record_id,
                AccessEvent.path,
                AccessEvent.reason,
                AccessEvent.client_ip,
            )
            .where(
                *self._who(who),
                AccessEvent.time >= time_param(from_ts(start_ts), self.dialect),
                AccessEvent.time < time_param(from_ts(end_ts), self.dialect),
                kind_expr().in_(list(kinds)),
            )
            .order_by(AccessEvent.time, AccessEvent.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [DetailRow(r[0], utc(r[1]).timestamp(), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def canary_hits(self, start_ts: float, end_ts: float) -> list[CanaryHit]:
        # Looked up by record id only, times filtered here: with a time range in the same
        # query the planner intersects the time index (millions of entries) once per
        # canary, which took minutes on a large log; canaries are few and rarely fetched.
        a, c = AccessEvent, CanaryRecord
        with self.engine.connect() as connection:
            marked = dict(connection.execute(select(c.record_id, c.created_at)).all())
            ids = sorted(marked)
            rows = []
            for offset in range(0, len(ids), 1000):
                query = select(
                    a.id,
                    a.time,
                    a.request_id,
                    a.issuer,
                    a.subject,
                    a.vendor,
                    a.client_ip,
                    a.record_id,
                    a.decision,
                    a.project,
                ).where(a.record_id.in_(ids[offset : offset + 1000]))
                rows.extend(connection.execute(query).all())
        hits = []
        for r in rows:
            ts = utc(r[1]).timestamp()
            if start_ts <= ts < end_ts and ts >= utc(marked[r[7]]).timestamp():
                hits.append(CanaryHit(r[0], ts, r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]))
        hits.sort(key=lambda hit: (hit[1], hit[0]))
        return hits

    def catalogue_mismatches(self, start_ts: float, end_ts: float) -> list[MismatchHit]:
        # Rare rows: a partial index on time for this reason (migration 0007) finds them.
        a = AccessEvent
        query = (
            select(
                a.id,
                a.time,
                a.request_id,
                a.issuer,
                a.subject,
                a.vendor,
                a.client_ip,
                a.record_id,
                a.decision,
                a.project,
                a.path,
            )
            .where(
                a.reason == CATALOGUE_MISMATCH,
                a.time >= time_param(from_ts(start_ts), self.dialect),
                a.time < time_param(from_ts(end_ts), self.dialect),
            )
            .order_by(a.time, a.id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [MismatchHit(r[0], utc(r[1]).timestamp(), *r[2:]) for r in rows]

    def policy_grants(self, start_ts: float, end_ts: float) -> list[PolicyGrant]:
        # Versions store their added rule lines; an allow rule or a role assignment makes
        # its project reachable from the version's commit (or the rule's own start).
        query = (
            select(PolicyVersion.created_at, PolicyVersion.diff)
            .where(
                PolicyVersion.created_at >= time_param(from_ts(start_ts), self.dialect),
                PolicyVersion.created_at < time_param(from_ts(end_ts), self.dialect),
            )
            .order_by(PolicyVersion.id)
        )
        with self.engine.connect() as connection:
            versions = connection.execute(query).all()
        grants: list[PolicyGrant] = []
        for created_at, diff in versions:
            committed = utc(created_at).timestamp()
            try:
                added = orjson.loads(diff or "{}").get("added") or []
                rules = parse_csv("\n".join(added), "policy version")
            except (orjson.JSONDecodeError, AttributeError, PolicyFileError):
                continue  # a version the engine could not load grants nothing
            for rule in rules:
                if rule.ptype == "p" and rule.values[4] != "allow":
                    continue
                grants.append(
                    PolicyGrant(max(committed, rule.not_before or 0.0), rule.subject, rule.project)
                )
        return sorted(grants)


def hours_for(since: datetime, until: datetime) -> tuple[int, int]:
    return math.floor(utc(since).timestamp() / 3600), math.ceil(utc(until).timestamp() / 3600)
