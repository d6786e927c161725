"""Exposure report: what one vendor's (contractor's, project's) people received, and when.

A record counts as *received* by an access row with decision `allow` and a record id.
For a scope (`vendor`, `contractor` and/or `project`) and a window (`since` <= time <
`until`; `until` defaults to the moment the report is made) the report gives

- per project and task: distinct records received, times received, contractors who
  received them, first and last access (of a received record), denied and filtered
  attempts;
- per contractor involved (received records, or tried to): times received, the number of
  project/tasks received from, first and last access, denied and filtered attempts (the
  distinct records of one contractor are the totals of a `contractor` report);
- totals over the scope: distinct records, times received, contractors who received
  records and who tried, first and last access, denied and filtered attempts.

The full list of records received is the *manifest* (`gateway.audit.manifest`), one line
per (record id, project, task), streamed from the database by `manifest_rows`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from heapq import merge
from typing import Any

from sqlalchemy import Engine, and_, column, func, literal, null, select, table, text, union_all
from sqlalchemy.sql.elements import ColumnElement

from gateway.archive.reader import archive_connection, log_connections, register_rows
from gateway.audit.query import (
    EventFilter,
    QueryError,
    check_params,
    format_time,
    parse_filter,
)
from gateway.db.models import AccessEvent
from gateway.timestamps import utc

SCOPES = ("vendor", "contractor", "project")
EXPOSURE_PARAMS = (*SCOPES, "since", "until")
MANIFEST_PARAMS = (*EXPOSURE_PARAMS, "format")
MANIFEST_FORMATS = ("csv", "jsonl")
# An exposure report aggregates up to millions of rows: give its sorts room in memory.
_POSTGRES_WORK_MEM = "64MB"


@dataclass(frozen=True)
class ExposureQuery:
    filter: EventFilter
    format: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = self.filter.as_dict()
        if self.format is not None:
            data["format"] = self.format
        return data


def parse_exposure_query(
    params: Mapping[str, Any], *, manifest: bool = False, now: datetime | None = None
) -> ExposureQuery:
    """Scope and window (and, for a manifest, its format) → ExposureQuery, or QueryError.

    At least one of vendor, contractor or project is required. A missing `until` is
    fixed to now, so a report or manifest says exactly which window it covers.
    """
    values = check_params(params, MANIFEST_PARAMS if manifest else EXPOSURE_PARAMS)
    if not any(name in values for name in SCOPES):
        raise QueryError("vendor", "one of vendor, contractor or project is required")
    fmt = None
    if manifest:
        fmt = values.pop("format", "csv")
        if fmt not in MANIFEST_FORMATS:
            raise QueryError("format", f"{fmt[:32]!r} is not one of {', '.join(MANIFEST_FORMATS)}")
    where = parse_filter(values)
    if where.until is None:
        until = now or datetime.now(UTC)
        if where.since is not None and until <= where.since:
            raise QueryError("since", "is in the future")
        where = replace(where, until=until)
    return ExposureQuery(where, fmt)


def _received() -> ColumnElement[bool]:
    return and_(AccessEvent.decision == "allow", AccessEvent.record_id.is_not(None))


def _fine_aggregates() -> list[Any]:
    """Receipts, first and last receipt, denials and filtered attempts of a group."""
    event = AccessEvent
    received = _received()
    return [
        func.count().filter(received).label("n"),
        func.min(event.time).filter(received).label("first_at"),
        func.max(event.time).filter(received).label("last_at"),
        func.count().filter(event.decision == "deny").label("denied"),
        func.count().filter(event.decision == "filtered").label("filtered"),
    ]


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))  # SQLite returns text from a CTE


def _sort_key(*values: str | None) -> tuple[Any, ...]:
    # The same order on every backend: NULLs (no project, no task) last.
    return tuple(part for value in values for part in (value is None, value or ""))


def _tune(connection: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SET LOCAL work_mem = '{_POSTGRES_WORK_MEM}'"))
        # Compiling these plans costs more than it saves at the row counts involved.
        connection.execute(text("SET LOCAL jit = off"))


@dataclass
class _Figures:
    received: int = 0
    first: datetime | None = None
    last: datetime | None = None
    denied: int = 0
    filtered: int = 0

    def add(self, received: Any, first: Any, last: Any, denied: Any, filtered: Any) -> None:
        self.received += int(received or 0)
        self.denied += int(denied or 0)
        self.filtered += int(filtered or 0)
        first, last = _time(first), _time(last)
        if first is not None and (self.first is None or first < self.first):
            self.first = first
        if last is not None and (self.last is None or last > self.last):
            self.last = last

    def active(self) -> bool:
        return bool(self.received or self.denied or self.filtered)

    def as_dict(self) -> dict[str, Any]:
        return {
            "times_received": self.received,
            "first_access": format_time(self.first),
            "last_access": format_time(self.last),
            "denied": self.denied,
            "filtered": self.filtered,
        }


# The per-record partial aggregates of the database, handed to the archives' DuckDB
# connection when a window spans both (see `exposure_report`).
LIVE_PER_RECORD = table(
    "live_per_record",
    column("project"),
    column("task"),
    column("record_id"),
    column("n"),
    column("first_at"),
    column("last_at"),
    column("denied"),
    column("filtered"),
)


def per_record_statement(dialect: str, query: ExposureQuery) -> Any:
    """Receipts, first and last receipt, denials and filtered attempts per (project, task,
    record id) in scope."""
    event = AccessEvent
    return (
        select(event.project, event.task, event.record_id, *_fine_aggregates())
        .where(*query.filter.conditions(dialect))
        .group_by(event.project, event.task, event.record_id)
    )


def report_statements(
    dialect: str, query: ExposureQuery, *, with_live: bool = False
) -> tuple[Any, Any]:
    """The two aggregate queries of a report: per (project, task) plus one overall row,
    and per (project, task, contractor).

    The first groups by (project, task, record id) and rolls that up per project and task
    (distinct records received) and overall; the second gives the contractors involved
    and their figures. Both are hash aggregations without DISTINCT sorts; on PostgreSQL a
    vendor scope is read from the covering index `ix_access_log_vendor_time` alone
    (migration 0005). `with_live`: run on the archives, the per-record groups also take in
    the database's (`LIVE_PER_RECORD`), summed, so that a record received both before and
    after the archive boundary counts once.
    """
    event = AccessEvent
    conditions = query.filter.conditions(dialect)
    if with_live:
        both = union_all(per_record_statement(dialect, query), select(LIVE_PER_RECORD)).subquery()
        b = both.c
        per_record = (
            select(
                b.project,
                b.task,
                b.record_id,
                func.sum(b.n).label("n"),
                func.min(b.first_at).label("first_at"),
                func.max(b.last_at).label("last_at"),
                func.sum(b.denied).label("denied"),
                func.sum(b.filtered).label("filtered"),
            )
            .group_by(b.project, b.task, b.record_id)
            .cte("per_record")
        )
    else:
        per_record = per_record_statement(dialect, query).cte("per_record")
    r = per_record.c
    rollup = [func.sum(r.n), func.min(r.first_at), func.max(r.last_at)]
    rollup += [func.sum(r.denied), func.sum(r.filtered)]
    by_task = select(
        literal("task"), r.project, r.task, func.count().filter(r.n > 0), *rollup
    ).group_by(r.project, r.task)
    overall = select(
        literal("all"),
        null(),
        null(),
        func.count(func.distinct(r.record_id)).filter(r.n > 0),
        *rollup,
    )
    per_contractor = (
        select(
            event.project,
            event.task,
            event.issuer,
            event.subject,
            event.vendor,
            *_fine_aggregates(),
        )
        .where(*conditions)
        .group_by(event.project, event.task, event.issuer, event.subject, event.vendor)
    )
    return union_all(by_task, overall), per_contractor


def _report_rows(db: Engine, query: ExposureQuery) -> tuple[list[Any], list[Any]]:
    """The rows of `report_statements`, over the database and the archives in the window.

    With archives, the database's per-record partial aggregates go to DuckDB (as an Arrow
    table) and the rollup runs there; per-contractor figures are summed here (one row per
    contractor and task, few)."""
    dialect = db.dialect.name
    since, until = query.filter.since, query.filter.until
    with db.begin() as connection:  # one transaction; PostgreSQL: one snapshot per query
        _tune(connection)
        with archive_connection(connection, since, until) as archived:
            by_task, per_contractor = report_statements(dialect, query)
            if archived is None:
                return connection.execute(by_task).all(), connection.execute(per_contractor).all()
            live = connection.execute(per_record_statement(dialect, query)).all()
            register_rows(archived, LIVE_PER_RECORD, live)
            by_task, archived_per_contractor = report_statements(
                archived.dialect.name, query, with_live=True
            )
            task_rows = archived.execute(by_task).all()
            contractor_rows = _sum_groups(
                [
                    *connection.execute(per_contractor).all(),
                    *archived.execute(archived_per_contractor).all(),
                ],
                keys=5,
            )
    return task_rows, contractor_rows


def _sum_groups(rows: list[Any], keys: int) -> list[tuple[Any, ...]]:
    """Rows of (keys..., n, first, last, denied, filtered) with equal keys added up."""
    groups: dict[tuple[Any, ...], _Figures] = {}
    for row in rows:
        groups.setdefault(tuple(row[:keys]), _Figures()).add(*row[keys:])
    return [(*key, f.received, f.first, f.last, f.denied, f.filtered) for key, f in groups.items()]


def exposure_report(
    db: Engine, query: ExposureQuery, *, catalogue_upstream: str = "default"
) -> dict[str, Any]:
    """The report of `query` (see the module docstring for its parts)."""
    generated_at = datetime.now(UTC)
    task_rows, contractor_rows = _report_rows(db, query)

    groups: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    totals = _Figures()
    distinct_records = 0
    for kind, project, task, distinct, *figures in task_rows:
        if kind == "all":
            distinct_records = int(distinct or 0)
            totals.add(*figures)
            continue
        group = _Figures()
        group.add(*figures)
        if group.active():
            groups[(project, task)] = {
                "project": project,
                "task": task,
                "distinct_records": int(distinct or 0),
                "contractors": 0,
                **group.as_dict(),
            }
    people: dict[tuple[str | None, str | None, str | None], tuple[_Figures, set]] = {}
    receiving: set[tuple[str | None, str | None]] = set()
    attempting: set[tuple[str | None, str | None]] = set()
    for project, task, issuer, subject, vendor, *figures in contractor_rows:
        figures_of = _Figures()
        figures_of.add(*figures)
        if not figures_of.active():
            continue
        person, tasks = people.setdefault((issuer, subject, vendor), (_Figures(), set()))
        person.add(*figures)
        attempting.add((issuer, subject))
        if figures_of.received:
            tasks.add((project, task))
            receiving.add((issuer, subject))
            if (project, task) in groups:
                groups[(project, task)]["contractors"] += 1
    contractors = [
        {
            "contractor": f"{issuer}:{subject}" if issuer and subject else None,
            "issuer": issuer,
            "subject": subject,
            "vendor": vendor,
            "tasks": len(tasks),
            **person.as_dict(),
        }
        for (issuer, subject, vendor), (person, tasks) in people.items()
    ]
    contractors.sort(key=lambda item: _sort_key(item["contractor"], item["vendor"]))
    denominators = catalogue_denominators(db, catalogue_upstream, groups.values())
    return {
        "query": query.as_dict(),
        "generated_at": format_time(generated_at),
        "totals": {
            "distinct_records": distinct_records,
            "contractors": len(receiving),
            "contractors_attempting": len(attempting),
            **totals.as_dict(),
            **_share(distinct_records, denominators["total"]),
        },
        "projects": sorted(
            groups.values(), key=lambda item: _sort_key(item["project"], item["task"])
        ),
        "by_project": denominators["by_project"],
        "contractors": contractors,
    }


def _share(received: int, catalogue_records: int | None) -> dict[str, Any]:
    return {
        "catalogue_records": catalogue_records,
        "share": round(received / catalogue_records, 4) if catalogue_records else None,
    }


def catalogue_denominators(
    db: Engine, upstream: str, groups: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """Adds `catalogue_records` and `share` to each (project, task) group, in place.

    The denominator of a group is the catalogue's records of that project and task (of the
    project, for a group without a task): how much of the dataset the scope received. It is
    null where the catalogue holds nothing for the project. Returns per-project rollups
    (distinct records summed over the project's tasks) and the total denominator.
    """
    from gateway.catalogue.store import CatalogueStore

    groups = list(groups)
    projects = {group["project"] for group in groups if group["project"] is not None}
    sizes = CatalogueStore(db, upstream).project_sizes(projects, by_task=True) if projects else {}
    per_project: dict[str, int] = {}
    for (project, _task), count in sizes.items():
        per_project[project] = per_project.get(project, 0) + count
    rollup: dict[str | None, dict[str, Any]] = {}
    for group in groups:
        project, task = group["project"], group["task"]
        if project is None or project not in per_project:
            denominator = None
        elif task is None:
            denominator = per_project[project]
        else:
            denominator = sizes.get((project, task)) or None
        group.update(_share(group["distinct_records"], denominator))
        entry = rollup.setdefault(
            project,
            {"project": project, "distinct_records": 0, "first_access": None, "last_access": None},
        )
        entry["distinct_records"] += group["distinct_records"]
        for name, pick in (("first_access", min), ("last_access", max)):
            if group[name] is not None:
                entry[name] = group[name] if entry[name] is None else pick(entry[name], group[name])
    by_project = []
    for project, entry in rollup.items():
        entry.update(_share(entry["distinct_records"], per_project.get(project or "")))
        by_project.append(entry)
    by_project.sort(key=lambda item: _sort_key(item["project"]))
    involved = [per_project[p] for p in projects if p in per_project]
    return {"by_project": by_project, "total": sum(involved) if involved else None}


# --- the manifest's rows ----------------------------------------------------------------

MANIFEST_FIELDS = (
    "record_id",
    "project",
    "task",
    "first_access",
    "last_access",
    "times_received",
    "last_sha256",
)


def manifest_statement(dialect: str, query: ExposureQuery) -> Any:
    """(record id, project, task, first, last, times received, last SHA-256) per record
    received in scope, in code-point order of (record id, project, task), NULLs last (the
    same on PostgreSQL, whatever its collation, and on DuckDB: the orders get merged)."""
    event = AccessEvent
    keys = (event.record_id, event.project, event.task)
    newest_first = (event.time.desc(), event.id.desc())

    def window(function: Any) -> Any:
        return function.over(partition_by=keys, order_by=newest_first, rows=(None, None))

    inner = (
        select(
            *keys,
            window(func.min(event.time)).label("first_access"),
            window(func.max(event.time)).label("last_access"),
            window(func.count()).label("times_received"),
            window(func.first_value(event.record_sha256)).label("last_sha256"),
            func.row_number().over(partition_by=keys, order_by=newest_first).label("rn"),
        )
        .where(*query.filter.conditions(dialect), _received())
        .subquery()
    )
    order = [inner.c.record_id, inner.c.project, inner.c.task]
    if dialect == "postgresql":
        order = [key.collate("C") for key in order]
    return (
        select(
            inner.c.record_id,
            inner.c.project,
            inner.c.task,
            inner.c.first_access,
            inner.c.last_access,
            inner.c.times_received,
            inner.c.last_sha256,
        )
        .where(inner.c.rn == 1)
        .order_by(*order)
    )


def manifest_rows(db: Engine, query: ExposureQuery, *, batch: int = 2000) -> Iterator[tuple]:
    """The manifest's lines (`manifest_statement`), streamed with server-side cursors from
    the database and the archives in the window; a record received on both sides of the
    archive boundary is one line (first, last and count over both; the newer SHA-256)."""
    since, until = query.filter.since, query.filter.until
    with db.connect() as live:
        _tune(live)
        with log_connections(live, since, until) as connections:
            results = [
                connection.execution_options(stream_results=True, yield_per=batch).execute(
                    manifest_statement(connection.dialect.name, query)
                )
                for connection in connections
            ]
            rows = results[0] if len(results) == 1 else _combined(merge(*results, key=_key))
            for row in rows:
                yield (
                    row[0],
                    row[1],
                    row[2],
                    format_time(row[3]),
                    format_time(row[4]),
                    row[5],
                    row[6],
                )


def _key(row: Any) -> tuple[Any, ...]:
    return (row[0], *_sort_key(row[1], row[2]))


def _combined(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    current: list[Any] | None = None
    for row in rows:
        if current is not None and _key(current) == _key(row):
            first, last = utc(row[3]), utc(row[4])
            current[3] = min(current[3], first)
            if last > current[4]:  # a tie keeps the database's, listed first
                current[4], current[6] = last, row[6]
            current[5] += row[5]
            continue
        if current is not None:
            yield tuple(current)
        current = [row[0], row[1], row[2], utc(row[3]), utc(row[4]), row[5], row[6]]
    if current is not None:
        yield tuple(current)
