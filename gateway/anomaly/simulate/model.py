"""The simulator's vocabulary: constants, tasks, contractors, labels, benign cases, results."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.anomaly.data import PolicyGrant, Request

START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
# An hour's pace is at most this multiple of the contractor's usual pace.
CAPACITY = 2.0
# Loud attacks, each meant for one detector (gateway/anomaly/simulate/attacks.py).
CLASSIC_FAMILIES = (
    "bulk_scrape",
    "slow_exfiltration",
    "enumeration",
    "credential_sharing",
    "probing",
    "post_lock",
    "canary_touch",
)
# Each below every single detector's threshold (gateway/anomaly/simulate/subtle.py).
SUBTLE_FAMILIES = (
    "denial_trickle",
    "project_drift",
    "odd_days",
    "request_inflation",
    "vendor_creep",
)
FAMILIES = CLASSIC_FAMILIES + SUBTLE_FAMILIES
VENDORS = (
    ("acme", -5.0),
    ("globex", 1.0),
    ("initech", 5.5),
    ("umbrella", 8.0),
    ("hooli", -3.0),
    ("soylent", 2.0),
    ("tyrell", 9.0),
    ("wonka", 0.0),
)
USER_AGENTS = (
    "LabelDesk/4.2 (Windows NT 10.0)",
    "LabelDesk/4.2 (Macintosh)",
    "LabelDesk/4.1 (X11; Linux)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) Safari/605.1",
)
PROBE_PATHS = (
    "/api/admin/users",
    "/api/v2/projects",
    "/api/projects",
    "/api/users/me",
    "/api/export",
    "/.git/config",
    "/api/records",
    "/api/projects/{p}/export",
    "/api/projects/{p}/members",
    "/api/projects/{p}/tasks/{t}/records/export",
    "/graphql",
    "/api/debug/vars",
    "/api/projects/{p}/settings",
    "/actuator/env",
    "/api/tokens",
)


@dataclass
class Task:
    project: int
    number: int
    size: int
    canaries: list[int]

    @property
    def name(self) -> str:
        return f"task-{self.number}"

    @property
    def project_name(self) -> str:
        return f"proj-{self.project}"

    def record_id(self, n: int) -> str:
        return f"rec-{self.project}-{self.number}-{n:05d}"

    @property
    def assignable(self) -> int:
        return int(self.size * 0.8)


@dataclass
class Contractor:
    index: int
    vendor: str
    issuer: str
    subject: str
    tz: float
    start_hour: float
    day_length: float
    rate: float
    annotate_share: float
    browse_share: float
    weekend_habit: float
    join_day: int
    ip: str
    user_agent: str
    phone_ip: str | None
    queue_kind: str
    project: int
    tasks: list[Task]
    absences: set[int] = field(default_factory=set)
    # day -> (extra tz shift, address) while travelling; transit days in `absences`
    travel: dict[int, tuple[float, str]] = field(default_factory=dict)
    # from this day on, (project, tasks)
    reassigned: tuple[int, int, list[Task]] | None = None
    review_days: set[int] = field(default_factory=set)
    queue: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    cursor: dict[tuple[int, int], int] = field(default_factory=dict)
    stop_at: float | None = None  # locked out
    span: tuple[int, int] = (0, 0)  # this contractor's benign requests in Simulator.requests
    # day -> (first, stop): that working day's requests in Simulator.requests
    worked: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.issuer}:{self.subject}"


@dataclass
class Label:
    family: str
    contractor: str
    start: float
    end: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "contractor": self.contractor,
            "start": iso(self.start),
            "end": iso(self.end),
            **self.details,
        }


@dataclass
class BenignCase:
    kind: str
    contractor: str | None
    project: str | None
    start: float
    end: float


@dataclass
class Simulation:
    seed: int
    contractors: int
    vendors: int
    days: int
    warmup_days: int
    start: float
    requests: list[Request]
    labels: list[Label]
    canaries: list[str]
    benign: list[BenignCase]
    contractor_days: int  # enrolled contractor-days after the warm-up
    # The policy changes that made projects reachable (grants in force at the start too).
    grants: list[PolicyGrant] = field(default_factory=list)
    # The attack families this generator plants (the report lists each, even when absent).
    families: tuple[str, ...] = FAMILIES

    @property
    def end(self) -> float:
        return self.start + self.days * 86400

    @property
    def scored_from(self) -> float:
        return self.start + self.warmup_days * 86400


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Poisson:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 40:
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1
