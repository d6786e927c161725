"""Turn day plans into requests, as the gateway would log them.

Days are rendered in order across everyone (day 0 for all, then day 1, ...), so tasks
are claimed roughly in time order. Each contractor keeps, per project, the task they are
on and how far they got; a task's records are read in order, by single fetches or by
listing pages. Requests outside the log's span (the far edges of local days in distant
time zones) are dropped.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from gateway.anomaly.data import Request
from gateway.anomaly.heldout.behaviour import DayPlan, Plans, units_for
from gateway.anomaly.heldout.population import Person, World, stream


class Task:
    __slots__ = ("base", "name", "prefix", "size")

    def __init__(self, project: str, number: int, size: int) -> None:
        self.name = f"t{number:04d}"
        self.size = size
        self.base = f"/api/projects/{project}/tasks/{self.name}/records"
        self.prefix = f"r-{project}-{self.name}-"

    def rid(self, index: int) -> str:
        return f"{self.prefix}{index + 1:05d}"


class Catalogue:
    """The tasks of every project, created as contractors claim them."""

    def __init__(self, seed: int, projects: list[str]) -> None:
        self.rng = stream(seed, "tasks")
        self.tasks: dict[str, list[Task]] = {p: [] for p in projects}

    def claim(self, project: str) -> Task:
        tasks = self.tasks.setdefault(project, [])
        task = Task(project, len(tasks) + 1, self.rng.randint(300, 1500))
        tasks.append(task)
        return task

    def any_task(self, project: str, rng: random.Random) -> Task:
        tasks = self.tasks.get(project)
        return rng.choice(tasks) if tasks else self.claim(project)


class Progress:
    __slots__ = ("listing", "pos", "qe", "qs", "task")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.pos = 0  # next record not yet delivered
        self.qs = 0  # delivered by the last page but not yet worked: [qs, qe)
        self.qe = 0
        self.listing = False


@dataclass
class State:
    rng: random.Random
    progress: dict[str, Progress] = field(default_factory=dict)


@dataclass
class Rendered:
    requests: list[Request]
    # (contractor key, local day) -> [first, last] time of the day's attack requests
    marks: dict[tuple[str, int], list[float]]


class Renderer:
    def __init__(self, world: World) -> None:
        self.world = world
        self.catalogue = Catalogue(world.seed, world.projects)
        self.requests: list[Request] = []
        self.marks: dict[tuple[str, int], list[float]] = {}
        self.count = 0
        self.prefix = f"ho{world.seed:x}-"
        self.lo = world.start
        self.hi = world.end
        self.plans: Plans = []
        # Records each person received per plan day, for sizing attacks on their history.
        self.received: list[dict[int, int]] = [{} for _ in world.people]
        self.owed: dict[int, float] = {}  # records an attack day fell short of its target

    def run(self, plans: Plans) -> Rendered:
        self.plans = plans
        states = [State(stream(self.world.seed, "render", p.key)) for p in self.world.people]
        for day in range(self.world.days):
            for person in self.world.people:
                plan = plans[person.index][day]
                if plan is not None:
                    self._day(person, plan, states[person.index])
        self.requests.sort(key=lambda r: (r.ts, r.request_id))
        return Rendered(self.requests, self.marks)

    def _chunks(self, plan: DayPlan, rng: random.Random) -> list[tuple[str, int, float, bool]]:
        """(project, records, annotate fraction, drifting) blocks in the day's order."""
        parts: list[tuple[str, int, float, bool]] = []
        rest = plan.units
        if plan.drift is not None:
            project, share, annotate = plan.drift
            n = round(plan.units * share)
            parts.append((project, n, annotate, True))
            rest -= n
        left = rest
        for i, (project, share) in enumerate(plan.mix):
            n = left if i == len(plan.mix) - 1 else round(rest * share)
            left -= n
            parts.append((project, n, plan.annotate_frac, False))
        if len(parts) == 1:
            return parts
        blocks = []
        for project, n, annotate, drifting in parts:
            pieces = 1 if n < 40 else rng.randint(1, 3)
            for k in range(pieces):
                size = n // pieces + (1 if k < n % pieces else 0)
                if size:
                    blocks.append((project, size, annotate, drifting))
        rng.shuffle(blocks)
        return blocks

    def _size(self, person: Person, plan: DayPlan) -> None:
        """Set an attack day's volume from what the person actually received so far."""
        assert plan.size is not None
        received = self.received[person.index]
        history = [
            received[p.day]
            for p in self.plans[person.index][: plan.baseline]
            if p is not None and p.attack is None and received.get(p.day)
        ]
        if not history:
            return
        plan.usual = float(statistics.median(history))
        target = plan.usual * plan.size
        if plan.page_returned is None:
            # Listing users receive whole pages, so a day lands a little off its target;
            # the next attack day makes up for it, keeping the attack's average on target.
            limit = 0.1 * plan.usual
            target += max(-limit, min(limit, self.owed.pop(person.index, 0.0)))
            plan.target = target
        usual_units = plan.units
        share = plan.drift[1] if plan.drift is not None else 0.0
        plan.units = units_for(person, plan, target, share)
        if plan.keep_annotations:
            plan.annotate_frac = min(1.0, person.annotate_frac * usual_units / plan.units)

    def _day(self, person: Person, plan: DayPlan, state: State) -> None:
        if plan.size is not None:
            self._size(person, plan)
        self._work(person, plan, state)
        if plan.target is not None:
            self.owed[person.index] = plan.target - self.received[person.index][plan.day]

    def _work(self, person: Person, plan: DayPlan, state: State) -> None:
        out = _Writer(self, person, plan)
        rng = state.rng
        rand = rng.random
        for progress in state.progress.values():
            # Yesterday's half-worked page is listed again this morning.
            if progress.qs < progress.qe:
                progress.pos = progress.qs
                progress.qs = progress.qe = 0

        chunks = self._chunks(plan, rng)
        weights = []
        for _ in range(sum(c[1] for c in chunks)):
            w = 0.5 + rand()
            if rand() < 0.03:
                w *= rng.uniform(3.0, 8.0)  # a coffee, a call, a question to a colleague
            weights.append(w)
        clock = _Clock(plan.intervals)
        scale = clock.total / sum(weights) if weights else 0.0
        attack = plan.attack
        offset = 0.0
        k = 0
        for project, units, annotate, drifting in chunks:
            marked = out.whole_day or (drifting and attack == "drift")
            progress = state.progress.get(project)
            if progress is None:
                progress = state.progress[project] = Progress()
            page_size = plan.page_size
            returned = page_size
            if plan.page_returned is not None and not drifting:
                returned = plan.page_returned
            for _ in range(units):
                w = weights[k] * scale
                t0 = clock.at(offset)
                t_work = clock.at(offset + 0.85 * w)
                if k == 0 and rand() < 0.6:
                    out.task_list(t0 - rng.uniform(10, 60), project)
                elif rand() < 0.004:
                    out.task_list(t0 + 0.5 * w, project)
                offset += w
                k += 1
                task = progress.task
                if task is None or (progress.qs >= progress.qe and progress.pos >= task.size):
                    task = progress.task = self.catalogue.claim(project)
                    progress.pos = progress.qs = progress.qe = 0
                    # Drift reads follow links one record at a time, outside the
                    # person's usual task flow.
                    progress.listing = not drifting and (
                        person.mode == "listing" or (person.mode == "mixed" and rand() < 0.5)
                    )
                    if rand() < 0.8:
                        out.task_list(t0 - rng.uniform(5, 30), project)
                if progress.listing:
                    if progress.qs >= progress.qe:
                        page = progress.pos // returned + 1
                        first = (page - 1) * returned
                        last = min(page * returned, task.size)
                        out.read(
                            t0 - rng.uniform(1, 4),
                            f"{task.base}?page={page}",
                            project,
                            task,
                            tuple(task.rid(i) for i in range(first, last)),
                            marked or (attack == "inflation" and returned != page_size),
                        )
                        # Only a usual page's worth is worked; the rest is just carried off.
                        progress.qs = progress.pos
                        progress.qe = min(last, progress.pos + page_size)
                        progress.pos = last
                    rid = task.rid(progress.qs)
                    progress.qs += 1
                    if rand() < person.open_frac:
                        out.read(t0 + 0.1 * w, f"{task.base}/{rid}", project, task, (rid,), marked)
                else:
                    rid = task.rid(progress.pos)
                    progress.pos += 1
                    ts = t0 + rng.uniform(0.5, 3.0)
                    out.read(ts, f"{task.base}/{rid}", project, task, (rid,), marked)
                if rand() < annotate:
                    out.annotate(t_work, project, task, rid, marked)

        for denial in plan.denials:
            out.refuse(denial.ts, denial.path, denial.project, denial.task, attack == "trickle")
        if plan.stale is not None:
            self._stale(plan, state, out)
        if plan.glance is not None:
            project, count = plan.glance
            task = self.catalogue.any_task(project, rng)
            t = clock.at(rng.uniform(0.0, max(0.0, clock.total - 900.0)))
            for _ in range(count):
                rid = task.rid(rng.randrange(task.size))
                t += rng.uniform(20.0, 120.0)
                out.read(t, f"{task.base}/{rid}", project, task, (rid,), False)

    def _stale(self, plan: DayPlan, state: State, out: _Writer) -> None:
        """Old links after a move: the old project's records, now refused."""
        assert plan.stale is not None
        rng = state.rng
        project, count = plan.stale
        progress = state.progress.get(project)
        task = progress.task if progress is not None else None
        if task is None:
            task = self.catalogue.any_task(project, rng)
        pos = progress.pos if progress is not None else 0
        # Mostly in the first hours: yesterday's open tabs and bookmarks.
        a, b = plan.intervals[0]
        for _ in range(count):
            ts = rng.uniform(a, a + (b - a) * 0.6)
            if rng.random() < 0.7:
                rid = task.rid(max(0, min(task.size - 1, pos + rng.randint(-5, 2))))
                path = f"{task.base}/{rid}"
            else:
                path = f"{task.base}?page={rng.randint(1, 10)}"
            out.refuse(ts, path, project, task.name, False)


class _Clock:
    """Maps an offset into the day's working time onto the wall clock (breaks skipped)."""

    def __init__(self, intervals: list[tuple[float, float]]) -> None:
        self.spans = []
        offset = 0.0
        for a, b in intervals:
            self.spans.append((offset, offset + b - a, a))
            offset += b - a
        self.total = offset

    def at(self, offset: float) -> float:
        for c0, c1, a in self.spans:
            if offset < c1:
                return a + offset - c0
        c0, _, a = self.spans[-1]
        return a + offset - c0


class _Writer:
    """Writes one contractor-day's requests, counts the records they received, and
    marks the span of the day's attack requests."""

    def __init__(self, renderer: Renderer, person: Person, plan: DayPlan) -> None:
        self.renderer = renderer
        self.requests = renderer.requests
        self.lo, self.hi = renderer.lo, renderer.hi
        self.who = (person.issuer, person.subject, person.vendor.name)
        self.ip = plan.ip
        self.mobile = plan.mobile
        self.agent = plan.agent
        self.day = plan.day
        self.received = renderer.received[person.index]
        self.received[plan.day] = 0
        self.mark_key = (person.key, plan.day)
        self.whole_day = plan.attack in ("odd", "creep")

    def emit(
        self,
        ts: float,
        method: str,
        path: str,
        project: str,
        task: str | None,
        action: str,
        decision: str,
        reason: str,
        status: int | None,
        rids: tuple[str | None, ...],
        marked: bool,
    ) -> None:
        if ts < self.lo or ts >= self.hi:
            return
        renderer = self.renderer
        renderer.count += 1
        ip = self.ip
        if self.mobile is not None and self.mobile[0] <= ts < self.mobile[1]:
            ip = self.mobile[2]
        issuer, subject, vendor = self.who
        self.requests.append(
            Request(
                ts, f"{renderer.prefix}{renderer.count:08x}", issuer, subject, vendor, ip,
                self.agent, method, path, project, task, action, decision, reason, status, rids,
            )
        )  # fmt: skip
        if decision == "allow" and action == "read" and rids[0] is not None:
            self.received[self.day] += len(rids)
        if marked:
            span = renderer.marks.get(self.mark_key)
            if span is None:
                renderer.marks[self.mark_key] = [ts, ts]
            else:
                span[0] = min(span[0], ts)
                span[1] = max(span[1], ts)

    def task_list(self, ts: float, project: str) -> None:
        self.emit(
            ts, "GET", f"/api/projects/{project}/tasks", project, None, "read", "allow",
            "released", 200, (None,), self.whole_day,
        )  # fmt: skip

    def read(
        self,
        ts: float,
        path: str,
        project: str,
        task: Task,
        rids: tuple[str, ...],
        marked: bool,
    ) -> None:
        self.emit(
            ts, "GET", path, project, task.name, "read", "allow", "released", 200, rids, marked
        )

    def annotate(self, ts: float, project: str, task: Task, rid: str, marked: bool) -> None:
        self.emit(
            ts, "POST", f"{task.base}/{rid}/annotations", project, task.name, "annotate",
            "allow", "released", 201, (rid,), marked,
        )  # fmt: skip

    def refuse(self, ts: float, path: str, project: str, task: str | None, marked: bool) -> None:
        self.emit(
            ts, "GET", path, project, task, "read", "deny", "policy_denied", None, (None,), marked
        )


def render(world: World, plans: Plans) -> Rendered:
    return Renderer(world).run(plans)
