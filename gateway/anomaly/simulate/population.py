"""The benign population: the world (projects, tasks, vendors), contractors and their work,
and the requests they make."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.model import (
    CAPACITY,
    START,
    USER_AGENTS,
    VENDORS,
    BenignCase,
    Contractor,
    Label,
    Poisson,
    Task,
)


class Population:
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
        self.poisson = Poisson(self.rng)
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
        # Contractors an attack was planted on (keys), whatever the label names.
        self.attacked: set[str] = set()

    # --- ids -------------------------------------------------------------------------

    def rid(self) -> str:
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
                    "project_ramp_up",
                    None,
                    f"proj-{p}",
                    self.day_start(day),
                    self.day_start(self.days),
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
                        "deadline_surge",
                        None,
                        f"proj-{p}",
                        self.day_start(day),
                        self.day_start(day + length),
                    )
                )

    def day_start(self, day: float) -> float:
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
                    "travel",
                    person.key,
                    None,
                    self.day_start(first),
                    self.day_start(first + length + 2),
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
                    "reassignment",
                    person.key,
                    f"proj-{new}",
                    self.day_start(day),
                    self.day_start(day + 2),
                )
            )
        self.retry_loops: dict[str, int] = {}
        for person in hard[n_travel + n_reassign : n_travel + n_reassign + max(1, len(hard) // 50)]:
            self.retry_loops[person.key] = rng.randint(self.warmup, self.days - 1)

    # --- work ------------------------------------------------------------------------

    def project_on(self, person: Contractor, day: int) -> tuple[int, list[Task]]:
        if person.reassigned and day >= person.reassigned[0]:
            return person.reassigned[1], person.reassigned[2]
        return person.project, person.tasks

    def next_record(self, person: Contractor, task: Task, rng: random.Random | None = None) -> int:
        key = (task.project, task.number)
        queue = person.queue.get(key)
        if queue is None:
            rng = rng or self.rng
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

    def shape(
        self,
        person: Contractor,
        day: int,
        rng: random.Random | None = None,
        *,
        any_weekday: bool = False,
    ) -> tuple[float, float, float, str] | None:
        """(utc start hour of day, length, load factor, address) or None: not working.
        `any_weekday`: a weekend day is worked like a weekday."""
        rng = rng or self.rng
        if day < person.join_day or day in person.absences:
            return None
        weekday = (START.weekday() + day) % 7
        length = person.day_length + rng.gauss(0, 0.5)
        if weekday >= 5 and not any_weekday:
            if rng.random() >= person.weekend_habit:
                return None
            length = rng.uniform(2, 5)
        project, _ = self.project_on(person, day)
        length += self.longer[project][day]
        shift, ip = person.travel.get(day, (0.0, person.ip))
        start = person.start_hour + rng.gauss(0, 0.5) - person.tz - shift
        load = self.load[project][day] * min(1.6, max(0.5, math.exp(rng.gauss(0, 0.2))))
        if day - person.join_day < 5 and person.join_day > 0:
            load *= 0.4 + 0.12 * (day - person.join_day)
        return start, max(1.0, length), load, ip

    def _work(self, person: Contractor) -> None:
        rng, out = self.rng, self.requests
        for day in range(self.days):
            shape = self.shape(person, day)
            if shape is None:
                continue
            first = len(out)
            self.work_day(person, day, shape, rng, self.poisson, out)
            person.worked[day] = (first, len(out))
        day = self.retry_loops.get(person.key)
        if day is not None:
            first = self.start + day * 86400 + rng.uniform(0, 20) * 3600
            other = rng.choice([p for p in self.projects if p != person.project])
            path = f"/api/projects/proj-{other}/tasks"
            t = first
            stop = first + rng.uniform(1, 3) * 3600
            while t < stop:
                out.append(self.denied(person, t, path, f"proj-{other}", None, person.ip))
                t += rng.uniform(60, 120)
            self.benign.append(BenignCase("retry_loop", person.key, None, first, stop))

    def work_day(
        self,
        person: Contractor,
        day: int,
        shape: tuple[float, float, float, str],
        rng: random.Random,
        poisson: Poisson,
        out: list[Request],
    ) -> None:
        """One working day of `person` (its `shape`), drawn from `rng`, appended to `out`."""
        rid = self.rid
        start, length, load, ip = shape
        project, tasks = self.project_on(person, day)
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
                    out.append(self.page(person, ts, task, first, 10, ip))
                    continue
                n = self.next_record(person, task, rng)
                record = task.record_id(n)
                out.append(self.read(person, ts, task, record, ip))
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
                    out.append(self.page(person, t + rng.random() * span, task, first, 10, ip))
            if rng.random() < 0.3:
                out.append(self.other_request(person, t + rng.random() * span, project, ip))
            if person.phone_ip and rng.random() < 0.03:
                for _ in range(rng.randint(1, 4)):
                    task = rng.choice(tasks)
                    n = self.next_record(person, task, rng)
                    out.append(
                        self.read(
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
                out.append(self.refused(person, begin + rng.random() * (end - begin), ip, rng))
        if person.reassigned and day == person.reassigned[0]:
            old = self.projects[person.project][0]
            for _ in range(rng.randint(1, 4)):
                out.append(
                    self.denied(
                        person,
                        begin + rng.random() * 3600,
                        f"/api/projects/{old.project_name}/tasks/{old.name}/records",
                        old.project_name,
                        old.name,
                        ip,
                    )
                )

    # --- request makers --------------------------------------------------------------

    def read(self, person: Contractor, ts: float, task: Task, record: str, ip: str) -> Request:
        return Request(
            ts,
            self.rid(),
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

    def page(
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
            self.rid(),
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

    def other_request(self, person: Contractor, ts: float, project: int, ip: str) -> Request:
        return Request(
            ts,
            self.rid(),
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

    def denied(
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
            self.rid(),
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

    def refused(
        self, person: Contractor, ts: float, ip: str, rng: random.Random | None = None
    ) -> Request:
        rng = rng or self.rng
        if rng.random() < 0.5:
            other = rng.choice([p for p in self.projects if p != person.project])
            task = rng.choice(self.projects[other])
            path = f"/api/projects/proj-{other}/tasks/{task.name}/records"
            return self.denied(person, ts, path, f"proj-{other}", task.name, ip)
        path = rng.choice(
            ("/api/projects/proj-{p}/task", "/api/me", "/api/projects/proj-{p}/stats")
        )
        return self.denied(
            person, ts, path.format(p=person.project), None, None, ip, reason="unknown_route"
        )

    # --- helpers of attacks ---------------------------------------------------------------------

    def usual_hour(self, person: Contractor, day: int) -> float:
        """A time inside the contractor's usual working hours that day (UTC epoch)."""
        start = (
            person.start_hour - person.tz + self.rng.uniform(0.5, max(1.0, person.day_length - 2))
        )
        return self.start + day * 86400 + start * 3600

    def attack_day(self, person: Contractor, duration_days: int = 1) -> int:
        rng = self.rng
        for _ in range(50):
            day = rng.randint(self.warmup, self.days - duration_days)
            if (START.weekday() + day) % 7 < 5 and day not in person.absences:
                return day
        return rng.randint(self.warmup, self.days - duration_days)

    def label(self, family: str, person_key: str, start: float, end: float, **details: Any) -> None:
        self.labels.append(Label(family, person_key, start, end, details))
