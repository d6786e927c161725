"""The access log's daily partitions on PostgreSQL (migration 0011): made ahead of time,
listed, and never on the request path.

`ensure` calls the database's own `gateway_access_log_partition(day)` for today and the
next `days_ahead` days (UTC); it needs the table's owner (the runtime role may not create
tables), so the gateway's maintenance thread tries it and, refused, says once that
`gateway audit partitions ensure` must run as the owner (daily, from cron or a timer).
Until then nothing fails: `access_log_default` takes the rows of a day with no partition
and `ensure` moves them into the day's partition when it makes it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

DEFAULT_DAYS_AHEAD = 7
MAINTENANCE_INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True)
class Partition:
    name: str
    bounds: str  # PostgreSQL's own words: FOR VALUES FROM (...) TO (...), or DEFAULT
    rows: int  # an estimate (pg_class.reltuples), -1 before the first ANALYZE


def is_partitioned(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_partitioned_table p"
                    " WHERE p.partrelid = to_regclass('access_log'))"
                )
            ).scalar()
        )


def ensure(
    engine: Engine, days_ahead: int = DEFAULT_DAYS_AHEAD, today: date | None = None
) -> list[str]:
    """Make the partitions of today and the next `days_ahead` days that are missing;
    returns the names made (empty on SQLite or an unpartitioned log)."""
    if not is_partitioned(engine):
        return []
    first = today or datetime.now(UTC).date()
    made = []
    for offset in range(days_ahead + 1):
        day = first + timedelta(days=offset)
        with engine.begin() as connection:
            name = connection.execute(
                text("SELECT gateway_access_log_partition(:day)"), {"day": day}
            ).scalar()
        if name:
            made.append(str(name))
    return made


def partitions(engine: Engine) -> list[Partition]:
    if not is_partitioned(engine):
        return []
    query = text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint"
        " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('access_log') ORDER BY c.relname"
    )
    with engine.connect() as connection:
        return [Partition(name, bounds, rows) for name, bounds, rows in connection.execute(query)]


class PartitionKeeper:
    """Calls `ensure` at start and hourly from a daemon thread; a role that may not make
    partitions is told once, then left alone (the owner's cron job does it)."""

    def __init__(self, engine: Engine, days_ahead: int = DEFAULT_DAYS_AHEAD) -> None:
        self._engine = engine
        self._days_ahead = days_ahead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = False

    def start(self) -> None:
        if self._thread is None and self._engine.dialect.name == "postgresql":
            self._thread = threading.Thread(target=self._run, name="partitions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self.refused and not self._stop.is_set():
            self.run_once()
            self._stop.wait(MAINTENANCE_INTERVAL_SECONDS)

    def run_once(self) -> list[str]:
        try:
            made = ensure(self._engine, self._days_ahead)
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) == "42501":  # insufficient_privilege
                self.refused = True
                log.info(
                    "this role may not make access-log partitions: run `gateway audit"
                    " partitions ensure` daily as the database owner"
                )
            else:
                log.warning("access-log partitions not ensured: %s", type(error.orig).__name__)
            return []
        if made:
            log.info("access-log partitions made: %s", ", ".join(made))
        return made
