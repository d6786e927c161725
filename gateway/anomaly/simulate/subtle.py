"""The subtle attack families: each stays below every single detector's threshold.

Planted after the classic attacks on contractors in no hard benign case and not attacked
already, from the editor's own random stream (see `editor`). About 1.5 % of the
contractors per family (3 at 200), and one vendor_creep:

- denial_trickle: on one working day or two close together, 6-15 requests refused by
  policy for projects the contractor is not granted, in hours they work, at most 3 an
  hour (their other refusals counted), their work otherwise as usual;
- project_drift: for 3-5 consecutive working days, 30-60 % of each day's records (record
  fetches and listings) come from a project the contractor's vendor is granted but the
  contractor never worked on, instead of their own (the day's total is the same); nothing
  there is annotated, the annotations the moved fetches had go to records of their own
  fetched earlier (so reads per annotation stay as usual); no grant changed before it;
- odd_days: 1-3 normal working days (usual hours, usual pace) on weekdays the contractor
  never works (a weekday-only worker on a Saturday, a Sunday); only contractors whose
  working day falls inside one UTC day (as the detectors count days);
- request_inflation: for 2-5 consecutive working days, every task listing returns 1.3-1.8x
  the records it usually does (as many requests as usual); days where that would make an
  hour over 3x the contractor's typical hour are not chosen;
- vendor_creep: 40-70 % of one vendor's contractors (as many as are free: not attacked,
  in no benign case within two days of it) read 20-35 % more records a day for 4-7
  working days, nobody above 1.4x, in their usual hours, on their own tasks, annotated at
  their usual share; the extra records go to the quieter hours (none above twice the
  day's median hour, or 2.5x their typical hour): days rise, peaks do not. Labelled
  `vendor:<name>`, the members in details["contractors"].

Labels run from the first to the last malicious request; details carry the numbers used.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.editor import Editor, is_listing, is_read, weekday
from gateway.anomaly.simulate.model import Contractor

SUBTLE_SHARE = 0.015
WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def date(ed: Editor, day: int) -> str:
    return datetime.fromtimestamp(ed.sim.day_start(day), UTC).strftime("%Y-%m-%d")


def granted(ed: Editor, person: Contractor) -> set[int]:
    return {person.project, *ed.vendor_grants.get(person.vendor, [])}


# --- the families ----------------------------------------------------------------------


def denial_trickle(ed: Editor, person: Contractor) -> bool:
    sim, rng = ed.sim, ed.rng
    days = ed.working_days(person)
    if not days:
        return False
    # One day, or two close together (within the next three working days).
    start = rng.randrange(len(days))
    chosen = [days[start]]
    if rng.random() < 0.5 and start + 1 < len(days):
        chosen.append(rng.choice(days[start + 1 : start + 4]))
    total = rng.randint(6, 15)
    counts = [
        total // len(chosen) + (1 if i < total % len(chosen) else 0) for i in range(len(chosen))
    ]
    targets = [p for p in sorted(sim.projects) if p not in granted(ed, person)]
    if not targets:
        return False
    made: list[Request] = []
    per_hour: Counter[int] = Counter()
    for day, count in zip(chosen, counts, strict=True):
        rows = ed.day_requests(person, day)
        worked = [r.ts for _, r in rows if r.decision == "allow"]
        if not worked:
            return False
        begin, end = min(worked), max(worked)
        refused = Counter(int(r.ts // 3600) for _, r in rows if r.decision == "deny")
        # At most 3 refusals an hour, theirs included, in hours they worked.
        hours = sorted({int(r.ts // 3600) for _, r in rows if r.decision == "allow"})
        tokens = [h for h in hours for _ in range(max(0, 3 - refused[h]))]
        if len(tokens) < count:
            return False
        ip = ed.address(rows, person)
        for hour in sorted(rng.sample(tokens, count)):
            low, high = max(begin, hour * 3600), min(end, (hour + 1) * 3600)
            ts = low + rng.random() * max(1.0, high - low)
            project = rng.choice(targets)
            task = rng.choice(sim.projects[project])
            if rng.random() < 0.7:
                path, task_name = (
                    f"/api/projects/{task.project_name}/tasks/{task.name}/records",
                    task.name,
                )
            else:
                path, task_name = f"/api/projects/{task.project_name}/tasks", None
            made.append(sim.denied(person, ts, path, task.project_name, task_name, ip))
            per_hour[hour] += 1
    ed.add(made)
    sim.label(
        "denial_trickle",
        person.key,
        min(r.ts for r in made),
        max(r.ts for r in made),
        denied=len(made),
        days=[date(ed, d) for d in chosen],
        projects=sorted({r.project or "-" for r in made}),
        max_per_hour=max(per_hour.values()),
    )
    return True


def _annotations(rows: list[tuple[int, Request]]) -> dict[str, list[tuple[float, int]]]:
    """record -> [(ts, index)] of the annotations submitted in `rows`."""
    out: dict[str, list[tuple[float, int]]] = {}
    for i, r in rows:
        if r.action == "annotate" and r.record_ids[0] is not None:
            out.setdefault(r.record_ids[0], []).append((r.ts, i))
    return out


def _backlog(ed: Editor, person: Contractor, days: list[int]) -> list[tuple[str | None, str]]:
    """(task, record) of records fetched one by one on `days`, to annotate later: those
    never annotated last (taken first), then those annotated already (a second look)."""
    fresh, seen = [], []
    for day in days:
        rows = ed.day_requests(person, day)
        annotated = _annotations(rows)
        for _, r in rows:
            if is_read(r) and r.path.startswith("/api/records/"):
                record = r.record_ids[0] or ""
                (seen if record in annotated else fresh).append((r.task, record))
    return seen + fresh


def project_drift(ed: Editor, person: Contractor) -> bool:
    """Reads moved to the other project, records and listings alike; each annotation of a
    record moved away goes to a record of the contractor's own fetched earlier (one never
    annotated if any is left), so the day's reads and annotations add up as usual."""
    sim, rng = ed.sim, ed.rng
    options = [p for p in ed.vendor_grants.get(person.vendor, []) if p != person.project]
    if not options:
        return False
    target = rng.choice(options)
    tasks = rng.sample(sim.projects[target], min(len(sim.projects[target]), rng.randint(1, 2)))
    runs = ed.runs(ed.working_days(person), rng.randint(3, 5))
    if not runs:
        return False
    run = rng.choice(runs)
    backlog = _backlog(ed, person, [d for d in sorted(person.worked) if d < run[0]])
    moved: list[Request] = []
    shares = []
    own = f"proj-{person.project}"
    for day in run:
        share = rng.uniform(0.3, 0.6)
        rows = ed.day_requests(person, day)
        reads = [(i, r) for i, r in rows if is_read(r) and r.project == own]
        records = sum(len(r.record_ids) for _, r in reads)
        annotations = _annotations(rows)
        rng.shuffle(reads)
        count = 0
        for i, r in reads:
            if count >= share * records:
                break
            task = rng.choice(tasks)
            if is_listing(r):
                first = rng.randint(0, task.assignable - len(r.record_ids))
                ids = tuple(task.record_id(n) for n in range(first, first + len(r.record_ids)))
                path = f"/api/projects/{task.project_name}/tasks/{task.name}/records"
            else:
                ids = (task.record_id(rng.randrange(task.assignable)),)
                path = f"/api/records/{ids[0]}"
            new = r._replace(path=path, project=task.project_name, task=task.name, record_ids=ids)
            ed.replace(i, new)
            moved.append(new)
            count += len(ids)
            # Nothing fetched there is annotated: the annotation of the record not fetched
            # goes to one of the backlog.
            pending = annotations.get(r.record_ids[0] or "", [])
            later = [entry for entry in pending if entry[0] >= r.ts]
            if not later:
                continue
            pending.remove(later[0])
            index = later[0][1]
            if not backlog:
                ed.replace(index, None)
                continue
            task_name, record = backlog.pop()
            annotation = ed.request(index)
            assert annotation is not None
            ed.replace(
                index,
                annotation._replace(
                    path=f"/api/projects/{own}/tasks/{task_name}/records/{record}/annotations",
                    task=task_name,
                    record_ids=(record,),
                ),
            )
        shares.append(round(count / max(records, 1), 2))
    if not moved:
        return False
    sim.label(
        "project_drift",
        person.key,
        min(r.ts for r in moved),
        max(r.ts for r in moved),
        project=f"proj-{target}",
        own_project=own,
        days=[date(ed, d) for d in run],
        shares=shares,
        moved_reads=len(moved),
        moved_records=sum(len(r.record_ids) for r in moved),
    )
    return True


def _day_aligned(ed: Editor, person: Contractor) -> bool:
    """Working days that fall inside one UTC day (as the detectors count days)."""
    start = person.start_hour - person.tz
    longest = person.day_length + 1.5 + max(ed.sim.longer[person.project])
    return start - 1.5 >= 0.5 and start + longest <= 23.5


def odd_days(ed: Editor, person: Contractor) -> bool:
    sim, rng = ed.sim, ed.rng
    if person.weekend_habit or any(weekday(d) >= 5 for d in person.worked):
        return False
    if not _day_aligned(ed, person):
        return False
    saturdays = [d for d in range(sim.warmup, sim.days) if weekday(d) == 5]

    def usable(days: list[int]) -> bool:
        return all(sim.warmup <= d < sim.days and d not in person.absences for d in days)

    options: list[list[int]] = []
    for size in range(rng.randint(1, 3), 0, -1):
        shapes = {1: [[0], [1]], 2: [[0, 1]], 3: [[0, 1, 7]]}[size]
        options = [
            [s + k for k in shape]
            for s in saturdays
            for shape in shapes
            if usable([s + k for k in shape])
        ]
        if options:
            break
    if not options:
        return False
    picked = rng.choice(options)
    made: list[Request] = []
    reads = []
    for day in picked:
        work = ed.work(person, day)
        made.extend(work)
        reads.append(sum(len(r.record_ids) for r in work if is_read(r)))
    allowed = [r for r in made if r.decision == "allow"]
    if not allowed:
        return False
    ed.add(made)
    sim.label(
        "odd_days",
        person.key,
        min(r.ts for r in allowed),
        max(r.ts for r in allowed),
        days=[date(ed, d) for d in picked],
        weekdays=[WEEKDAY_NAMES[weekday(d)] for d in picked],
        reads=reads,
    )
    return True


def _hourly_records(
    rows: list[tuple[int, Request]], factor: float, *, listings_only: bool = True
) -> Counter[int]:
    """Records read per hour, those of listings (or of every read) times `factor`."""
    hours: Counter[int] = Counter()
    for _, r in rows:
        if is_read(r):
            size = len(r.record_ids)
            scaled = is_listing(r) or not listings_only
            hours[int(r.ts // 3600)] += round(size * factor) if scaled else size
    return hours


def _typical_hour(ed: Editor, person: Contractor) -> float:
    """The contractor's median active hour (records) over the warm-up."""
    hours = [
        count
        for d in sorted(person.worked)
        if d < ed.sim.warmup
        for count in _hourly_records(ed.day_requests(person, d), 1.0).values()
    ]
    return statistics.median(hours) if hours else 0.0


def _below_spikes(
    ed: Editor,
    person: Contractor,
    day: int,
    factor: float,
    typical: float,
    *,
    listings_only: bool = True,
) -> bool:
    """No one, two or three hours of the day so scaled above 3x the contractor's typical
    hours (volume_spike wants 3.5x)."""
    rows = ed.day_requests(person, day)
    hours = _hourly_records(rows, factor, listings_only=listings_only)
    for width in (1, 2, 3):
        for hour in hours:
            if sum(hours.get(hour + k, 0) for k in range(width)) > 3 * width * typical:
                return False
    return True


def request_inflation(ed: Editor, person: Contractor) -> bool:
    sim, rng = ed.sim, ed.rng
    if person.browse_share < 0.04:
        return False
    listings = {
        d: sum(is_listing(r) for _, r in ed.day_requests(person, d))
        for d in ed.working_days(person)
    }
    factor = rng.uniform(1.3, 1.8)
    typical = _typical_hour(ed, person)
    runs = [
        run
        for run in ed.runs(sorted(listings), rng.randint(2, 5))
        if all(listings[d] for d in run)
        and sum(listings[d] for d in run) >= 2 * len(run)
        and all(_below_spikes(ed, person, d, factor, typical) for d in run)
    ]
    if not runs:
        return False
    run = rng.choice(runs)
    inflated: list[Request] = []
    extra = 0
    for day in run:
        for index, request in ed.day_requests(person, day):
            if is_listing(request):
                size = len(request.record_ids)
                changed = ed.resize_listing(index, request, round(size * factor))
                extra += len(changed.record_ids) - size
                inflated.append(changed)
    sim.label(
        "request_inflation",
        person.key,
        min(r.ts for r in inflated),
        max(r.ts for r in inflated),
        factor=round(factor, 2),
        days=[date(ed, d) for d in run],
        listings=len(inflated),
        extra_records=extra,
    )
    return True


def vendor_creep(ed: Editor) -> bool:
    sim, rng = ed.sim, ed.rng
    weekdays = [d for d in range(sim.warmup, sim.days) if weekday(d) < 5]
    length = rng.randint(4, 7)
    if len(weekdays) < length:
        return False
    first = rng.randrange(len(weekdays) - length + 1)
    window = weekdays[first : first + length]
    # Members may have travelled or moved project, but not within two days of it.
    low, high = sim.day_start(window[0] - 2), sim.day_start(window[-1] + 3)
    near = {
        case.contractor
        for case in sim.benign
        if case.contractor is not None and case.start < high and case.end > low
    }

    def free(p: Contractor) -> bool:
        return (
            p.key not in ed.busy
            and p.key not in near
            and p.join_day == 0
            and p.key not in sim.retry_loops
            and p.stop_at is None
            and not any(window[0] - 2 <= d <= window[-1] + 1 for d in p.review_days)
            and sum(d in p.worked for d in window) >= 2
        )

    vendors = sorted({p.vendor for p in sim.people})
    eligible = {v: [p for p in sim.people if p.vendor == v and free(p)] for v in vendors}
    vendor = max(vendors, key=lambda v: (len(eligible[v]), -vendors.index(v)))
    everyone = [p for p in sim.people if p.vendor == vendor]
    share = rng.uniform(0.4, 0.7)
    wanted = max(2, round(share * len(everyone)))
    if len(eligible[vendor]) < 2:
        return False
    members = sorted(
        rng.sample(eligible[vendor], min(wanted, len(eligible[vendor]))), key=lambda p: p.index
    )
    added: list[Request] = []
    factors = {}
    for person in members:
        ed.busy.add(person.key)
        factor = rng.uniform(1.2, 1.35)
        factors[person.key] = round(factor, 3)
        typical = _typical_hour(ed, person)
        for day in window:
            if day in person.worked:
                added.extend(
                    ed.extra_reads(
                        person, day, factor, work=False, annotate=True, ceiling=2.5 * typical
                    )
                )
    if not added:
        return False
    sim.label(
        "vendor_creep",
        f"vendor:{vendor}",
        min(r.ts for r in added),
        max(r.ts for r in added),
        contractors=[p.key for p in members],
        share=round(len(members) / len(everyone), 2),
        factors=factors,
        days=[date(ed, d) for d in window],
        extra_reads=len(added),
    )
    return True


# In the order they are planted: the pickiest about their contractor first.
FAMILIES: dict[str, Callable[[Editor, Contractor], bool]] = {
    "odd_days": odd_days,
    "request_inflation": request_inflation,
    "project_drift": project_drift,
    "denial_trickle": denial_trickle,
}


def plant(ed: Editor) -> None:
    """Every subtle family: the per-contractor ones, then vendor_creep."""
    per_family = max(1, round(ed.sim.n_contractors * SUBTLE_SHARE))
    pool = ed.clean()
    for attack in FAMILIES.values():
        planted = 0
        for person in pool:
            if planted == per_family:
                break
            if person.key in ed.busy:
                continue
            if attack(ed, person):
                ed.busy.add(person.key)
                planted += 1
    vendor_creep(ed)
