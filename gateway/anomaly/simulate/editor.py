"""Editing the generated log after the fact, on a random stream of its own.

The subtle families and their benign twins are applied after the population's work and
the classic attacks, drawing only from `random.Random(f"{seed}:subtle")`: every classic
draw stays as it was, and so does every request the edits leave alone (same request ids,
same order). Edits replace or drop requests by their index in `Simulator.requests` and
append new ones; `apply` writes them back.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.model import CAPACITY, START, Contractor, Poisson, Task
from gateway.anomaly.simulate.population import Population


def weekday(day: int) -> int:
    """0 Monday .. 6 Sunday, of the simulation's `day`."""
    return (START.weekday() + day) % 7


def is_read(request: Request) -> bool:
    """A request that released records (a record fetched by id, or a list of them)."""
    return (
        request.decision == "allow"
        and request.action == "read"
        and bool(request.record_ids)
        and request.record_ids[0] is not None
    )


def is_listing(request: Request) -> bool:
    """A task's records listed (`GET .../tasks/<task>/records`), page by page."""
    return is_read(request) and request.path.endswith("/records")


def record_number(record_id: str) -> int:
    return int(record_id.rsplit("-", 1)[1])


class Editor:
    def __init__(self, sim: Population) -> None:
        self.sim = sim
        self.rng = random.Random(f"{sim.seed}:subtle")
        self.poisson = Poisson(self.rng)
        self.changed: dict[int, Request | None] = {}
        self.added: list[Request] = []
        # Contractors no further edit touches: attacked, or edited already.
        self.busy: set[str] = set(sim.attacked)
        # vendor -> projects granted to the whole vendor (besides their members' own)
        self.vendor_grants: dict[str, list[int]] = {}

    # --- reading ---------------------------------------------------------------------

    def request(self, index: int) -> Request | None:
        if index in self.changed:
            return self.changed[index]
        return self.sim.requests[index]

    def day_requests(self, person: Contractor, day: int) -> list[tuple[int, Request]]:
        """The requests of one working day of `person` as edited so far (index, request)."""
        first, stop = person.worked.get(day, (0, 0))
        out = []
        for index in range(first, stop):
            request = self.request(index)
            if request is not None:
                out.append((index, request))
        return out

    def working_days(self, person: Contractor) -> list[int]:
        """Weekdays after the warm-up that `person` worked."""
        return [
            d
            for d in sorted(person.worked)
            if d >= self.sim.warmup and weekday(d) < 5 and d not in person.travel
        ]

    def runs(self, days: list[int], length: int) -> list[list[int]]:
        """`length` consecutive working days out of `days` (a weekend may fall between)."""
        return [
            days[i : i + length]
            for i in range(len(days) - length + 1)
            if days[i + length - 1] - days[i] <= length + 2
        ]

    def clean(self) -> list[Contractor]:
        """Contractors in no hard benign case and not attacked, shuffled."""
        sim = self.sim
        people = [
            p
            for p in sim.people
            if p.key not in self.busy
            and p.join_day == 0
            and not p.travel
            and not p.reassigned
            and not p.review_days
            and p.key not in sim.retry_loops
            and p.stop_at is None
        ]
        self.rng.shuffle(people)
        return people

    def task(self, project: str | None, name: str | None) -> Task | None:
        if project is None or name is None:
            return None
        number = int(project.removeprefix("proj-"))
        for task in self.sim.projects.get(number, []):
            if task.name == name:
                return task
        return None

    def address(self, rows: list[tuple[int, Request]], person: Contractor) -> str:
        """The address most of a day's requests came from."""
        counts = Counter(r.client_ip for _, r in rows if r.client_ip)
        return counts.most_common(1)[0][0] if counts else person.ip

    # --- writing ---------------------------------------------------------------------

    def replace(self, index: int, request: Request | None) -> None:
        self.changed[index] = request

    def add(self, requests: list[Request]) -> None:
        self.added.extend(requests)

    def apply(self) -> None:
        sim = self.sim
        if self.changed:
            edited = (self.changed.get(i, r) for i, r in enumerate(sim.requests))
            sim.requests = [r for r in edited if r is not None]
        sim.requests.extend(self.added)
        self.changed, self.added = {}, []

    # --- more work -------------------------------------------------------------------

    def work(self, person: Contractor, day: int, *, any_weekday: bool = True) -> list[Request]:
        """A normal working day of `person` on `day`, at the usual hours and pace (nothing
        when absent); `any_weekday`: worked whatever the weekday (else as the population's
        own days: a weekend day only now and then, if at all)."""
        shape = self.sim.shape(person, day, self.rng, any_weekday=any_weekday)
        if shape is None:
            return []
        out: list[Request] = []
        self.sim.work_day(person, day, shape, self.rng, self.poisson, out)
        return out

    def annotation(
        self, person: Contractor, ts: float, task: Task, record: str, ip: str
    ) -> Request:
        return Request(
            ts,
            self.sim.rid(),
            person.issuer,
            person.subject,
            person.vendor,
            ip,
            person.user_agent,
            "POST",
            f"/api/projects/{task.project_name}/tasks/{task.name}/records/{record}/annotations",
            task.project_name,
            task.name,
            "annotate",
            "allow",
            "released",
            201,
            (record,),
        )

    def extra_reads(
        self,
        person: Contractor,
        day: int,
        factor: float,
        *,
        work: bool,
        annotate: bool | None = None,
        extra_hours: int = 0,
        ceiling: float | None = None,
    ) -> list[Request]:
        """Raise one working day's records read to about `factor` times, with records
        fetched one by one in the (clock) hours the contractor worked that day, each hour
        at most CAPACITY times the usual pace (in requests); what does not fit goes to up
        to `extra_hours` hours after the day's end, the rest is dropped.

        work=True: the next records of the contractor's queue, else records of their tasks
        at random; annotated at their usual share when `annotate` (default: `work`).
        Without a `ceiling` the extras follow the day's shape (more where more was read);
        with one (records an hour) they go to the quieter hours, none above twice the
        day's median hour or the ceiling: the day rises, its peaks do not.
        Returns the requests added (and adds them)."""
        annotate = work if annotate is None else annotate
        rng = self.rng
        rows = self.day_requests(person, day)
        reads = [r for _, r in rows if is_read(r)]
        if not reads:
            return []
        records = sum(len(r.record_ids) for r in reads)
        extra = round(records * (factor - 1))
        first = min(r.ts for r in reads)
        last = max(r.ts for r in reads)
        first_hour, last_hour = int(first // 3600), int(last // 3600)
        hours = list(range(first_hour, last_hour + 1 + extra_hours))
        n_day = last_hour - first_hour + 1
        # The part of each hour inside [first, last] (extra hours: all of it).
        spans = [
            (max(first, h * 3600), min(last, (h + 1) * 3600))
            if k < n_day
            else (h * 3600, (h + 1) * 3600)
            for k, h in enumerate(hours)
        ]
        actions = [0] * len(hours)
        records_in = [0] * len(hours)
        for r in reads:
            k = int(r.ts // 3600) - first_hour
            actions[k] += 1
            records_in[k] += len(r.record_ids)
        room = [max(0.0, CAPACITY * person.rate - a) for a in actions]
        if ceiling is None:
            # The day's shape: extras where the contractor read, as far as there is room.
            weights = [float(c) for c in records_in]
        else:
            parts = [(high - low) / 3600 for low, high in spans]
            full = [c for c, part in zip(records_in, parts, strict=True) if part >= 0.99]
            level = min(2 * statistics.median(full or records_in[:n_day]), ceiling)
            tops = [level * part for part in parts]
            room = [
                min(r, max(0.0, top - c)) for r, top, c in zip(room, tops, records_in, strict=True)
            ]
            room[n_day:] = [0.0] * extra_hours
            weights = list(room)
        total = sum(weights) or 1.0
        wanted = [extra * w / total for w in weights]
        placed = [min(w, r) for w, r in zip(wanted, room, strict=True)]
        left = extra - sum(placed)
        # The rest in the room left, the day's hours first, then the extra hours.
        for k in range(len(placed)):
            if left <= 0:
                break
            more = min(left, room[k] - placed[k])
            placed[k] += more
            left -= more
        counts = [int(p) + (1 if rng.random() < p - int(p) else 0) for p in placed]
        _, tasks = self.sim.project_on(person, day)
        ip = self.address(rows, person)
        out: list[Request] = []
        for (low, high), count in zip(spans, counts, strict=True):
            for _ in range(count):
                ts = low + rng.random() * max(1.0, high - low)
                task = rng.choice(tasks)
                if work:
                    record = task.record_id(self.sim.next_record(person, task, rng))
                else:
                    record = task.record_id(rng.randrange(task.assignable))
                out.append(self.sim.read(person, ts, task, record, ip))
                if annotate and rng.random() < person.annotate_share:
                    out.append(self.annotation(person, ts + rng.uniform(40, 300), task, record, ip))
        self.add(out)
        return out

    def resize_listing(self, index: int, request: Request, size: int) -> Request:
        """A listing request returning `size` records from the same first record."""
        task = self.task(request.project, request.task)
        assert task is not None
        first = record_number(request.record_ids[0] or "")
        stop = min(task.size, first + size)
        changed = request._replace(record_ids=tuple(task.record_id(n) for n in range(first, stop)))
        self.replace(index, changed)
        return changed
