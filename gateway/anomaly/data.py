"""What the detectors read: per contractor-hour aggregates, and a few raw rows on demand.

Detectors never walk the raw access log. They read *hourly rows*: one per (hour,
contractor, client IP, project, task, kind) with counts, first/last time and first/last
row id, which the database computes with one GROUP BY (`gateway.anomaly.rollup`) and the
simulator computes in memory (`MemorySource`). Raw rows are fetched only for the few
contractor-hours a detector wants to look into (sequences of record ids, denied paths)
and for evidence.

Every access-log row falls into exactly one *kind* (`classify`, and the same CASE in SQL):

    read      a record released (decision allow, a record id, reason released)
    annotate  an annotation submitted (decision allow, action annotate)
    other     any other allowed request (no records, upstream 404, task lists)
    filtered  a record removed by record-level policy
    denied    refused by policy, or an unauthenticated request
    unmatched refused before policy: no route, bad path, bad query
    locked    refused by a lock (reason locked:<id>)
    error     a gateway-side failure (upstream down, internal error): never the caller's doing
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

KINDS = ("read", "annotate", "other", "filtered", "denied", "unmatched", "locked", "error")
PROBE_KINDS = frozenset({"filtered", "denied", "unmatched"})
UNMATCHED_REASONS = ("unknown_route", "method_not_allowed", "bad_path", "bad_query")
ERROR_REASONS = (
    "internal_error",
    "lock_state_unknown",
    "unfilterable",
    "body_too_large",
    "bad_upstream_response",
    "temporarily_unavailable",
    # The upstream or the client failed, not the contractor's request.
    "client_gone",
    "client_timeout",
)
# A download the upstream broke off (stream_broken:upstream_timeout, ...).
STREAM_BROKEN_PREFIX = "stream_broken:"
LOCK_PREFIX = "locked:"
STREAM_CUT_LOCKED = "stream_cut:locked"


def classify(decision: str, reason: str | None, action: str | None, record_id: str | None) -> str:
    reason = reason or ""
    if reason.startswith(LOCK_PREFIX) or reason == STREAM_CUT_LOCKED:
        return "locked"
    if decision == "allow":
        if action == "annotate":
            return "annotate"
        if record_id is not None and reason == "released":
            return "read"
        return "other"
    if decision == "filtered":
        return "filtered"
    if reason in UNMATCHED_REASONS:
        return "unmatched"
    if (
        reason in ERROR_REASONS
        or reason.startswith("upstream_")
        or reason.startswith(STREAM_BROKEN_PREFIX)
    ):
        return "error"
    return "denied"


def contractor_key(issuer: str | None, subject: str | None, client_ip: str | None) -> str:
    """`<issuer>:<sub>` as in policies; unauthenticated traffic is keyed by its address."""
    if subject is not None:
        return f"{issuer}:{subject}"
    return f"ip:{client_ip or 'unknown'}"


class HourlyRow(NamedTuple):
    hour: int  # hours since the epoch (UTC)
    issuer: str | None
    subject: str | None
    vendor: str | None
    client_ip: str | None
    project: str | None
    task: str | None
    kind: str
    lock_reason: str  # the reason of `locked` rows (locked:<id>), else ""
    rows: int
    requests: int
    first_ts: float
    last_ts: float
    first_id: int
    last_id: int


class DetailRow(NamedTuple):
    id: int
    ts: float
    request_id: str
    record_id: str | None
    path: str
    reason: str | None
    client_ip: str | None


@dataclass(frozen=True)
class Who:
    """A contractor (issuer + subject) or, for unauthenticated traffic, an address."""

    key: str
    issuer: str | None
    subject: str | None
    vendor: str | None
    client_ip: str | None = None

    @property
    def lockable(self) -> bool:
        return self.subject is not None and self.issuer is not None


class CanaryHit(NamedTuple):
    id: int
    ts: float
    request_id: str
    issuer: str | None
    subject: str | None
    vendor: str | None
    client_ip: str | None
    record_id: str
    decision: str
    project: str | None


class MismatchHit(NamedTuple):
    """A record asked for under a path the record catalogue does not place it in."""

    id: int
    ts: float
    request_id: str
    issuer: str | None
    subject: str | None
    vendor: str | None
    client_ip: str | None
    record_id: str | None
    decision: str
    project: str | None  # where the record really is
    path: str


CATALOGUE_MISMATCH = "catalogue_mismatch"


class PolicyGrant(NamedTuple):
    """A project made reachable by a policy change: who (a contractor key `<issuer>:<sub>`,
    `vendor:<name>` or `role:<name>`), which project, and when the change was committed.
    Grants in force before the log begins carry the time of their version, or any earlier
    time (the simulators use the start of the log minus a day)."""

    ts: float
    subject: str
    project: str


class LogSource(Protocol):
    """Where the detectors' data comes from: the database or the simulator."""

    def vendors(self, start_hour: int, end_hour: int) -> list[tuple[str | None, int]]:
        """Vendors (None: unauthenticated traffic) with activity, and how many contractors."""
        ...

    def hourly(self, vendor: str | None, start_hour: int, end_hour: int) -> Iterable[HourlyRow]:
        """One vendor's hourly rows in [start_hour, end_hour)."""
        ...

    def daily_reads(
        self, start_hour: int, end_hour: int
    ) -> Iterable[tuple[int, str, str | None, int]]:
        """(day, contractor, project, records read) for every vendor: the project peers."""
        ...

    def detail(
        self, who: Who, start_ts: float, end_ts: float, kinds: Sequence[str], limit: int
    ) -> list[DetailRow]:
        """Raw rows of one contractor in [start_ts, end_ts) of the given kinds, oldest first."""
        ...

    def canary_hits(self, start_ts: float, end_ts: float) -> list[CanaryHit]:
        """Every row in the window that touched a canary record."""
        ...

    def catalogue_mismatches(self, start_ts: float, end_ts: float) -> list[MismatchHit]:
        """Every row in the window withheld or refused as `catalogue_mismatch`."""
        ...

    def policy_grants(self, start_ts: float, end_ts: float) -> list[PolicyGrant]:
        """Projects made reachable by policy changes committed in the window, oldest first."""
        ...


# --- per-contractor series -------------------------------------------------------------


@dataclass
class Hour:
    reads: int = 0
    read_requests: int = 0
    annotations: int = 0
    other_requests: int = 0
    probe_requests: int = 0
    probe_rows: int = 0
    locked: int = 0
    projects: dict[str | None, int] = field(default_factory=dict)
    tasks: set[tuple[str | None, str | None]] = field(default_factory=set)
    # (project, task) -> requests refused there: a retrying client stays on one target.
    refused: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    # The largest records per read request of one (address, project, task) group: with a
    # client's fixed page size, the size of its pages.
    page: float = 0.0
    # client IP -> [first ts, last ts, requests]
    ips: dict[str | None, list[float]] = field(default_factory=dict)
    first_id: int = 0
    last_id: int = 0

    @property
    def project(self) -> str | None:
        """The project most records of this hour came from."""
        return main_project(self.projects)

    @property
    def active(self) -> bool:
        return bool(self.reads or self.annotations or self.other_requests)


@dataclass
class Series:
    who: Who
    hours: dict[int, Hour] = field(default_factory=dict)
    # lock reason -> [rows, first ts, last ts, first id, last id]
    locks: dict[str, list[float]] = field(default_factory=dict)
    _days: dict[int, Day] | None = None

    def days(self) -> dict[int, Day]:
        if self._days is None:
            days: dict[int, Day] = {}
            for hour in sorted(self.hours):
                stats = self.hours[hour]
                day = days.setdefault(hour // 24, Day())
                day.reads += stats.reads
                day.read_requests += stats.read_requests
                day.annotations += stats.annotations
                if stats.active:
                    day.active_hours.append(hour)
                    day.hours_of_day[hour % 24] = day.hours_of_day.get(hour % 24, 0) + stats.reads
                for project, count in stats.projects.items():
                    day.projects[project] = day.projects.get(project, 0) + count
                day.tasks |= stats.tasks
                if stats.annotations and stats.project is not None:
                    day.annotated_projects.add(stats.project)
                for address, (_, _, requests) in stats.ips.items():
                    day.addresses[address] = day.addresses.get(address, 0.0) + requests
                for target, requests in stats.refused.items():
                    day.refused[target] = day.refused.get(target, 0) + requests
                    day.refused_hours[target] = day.refused_hours.get(target, 0) + 1
                if stats.page > 1:
                    day.pages.append(stats.page)
            self._days = days
        return self._days


@dataclass
class Day:
    reads: int = 0
    read_requests: int = 0
    annotations: int = 0
    active_hours: list[int] = field(default_factory=list)
    projects: dict[str | None, int] = field(default_factory=dict)
    tasks: set[tuple[str | None, str | None]] = field(default_factory=set)
    # What the weak signals read (detectors/signals.py).
    annotated_projects: set[str | None] = field(default_factory=set)
    addresses: dict[str | None, float] = field(default_factory=dict)  # requests
    hours_of_day: dict[int, int] = field(default_factory=dict)  # hour of day -> reads
    refused: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    refused_hours: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    pages: list[float] = field(default_factory=list)  # the page size of each hour listing

    @property
    def project(self) -> str | None:
        return main_project(self.projects)

    @property
    def active(self) -> bool:
        return bool(self.active_hours)

    @property
    def page(self) -> float:
        return statistics.median(self.pages) if self.pages else 0.0


def main_project(projects: dict[str | None, int]) -> str | None:
    """The project most records came from (ties: the first name)."""
    if not projects:
        return None
    return max(projects.items(), key=lambda item: (item[1], item[0] or ""))[0]


def project_days(
    rows: Iterable[tuple[int, str, str | None, int]],
) -> dict[tuple[int, str | None], list[tuple[str, int]]]:
    """(day, project) → [(contractor, reads that day)], each contractor-day under the
    project most of its reads came from."""
    per_day: dict[tuple[int, str], dict[str | None, int]] = {}
    for day, key, project, reads in rows:
        projects = per_day.setdefault((day, key), {})
        projects[project] = projects.get(project, 0) + reads
    out: dict[tuple[int, str | None], list[tuple[str, int]]] = {}
    for (day, key), projects in per_day.items():
        main = main_project(projects)
        out.setdefault((day, main), []).append((key, sum(projects.values())))
    return out


def build_series(rows: Iterable[HourlyRow]) -> dict[str, Series]:
    """Fold hourly rows into one Series per contractor."""
    series: dict[str, Series] = {}
    for row in rows:
        key = contractor_key(row.issuer, row.subject, row.client_ip)
        current = series.get(key)
        if current is None:
            who = Who(
                key,
                row.issuer,
                row.subject,
                row.vendor,
                row.client_ip if row.subject is None else None,
            )
            current = series[key] = Series(who)
        if row.kind == "error":
            continue
        if row.kind == "locked":
            entry = current.locks.get(row.lock_reason)
            if entry is None:
                current.locks[row.lock_reason] = [
                    row.rows,
                    row.first_ts,
                    row.last_ts,
                    row.first_id,
                    row.last_id,
                ]
            else:
                entry[0] += row.rows
                entry[1] = min(entry[1], row.first_ts)
                entry[2] = max(entry[2], row.last_ts)
                entry[3] = min(entry[3], row.first_id)
                entry[4] = max(entry[4], row.last_id)
        stats = current.hours.get(row.hour)
        if stats is None:
            stats = current.hours[row.hour] = Hour()
        kind = row.kind
        if kind == "read":
            stats.reads += row.rows
            stats.read_requests += row.requests
            stats.projects[row.project] = stats.projects.get(row.project, 0) + row.rows
            stats.tasks.add((row.project, row.task))
            if row.requests:
                stats.page = max(stats.page, row.rows / row.requests)
            stats.first_id = (
                row.first_id if not stats.first_id else min(stats.first_id, row.first_id)
            )
            stats.last_id = max(stats.last_id, row.last_id)
        elif kind == "annotate":
            stats.annotations += row.rows
        elif kind == "other":
            stats.other_requests += row.requests
        elif kind in PROBE_KINDS:
            stats.probe_requests += row.requests
            stats.probe_rows += row.rows
            target = (row.project, row.task)
            stats.refused[target] = stats.refused.get(target, 0) + row.requests
        elif kind == "locked":
            stats.locked += row.rows
        ip = stats.ips.get(row.client_ip)
        if ip is None:
            stats.ips[row.client_ip] = [row.first_ts, row.last_ts, float(row.requests)]
        else:
            ip[0] = min(ip[0], row.first_ts)
            ip[1] = max(ip[1], row.last_ts)
            ip[2] += row.requests
    return series


# --- the simulator's log, in memory ----------------------------------------------------


class Request(NamedTuple):
    """One request as the simulator makes it: the rows it leaves are one per record id."""

    ts: float
    request_id: str
    issuer: str | None
    subject: str | None
    vendor: str | None
    client_ip: str | None
    user_agent: str | None
    method: str
    path: str
    project: str | None
    task: str | None
    action: str | None
    decision: str
    reason: str | None
    upstream_status: int | None
    record_ids: tuple[str | None, ...]  # one entry per row; (None,) for a row without record


_SUFFIX_NUMBER = re.compile(r"^(.*?)(\d+)$")


def split_record_id(record_id: str) -> tuple[str, int] | None:
    """`rec-3-2-00417` → ("rec-3-2-", 417); None when the id does not end in digits."""
    match = _SUFFIX_NUMBER.match(record_id)
    if not match:
        return None
    return match.group(1), int(match.group(2))
