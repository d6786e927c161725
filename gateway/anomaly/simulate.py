"""A seeded synthetic access log: contractors at work, hard benign cases, labelled attacks.

What the benign population does (every number drawn per seed):

- vendors in their own time zones; each contractor with a personal rate (log-normal,
  sigma 0.35, around 20 records an hour: annotation is slow work), start hour, day
  length, weekend habit, absences and vacations; hourly and daily variation (log-normal,
  clipped), never above twice the contractor's usual pace (people, not scripts);
- work: fetch a record of their queue by id, annotate most of them (reviewers few),
  browse task pages now and then, list tasks; queues are shuffled, sorted or contiguous
  blocks (a contiguous block read in order at human pace is the benign twin of
  enumeration); canary records sit outside every queue;
- addresses: a shared vendor office NAT or a home address, a phone now and then;
- hard cases: project ramp-up (a whole team's volume rises 3.5x over a week), deadline
  surges (1.3-1.6x the pace and 1-3 h longer days, project-wide), travel (time zone shifted 3-10 h
  from a hotel address, transit days off), reassignment to another project (with stale
  requests to the old one refused), new contractors joining mid-period (ramping up),
  review days (reads without annotations), occasional refusals, and a broken client
  retrying one refused path every minute or two for hours (the benign twin of probing).

Attacks (labelled: family, contractor, window), each on a different contractor, starting
after the warm-up:

- bulk_scrape: 5-50x the contractor's current hourly pace for 1-3 hours, paging through tasks;
- slow_exfiltration: 1.3-2x the daily reads for 14 days, spread over the usual hours,
  read within the contractor's own tasks and not annotated;
- enumeration: records fetched by id in id order (stride 1-2), 120-400 an hour;
- credential_sharing: a second party on the same account from another address, at the
  same time as the owner, a few hours a day for 1-3 days;
- probing: 15-80 refused requests over many paths within minutes (some unauthenticated);
- post_lock: the contractor is locked and their client keeps trying (1-20 requests);
- canary_touch: one to three fetches of canary records.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.anomaly.data import PolicyGrant, Request

START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
# An hour's pace is at most this multiple of the contractor's usual pace.
CAPACITY = 2.0
FAMILIES = (
    "bulk_scrape",
    "slow_exfiltration",
    "enumeration",
    "credential_sharing",
    "probing",
    "post_lock",
    "canary_touch",
)
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
            "start": _iso(self.start),
            "end": _iso(self.end),
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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Poisson:
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


class Simulator:
    def __init__(
        self,
        seed: int,
        *,
        contractors: int = 200,
        vendors: int = 5,
        days: int = 30,
        warmup_days: int = 10,
        attacks_per_family: int | None = None,
        start: datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if start is not None and (start - START).total_seconds() % (7 * 86400):
            # Whole weeks only: weekdays and hours of day, and so every score, stay the same.
            raise ValueError("a simulation starts on START plus a whole number of weeks")
        self._progress = progress
        if contractors < 20:
            raise ValueError("simulate at least 20 contractors")
        if not 1 <= vendors <= len(VENDORS):
            raise ValueError(f"vendors must be 1..{len(VENDORS)}")
        if days < warmup_days + 14:
            raise ValueError(f"simulate at least {warmup_days + 14} days")
        self.seed = seed
        self.rng = random.Random(seed)
        self.poisson = _Poisson(self.rng)
        self.n_contractors = contractors
        self.n_vendors = vendors
        self.days = days
        self.warmup = warmup_days
        self.start = (start or START).timestamp()
        self.per_family = attacks_per_family or max(1, round(contractors * 0.05))
        self.requests: list[Request] = []
        self.labels: list[Label] = []
        self.benign: list[BenignCase] = []
        self._counter = 0
        self._lock_ids = 9000

    # --- ids -------------------------------------------------------------------------

    def _rid(self) -> str:
        self._counter += 1
        return f"{self.seed % 65536:04x}{self._counter:08x}"

    # --- world -----------------------------------------------------------------------

    def _world(self) -> None:
        rng = self.rng
        n_projects = max(4, 2 * self.n_vendors)
        self.projects: dict[int, list[Task]] = {}
        for p in range(1, n_projects + 1):
            tasks = []
            for t in range(1, rng.randint(3, 6) + 1):
                size = rng.randint(4000, 20000)
                canaries = sorted(rng.sample(range(int(size * 0.85), size), 2))
                tasks.append(Task(p, t, size, canaries))
            self.projects[p] = tasks
        self.canaries = [
            task.record_id(n)
            for tasks in self.projects.values()
            for task in tasks
            for n in task.canaries
        ]
        self.vendor_projects: dict[str, list[int]] = {}
        self.offices: dict[str, list[str]] = {}
        for v, (name, _) in enumerate(VENDORS[: self.n_vendors]):
            self.vendor_projects[name] = rng.sample(sorted(self.projects), rng.randint(2, 3))
            self.offices[name] = [f"203.0.{v * 16 + k}.{rng.randint(2, 250)}" for k in range(2)]
        # Project load over time: ramp-ups and deadline surges (project-wide).
        self.load: dict[int, list[float]] = {p: [1.0] * self.days for p in self.projects}
        self.longer: dict[int, list[float]] = {p: [0.0] * self.days for p in self.projects}
        ramped = rng.sample(sorted(self.projects), max(1, n_projects // 5))
        for p in ramped:
            day = rng.randint(self.warmup - 2, self.days - 9)
            for d in range(self.days):
                self.load[p][d] = 0.4 if d < day else min(1.4, 0.4 + 1.0 * (d - day + 1) / 7)
            self.benign.append(
                # The team's level stays up: history catches up only after weeks.
                BenignCase(
                    "project_ramp_up", None, f"proj-{p}", self._day(day), self._day(self.days)
                )
            )
        for p in self.projects:
            if rng.random() < 0.6:
                day = rng.randint(self.warmup, self.days - 4)
                length = rng.randint(2, 4)
                factor = rng.uniform(1.3, 1.6)
                extra = rng.uniform(1, 3)
                for d in range(day, min(self.days, day + length)):
                    self.load[p][d] *= factor
                    self.longer[p][d] = extra
                self.benign.append(
                    BenignCase(
                        "deadline_surge", None, f"proj-{p}", self._day(day), self._day(day + length)
                    )
                )

    def _day(self, day: float) -> float:
        return self.start + day * 86400

    def _contractors(self) -> None:
        rng = self.rng
        self.people: list[Contractor] = []
        vendor_names = [name for name, _ in VENDORS[: self.n_vendors]]
        for i in range(self.n_contractors):
            vendor = vendor_names[i % self.n_vendors]
            tz = dict(VENDORS)[vendor] + rng.choice((-1, 0, 0, 0, 1))
            project = rng.choice(self.vendor_projects[vendor])
            tasks = rng.sample(
                self.projects[project], min(len(self.projects[project]), rng.randint(1, 2))
            )
            remote = rng.random() < 0.4
            ip = (
                f"198.51.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
                if remote
                else rng.choice(self.offices[vendor])
            )
            join = 0 if rng.random() < 0.88 else rng.randint(3, self.days - 7)
            reviewer = rng.random() < 0.1
            person = Contractor(
                index=i,
                vendor=vendor,
                issuer=f"{vendor}-idp",
                subject=f"{vendor[0]}{i:04d}",
                tz=tz,
                start_hour=min(12.0, max(6.0, rng.gauss(9, 1))),
                day_length=rng.uniform(6.5, 9),
                rate=20 * math.exp(rng.gauss(0, 0.35)),
                annotate_share=rng.uniform(0.15, 0.3) if reviewer else rng.uniform(0.75, 0.95),
                browse_share=rng.uniform(0.02, 0.08),
                weekend_habit=0.0 if rng.random() < 0.8 else rng.uniform(0.2, 0.6),
                join_day=join,
                ip=ip,
                user_agent=rng.choice(USER_AGENTS),
                phone_ip=f"100.{rng.randint(64, 127)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
                if rng.random() < 0.1
                else None,
                queue_kind=rng.choices(("shuffled", "sorted", "block"), (0.6, 0.2, 0.2))[0],
                project=project,
                tasks=tasks,
            )
            for d in range(self.days):
                if rng.random() < 0.05:
                    person.absences.add(d)
            if rng.random() < 0.2:
                first = rng.randint(0, self.days - 5)
                person.absences.update(range(first, first + rng.randint(3, 5)))
            if rng.random() < 0.03:
                person.review_days.update(
                    rng.sample(range(self.warmup, self.days), rng.randint(1, 2))
                )
            self.people.append(person)
        hard = [p for p in self.people if p.join_day == 0]
        rng.shuffle(hard)
        n_travel = max(1, round(0.08 * len(self.people)))
        for person in hard[:n_travel]:
            first = rng.randint(self.warmup - 2, self.days - 6)
            length = rng.randint(3, 9)
            shift = rng.choice((-1, 1)) * rng.uniform(3, 10)
            hotel = f"192.0.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
            person.absences.update({first, first + length + 1})
            for d in range(first + 1, min(self.days, first + length + 1)):
                person.travel[d] = (shift, hotel)
            self.benign.append(
                BenignCase(
                    "travel", person.key, None, self._day(first), self._day(first + length + 2)
                )
            )
        n_reassign = max(1, round(0.1 * len(self.people)))
        for person in hard[n_travel : n_travel + n_reassign]:
            others = [p for p in self.vendor_projects[person.vendor] if p != person.project]
            if not others:
                continue
            day = rng.randint(self.warmup - 3, self.days - 4)
            new = rng.choice(others)
            tasks = rng.sample(self.projects[new], min(len(self.projects[new]), rng.randint(1, 2)))
            person.reassigned = (day, new, tasks)
            self.benign.append(
                BenignCase(
                    "reassignment", person.key, f"proj-{new}", self._day(day), self._day(day + 2)
                )
            )
        self.retry_loops: dict[str, int] = {}
        for person in hard[n_travel + n_reassign : n_travel + n_reassign + max(1, len(hard) // 50)]:
            self.retry_loops[person.key] = rng.randint(self.warmup, self.days - 1)

    # --- work ------------------------------------------------------------------------

    def _project_on(self, person: Contractor, day: int) -> tuple[int, list[Task]]:
        if person.reassigned and day >= person.reassigned[0]:
            return person.reassigned[1], person.reassigned[2]
        return person.project, person.tasks

    def _next_record(self, person: Contractor, task: Task) -> int:
        key = (task.project, task.number)
        queue = person.queue.get(key)
        if queue is None:
            rng = self.rng
            if person.queue_kind == "block":
                first = rng.randint(0, task.assignable - 800)
                queue = list(range(first, first + 800))
            else:
                queue = rng.sample(range(task.assignable), 800)
                if person.queue_kind == "sorted":
                    queue.sort()
            person.queue[key] = queue
            person.cursor[key] = 0
        position = person.cursor[key]
        person.cursor[key] = position + 1
        return queue[position % len(queue)]

    def _shape(self, person: Contractor, day: int) -> tuple[float, float, float, str] | None:
        """(utc start hour of day, length, load factor, address) or None: not working."""
        rng = self.rng
        if day < person.join_day or day in person.absences:
            return None
        weekday = (START.weekday() + day) % 7
        length = person.day_length + rng.gauss(0, 0.5)
        if weekday >= 5:
            if rng.random() >= person.weekend_habit:
                return None
            length = rng.uniform(2, 5)
        project, _ = self._project_on(person, day)
        length += self.longer[project][day]
        shift, ip = person.travel.get(day, (0.0, person.ip))
        start = person.start_hour + rng.gauss(0, 0.5) - person.tz - shift
        load = self.load[project][day] * min(1.6, max(0.5, math.exp(rng.gauss(0, 0.2))))
        if day - person.join_day < 5 and person.join_day > 0:
            load *= 0.4 + 0.12 * (day - person.join_day)
        return start, max(1.0, length), load, ip

    def _work(self, person: Contractor) -> None:
        rng, poisson, out = self.rng, self.poisson, self.requests
        rid = self._rid
        for day in range(self.days):
            shape = self._shape(person, day)
            if shape is None:
                continue
            start, length, load, ip = shape
            project, tasks = self._project_on(person, day)
            base = self.start + day * 86400
            begin, end = base + start * 3600, base + (start + length) * 3600
            lunch = begin + length * 3600 * rng.uniform(0.4, 0.6)
            review = day in person.review_days
            t = begin
            hour_factor = 1.0
            while t < end:
                slot_end = min(end, t + 3600)
                hour_factor = min(1.8, max(0.3, math.exp(rng.gauss(0, 0.25))))
                span = slot_end - t
                # Human-paced work: nobody annotates more than twice their usual pace.
                rate = min(person.rate * load * hour_factor, CAPACITY * person.rate) * span / 3600
                if t <= lunch < slot_end:
                    rate *= 0.5
                reads = poisson(rate)
                for _ in range(reads):
                    ts = t + rng.random() * span
                    task = rng.choice(tasks)
                    if rng.random() < person.browse_share:
                        first = rng.randint(0, task.assignable - 20)
                        out.append(self._page(person, ts, task, first, 10, ip))
                        continue
                    n = self._next_record(person, task)
                    record = task.record_id(n)
                    out.append(self._read(person, ts, task, record, ip))
                    if rng.random() < person.annotate_share:
                        out.append(
                            Request(
                                ts + rng.uniform(40, 300),
                                rid(),
                                person.issuer,
                                person.subject,
                                person.vendor,
                                ip,
                                person.user_agent,
                                "POST",
                                f"/api/projects/{task.project_name}/tasks/{task.name}/records/"
                                f"{record}/annotations",
                                task.project_name,
                                task.name,
                                "annotate",
                                "allow",
                                "released",
                                201,
                                (record,),
                            )
                        )
                if review:
                    for _ in range(poisson(rate * rng.uniform(0.5, 1.0) / 10)):
                        task = rng.choice(tasks)
                        first = rng.randint(0, task.assignable - 10)
                        out.append(self._page(person, t + rng.random() * span, task, first, 10, ip))
                if rng.random() < 0.3:
                    out.append(self._other(person, t + rng.random() * span, project, ip))
                if person.phone_ip and rng.random() < 0.03:
                    for _ in range(rng.randint(1, 4)):
                        task = rng.choice(tasks)
                        n = self._next_record(person, task)
                        out.append(
                            self._read(
                                person,
                                t + rng.random() * span,
                                task,
                                task.record_id(n),
                                person.phone_ip,
                            )
                        )
                t = slot_end
            if rng.random() < 0.04:
                for _ in range(rng.randint(1, 3)):
                    out.append(self._refused(person, begin + rng.random() * (end - begin), ip))
            if person.reassigned and day == person.reassigned[0]:
                old = self.projects[person.project][0]
                for _ in range(rng.randint(1, 4)):
                    out.append(
                        self._denied(
                            person,
                            begin + rng.random() * 3600,
                            f"/api/projects/{old.project_name}/tasks/{old.name}/records",
                            old.project_name,
                            old.name,
                            ip,
                        )
                    )
        day = self.retry_loops.get(person.key)
        if day is not None:
            first = self.start + day * 86400 + rng.uniform(0, 20) * 3600
            other = rng.choice([p for p in self.projects if p != person.project])
            path = f"/api/projects/proj-{other}/tasks"
            t = first
            stop = first + rng.uniform(1, 3) * 3600
            while t < stop:
                out.append(self._denied(person, t, path, f"proj-{other}", None, person.ip))
                t += rng.uniform(60, 120)
            self.benign.append(BenignCase("retry_loop", person.key, None, first, stop))

    # --- request makers --------------------------------------------------------------

    def _read(self, person: Contractor, ts: float, task: Task, record: str, ip: str) -> Request:
        return Request(
            ts,
            self._rid(),
            person.issuer,
            person.subject,
            person.vendor,
            ip,
            person.user_agent,
            "GET",
            f"/api/records/{record}",
            task.project_name,
            task.name,
            "read",
            "allow",
            "released",
            200,
            (record,),
        )

    def _page(
        self,
        person: Contractor,
        ts: float,
        task: Task,
        first: int,
        size: int,
        ip: str,
        user_agent: str | None = None,
    ) -> Request:
        stop = min(task.size, first + size)
        return Request(
            ts,
            self._rid(),
            person.issuer,
            person.subject,
            person.vendor,
            ip,
            user_agent or person.user_agent,
            "GET",
            f"/api/projects/{task.project_name}/tasks/{task.name}/records",
            task.project_name,
            task.name,
            "read",
            "allow",
            "released",
            200,
            tuple(task.record_id(n) for n in range(first, stop)),
        )

    def _other(self, person: Contractor, ts: float, project: int, ip: str) -> Request:
        return Request(
            ts,
            self._rid(),
            person.issuer,
            person.subject,
            person.vendor,
            ip,
            person.user_agent,
            "GET",
            f"/api/projects/proj-{project}/tasks",
            f"proj-{project}",
            None,
            "read",
            "allow",
            "released",
            200,
            (None,),
        )

    def _denied(
        self,
        person: Contractor,
        ts: float,
        path: str,
        project: str | None,
        task: str | None,
        ip: str,
        reason: str = "policy_denied",
    ) -> Request:
        return Request(
            ts,
            self._rid(),
            person.issuer,
            person.subject,
            person.vendor,
            ip,
            person.user_agent,
            "GET",
            path,
            project,
            task,
            "read" if project else None,
            "deny",
            reason,
            None,
            (None,),
        )

    def _refused(self, person: Contractor, ts: float, ip: str) -> Request:
        rng = self.rng
        if rng.random() < 0.5:
            other = rng.choice([p for p in self.projects if p != person.project])
            task = rng.choice(self.projects[other])
            path = f"/api/projects/proj-{other}/tasks/{task.name}/records"
            return self._denied(person, ts, path, f"proj-{other}", task.name, ip)
        path = rng.choice(
            ("/api/projects/proj-{p}/task", "/api/me", "/api/projects/proj-{p}/stats")
        )
        return self._denied(
            person, ts, path.format(p=person.project), None, None, ip, reason="unknown_route"
        )

    # --- attacks ---------------------------------------------------------------------

    def _usual_hour(self, person: Contractor, day: int) -> float:
        """A time inside the contractor's usual working hours that day (UTC epoch)."""
        start = (
            person.start_hour - person.tz + self.rng.uniform(0.5, max(1.0, person.day_length - 2))
        )
        return self.start + day * 86400 + start * 3600

    def _attack_day(self, person: Contractor, duration_days: int = 1) -> int:
        rng = self.rng
        for _ in range(50):
            day = rng.randint(self.warmup, self.days - duration_days)
            if (START.weekday() + day) % 7 < 5 and day not in person.absences:
                return day
        return rng.randint(self.warmup, self.days - duration_days)

    def _attacks(self) -> None:
        rng = self.rng
        established = [
            p for p in self.people if p.join_day == 0 and not p.travel and not p.reassigned
        ]
        rng.shuffle(established)
        newcomers = [p for p in self.people if p.join_day > 0]
        needed = self.per_family * len(FAMILIES)
        if len(established) < needed:
            raise ValueError("too few contractors for the attacks; simulate more contractors")
        victims = iter(established[:needed])
        for family in FAMILIES:
            for k in range(self.per_family):
                person = next(victims)
                if family == "bulk_scrape" and k == 0 and newcomers:
                    candidate = rng.choice(newcomers)
                    if candidate.join_day <= self.days - 3:
                        person = candidate
                getattr(self, f"_attack_{family}")(person)

    def _label(
        self, family: str, person_key: str, start: float, end: float, **details: Any
    ) -> None:
        self.labels.append(Label(family, person_key, start, end, details))

    def _attack_bulk_scrape(self, person: Contractor) -> None:
        rng = self.rng
        first_day = max(self.warmup, person.join_day + 1)
        day = rng.randint(first_day, self.days - 1)
        start = (
            self._usual_hour(person, day)
            if rng.random() < 0.7
            else self.start + day * 86400 + rng.uniform(0, 23) * 3600
        )
        multiplier = math.exp(rng.uniform(math.log(5), math.log(50)))
        hours = rng.randint(1, 3)
        # 5-50x the contractor's current pace (their rate on their project's load that day).
        per_hour = person.rate * self.load[person.project][day] * multiplier
        task_pool = list(self.projects[person.project])
        rng.shuffle(task_pool)
        position = {t.number: 0 for t in task_pool}
        page = 100
        for h in range(hours):
            pages = max(1, round(per_hour / page))
            for _ in range(pages):
                task = task_pool[rng.randrange(min(len(task_pool), 2))]
                first = position[task.number]
                position[task.number] = min(task.assignable - page, first + page)
                ts = start + h * 3600 + rng.random() * 3600
                self.requests.append(self._page(person, ts, task, first, page, person.ip))
        self._label(
            "bulk_scrape", person.key, start, start + hours * 3600, multiplier=round(multiplier, 1)
        )

    def _attack_slow_exfiltration(self, person: Contractor) -> None:
        rng = self.rng
        latest = self.days - 14
        first = rng.randint(max(7, min(self.warmup + 5, latest)), latest)
        multiplier = rng.uniform(1.3, 2.0)
        count = 0
        for req in self.requests[person.span[0] : person.span[1]]:
            day = int((req.ts - self.start) // 86400)
            if first <= day < first + 14 and req.action == "read" and req.decision == "allow":
                extra = len(req.record_ids) * (multiplier - 1)
                whole = int(extra) + (1 if rng.random() < extra - int(extra) else 0)
                for _ in range(whole):
                    task = rng.choice(person.tasks)
                    n = rng.randrange(task.assignable)
                    self.requests.append(
                        self._read(
                            person,
                            req.ts + rng.uniform(1, 120),
                            task,
                            task.record_id(n),
                            req.client_ip or person.ip,
                        )
                    )
                    count += 1
        self._label(
            "slow_exfiltration",
            person.key,
            self._day(first),
            self._day(first + 14),
            multiplier=round(multiplier, 2),
            extra_records=count,
        )

    def _attack_enumeration(self, person: Contractor) -> None:
        rng = self.rng
        day = self._attack_day(person)
        start = (
            self._usual_hour(person, day)
            if rng.random() < 0.5
            else self.start + day * 86400 + rng.uniform(0, 23) * 3600
        )
        rate = rng.uniform(120, 400)
        hours = rng.uniform(1, 3)
        stride = 1 if rng.random() < 0.7 else 2
        task = rng.choice(person.tasks)
        n = rng.randrange(0, task.assignable // 2)
        count = int(rate * hours)
        for i in range(count):
            ts = start + (i + rng.random()) * 3600 / rate
            if n >= task.size:
                break
            self.requests.append(self._read(person, ts, task, task.record_id(n), person.ip))
            n += stride
        self._label(
            "enumeration", person.key, start, start + hours * 3600, rate=round(rate), stride=stride
        )

    def _attack_credential_sharing(self, person: Contractor) -> None:
        rng = self.rng
        first = self._attack_day(person, 3)
        days = rng.randint(1, 3)
        other_ip = f"45.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
        other_agent = rng.choice([a for a in USER_AGENTS if a != person.user_agent])
        start_ts = end_ts = None
        for day in range(first, first + days):
            start = self._usual_hour(person, day)
            hours = rng.uniform(2, 5)
            rate = person.rate * rng.uniform(0.5, 1.5)
            count = self.poisson(rate * hours)
            for _ in range(count):
                task = rng.choice(person.tasks)
                n = rng.randrange(task.assignable)
                ts = start + rng.random() * hours * 3600
                request = self._read(person, ts, task, task.record_id(n), other_ip)
                self.requests.append(request._replace(user_agent=other_agent))
            start_ts = start if start_ts is None else start_ts
            end_ts = start + hours * 3600
        assert start_ts is not None and end_ts is not None
        self._label("credential_sharing", person.key, start_ts, end_ts, address=other_ip, days=days)

    def _attack_probing(self, person: Contractor) -> None:
        rng = self.rng
        day = self._attack_day(person)
        start = self._usual_hour(person, day)
        count = rng.randint(15, 80)
        minutes = rng.uniform(10, 45)
        anonymous = rng.random() < 0.2
        ip = f"185.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
        projects = [p for p in self.projects if p != person.project]
        for i in range(count):
            ts = start + (i + rng.random()) * minutes * 60 / count
            p = rng.choice(projects)
            task = rng.choice(self.projects[p])
            choice = rng.random()
            if anonymous:
                path = rng.choice(PROBE_PATHS).format(p=f"proj-{p}", t=task.name)
                reason = "bad_path" if rng.random() < 0.2 else "invalid_token"
                if reason == "bad_path":
                    path = f"/api/projects/..%2f{rng.choice(('admin', 'etc', 'internal'))}/{i}"
                self.requests.append(
                    Request(
                        ts,
                        self._rid(),
                        None,
                        None,
                        None,
                        ip,
                        "python-requests/2.32",
                        "GET",
                        path,
                        None,
                        None,
                        None,
                        "deny",
                        reason,
                        None,
                        (None,),
                    )
                )
            elif choice < 0.5:
                path = f"/api/projects/proj-{p}/tasks/{task.name}/records"
                self.requests.append(
                    self._denied(person, ts, path, f"proj-{p}", task.name, person.ip)
                )
            else:
                path = rng.choice(PROBE_PATHS).format(p=f"proj-{p}", t=task.name)
                self.requests.append(
                    self._denied(person, ts, path, None, None, person.ip, reason="unknown_route")
                )
        key = f"ip:{ip}" if anonymous else person.key
        self._label(
            "probing", key, start, start + minutes * 60, requests=count, anonymous=anonymous
        )

    def _attack_post_lock(self, person: Contractor) -> None:
        rng = self.rng
        day = self._attack_day(person)
        lock_at = self._usual_hour(person, day)
        self._lock_ids += 1
        lock_id = self._lock_ids
        person.stop_at = lock_at
        attempts = rng.randint(1, 20)
        span = rng.uniform(300, 6 * 3600)
        for i in range(attempts):
            ts = lock_at + 30 + (i / attempts) * span + rng.random() * 60
            task = rng.choice(person.tasks)
            record = task.record_id(self._next_record(person, task))
            request = self._read(person, ts, task, record, person.ip)
            self.requests.append(
                request._replace(decision="deny", reason=f"locked:{lock_id}", upstream_status=None)
            )
        self._label(
            "post_lock", person.key, lock_at, lock_at + span + 60, lock=lock_id, attempts=attempts
        )

    def _attack_canary_touch(self, person: Contractor) -> None:
        rng = self.rng
        day = self._attack_day(person)
        ts = self._usual_hour(person, day)
        tasks = person.tasks
        touches = rng.randint(1, 3)
        for i in range(touches):
            task = rng.choice(tasks)
            n = rng.choice(task.canaries)
            if rng.random() < 0.5:
                self.requests.append(
                    self._read(person, ts + i * 90, task, task.record_id(n), person.ip)
                )
            else:
                first = max(0, n - rng.randint(0, 9))
                self.requests.append(self._page(person, ts + i * 90, task, first, 10, person.ip))
        self._label("canary_touch", person.key, ts, ts + touches * 90 + 60, touches=touches)

    # --- all of it ---------------------------------------------------------------------

    def run(self) -> Simulation:
        self._world()
        self._contractors()
        for done, person in enumerate(self.people, 1):
            first = len(self.requests)
            self._work(person)
            person.span = (first, len(self.requests))
            if self._progress is not None:
                self._progress(done, len(self.people))
        self._attacks()
        locked = {p.key: p.stop_at for p in self.people if p.stop_at is not None}
        if locked:
            self.requests = [
                r
                for r in self.requests
                if not (
                    r.subject is not None
                    and f"{r.issuer}:{r.subject}" in locked
                    and r.ts >= locked[f"{r.issuer}:{r.subject}"]
                    and not (r.reason or "").startswith("locked:")
                )
            ]
        end = self.start + self.days * 86400
        self.requests = [r for r in self.requests if self.start <= r.ts < end]
        contractor_days = 0
        for person in self.people:
            last = self.days
            if person.stop_at is not None:
                last = int((person.stop_at - self.start) // 86400) + 1
            contractor_days += max(0, last - max(self.warmup, person.join_day))
        return Simulation(
            seed=self.seed,
            contractors=self.n_contractors,
            vendors=self.n_vendors,
            days=self.days,
            warmup_days=self.warmup,
            start=self.start,
            requests=self.requests,
            labels=self.labels,
            canaries=self.canaries,
            benign=self.benign,
            contractor_days=contractor_days,
        )


def simulate(
    seed: int,
    *,
    contractors: int = 200,
    vendors: int = 5,
    days: int = 30,
    warmup_days: int = 10,
    start: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Simulation:
    return Simulator(
        seed,
        contractors=contractors,
        vendors=vendors,
        days=days,
        warmup_days=warmup_days,
        start=start,
        progress=progress,
    ).run()


def start_ending_by(end: datetime, days: int) -> datetime:
    """The latest start, whole weeks after START, whose `days` end no later than `end`."""
    weeks = math.floor((end - START - timedelta(days=days)).total_seconds() / (7 * 86400))
    return START + timedelta(weeks=weeks)


def iter_rows(simulation: Simulation) -> Iterator[dict[str, Any]]:
    """The access-log rows of a simulation (ids from 1, in time order)."""
    from gateway.anomaly.data import MemorySource

    yield from MemorySource(simulation.requests).rows()


# --- writing a simulation out ------------------------------------------------------------


def labels_document(simulation: Simulation) -> dict[str, Any]:
    return {
        "seed": simulation.seed,
        "contractors": simulation.contractors,
        "vendors": simulation.vendors,
        "days": simulation.days,
        "warmup_days": simulation.warmup_days,
        "start": _iso(simulation.start),
        "end": _iso(simulation.end),
        "scored_from": _iso(simulation.scored_from),
        "contractor_days": simulation.contractor_days,
        "labels": [label.as_dict() for label in simulation.labels],
        "benign_cases": [
            {
                "kind": case.kind,
                "contractor": case.contractor,
                "project": case.project,
                "start": _iso(case.start),
                "end": _iso(case.end),
            }
            for case in simulation.benign
        ],
        "canaries": simulation.canaries,
    }


def _row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    record = row["record_id"]
    released = row["decision"] == "allow" and record is not None
    return (
        datetime.fromtimestamp(row["ts"], UTC),
        row["request_id"],
        row["issuer"],
        row["subject"],
        row["vendor"],
        row["client_ip"],
        row["user_agent"],
        row["method"],
        row["path"],
        row["project"],
        row["task"],
        record,
        hashlib.sha256(record.encode()).hexdigest() if released else None,
        row["action"],
        row["decision"],
        row["reason"],
        1,
        row["upstream_status"],
        512 if released else None,
    )


def write_database(
    simulation: Simulation,
    url: str,
    *,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append the simulation's rows to `access_log` (one hash chain of its own, so `gateway
    audit verify` still holds) and mark its canaries; returns the rows written. The
    schema is brought to the newest revision first."""
    from gateway.db.migrate import upgrade
    from gateway.db.session import make_engine

    upgrade(url)
    engine = make_engine(url)
    try:
        return write_requests(
            engine,
            simulation.requests,
            canaries=simulation.canaries,
            chain=f"simulated-{simulation.seed}",
            canaries_since=datetime.fromtimestamp(simulation.start, UTC),
            batch=batch,
            progress=progress,
        )
    finally:
        engine.dispose()


def write_requests(
    engine: Any,
    requests: list[Request],
    *,
    canaries: Sequence[str] = (),
    chain: str = "simulated",
    canaries_since: datetime | None = None,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append requests' rows to `access_log` as one valid hash chain; mark canaries."""
    from gateway.anomaly.data import MemorySource
    from gateway.anomaly.store import add_canaries
    from gateway.audit.chain import GENESIS, canonical_time
    from gateway.audit.writer import insert_rows

    chain_id = f"{chain}-{uuid.uuid4().hex[:8]}"
    prev, written = GENESIS, 0
    pending: list[tuple[Any, ...]] = []
    for seq, row in enumerate(MemorySource(requests).rows(), start=1):
        values = _row_values(row)
        head = hashlib.sha256(
            orjson.dumps([canonical_time(values[0]), *values[1:], chain_id, seq, prev])
        ).hexdigest()
        pending.append((*values, chain_id, seq, prev, head))
        prev = head
        if len(pending) >= batch:
            with engine.begin() as connection:
                insert_rows(connection, pending)
            written += len(pending)
            if progress is not None:
                progress(len(pending))
            pending = []
    if pending:
        with engine.begin() as connection:
            insert_rows(connection, pending)
        written += len(pending)
        if progress is not None:
            progress(len(pending))
    if canaries:
        add_canaries(
            engine,
            list(canaries),
            reason=f"simulated canary records ({chain})",
            actor="anomaly-simulate",
            created_at=canaries_since or datetime.now(UTC),
        )
    return written


def write_file(simulation: Simulation, path: str) -> int:
    """The rows as JSON lines (gzip-compressed when the name ends in .gz)."""
    from gateway.anomaly.data import MemorySource

    opener: Any = gzip.open if path.endswith(".gz") else open
    written = 0
    with opener(path, "wb") as handle:
        for row in MemorySource(simulation.requests).rows():
            out = {**row, "time": _iso_micro(row.pop("ts"))}
            handle.write(orjson.dumps(out) + b"\n")
            written += 1
    return written


def _iso_micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
