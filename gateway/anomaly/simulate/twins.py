"""Benign twins of the subtle families: the same signal, for an innocent reason.

Applied after the subtle attacks, from the editor's random stream, never to an attacked
contractor (so the attacks' requests, and their contractors', stay as planted):

- reassignment: a contractor moves to a project they never worked on, granted by a
  policy change at the time (twin of project_drift); a few stale requests to the old
  project are refused (as in the population's own reassignments);
- catch_up: the first one or two days back from an absence of 2+ weekdays, 1.5-2.5x the
  usual records (real work, annotated; each hour at most twice the usual pace, the rest
  in up to 3 more hours);
- schedule_change: a whole team (one vendor, one project) moves from Monday-Friday to
  Tuesday-Saturday (twin of odd_days);
- page_size_increase: a tool update: every task listing on one project returns more
  records from one day on, for everyone on it (twin of request_inflation);
- project_surge: everyone on one project, all vendors, reads 20-35 % more for 4-7
  working days (twin of vendor_creep), real work, annotated.

Per-contractor twins name the contractor; the project-wide ones (contractor None) the
project.
"""

from __future__ import annotations

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.editor import Editor, is_listing, weekday
from gateway.anomaly.simulate.model import BenignCase, Contractor

TWIN_REASSIGN_SHARE = 0.01
TWIN_CATCH_UP_SHARE = 0.02


def reassignment(ed: Editor, person: Contractor) -> bool:
    """From a working day on, the contractor's days are drawn again on the new project
    (its tasks, its load); the population's own reassignment refuses a few stale requests
    to the old project on the first day."""
    sim, rng = ed.sim, ed.rng
    days = [d for d in sorted(person.worked) if sim.warmup <= d <= sim.days - 4]
    if not days:
        return False
    day = rng.choice(days)
    others = [p for p in sim.vendor_projects[person.vendor] if p != person.project] or [
        p for p in sorted(sim.projects) if p != person.project
    ]
    new = rng.choice(others)
    tasks = rng.sample(sim.projects[new], min(len(sim.projects[new]), rng.randint(1, 2)))
    person.reassigned = (day, new, tasks)
    for d in range(day, sim.days):
        for index, _ in ed.day_requests(person, d):
            ed.replace(index, None)
        ed.add(ed.work(person, d, any_weekday=False))
    sim.benign.append(
        BenignCase(
            "reassignment", person.key, f"proj-{new}", sim.day_start(day), sim.day_start(day + 2)
        )
    )
    return True


def catch_up(ed: Editor, person: Contractor) -> bool:
    sim, rng = ed.sim, ed.rng

    def away(day: int) -> bool:
        """The two weekdays before `day` missed."""
        before = [d for d in range(day - 1, day - 5, -1) if weekday(d) < 5][:2]
        return all(d in person.absences for d in before)

    returns = [d for d in ed.working_days(person) if away(d)]
    if not returns:
        return False
    back = rng.choice(returns)
    days = [d for d in ed.working_days(person) if back <= d <= back + 3][: rng.randint(1, 2)]
    factor = rng.uniform(1.5, 2.5)
    added: list[Request] = []
    for day in days:
        added.extend(ed.extra_reads(person, day, factor, work=True, extra_hours=3))
    if not added:
        return False
    sim.benign.append(
        BenignCase(
            "catch_up",
            person.key,
            None,
            min(r.ts for r in added),
            max(r.ts for r in added),
        )
    )
    return True


def settled(ed: Editor, person: Contractor) -> bool:
    return (
        person.key not in ed.busy
        and person.join_day == 0
        and not person.travel
        and not person.reassigned
        and person.key not in ed.sim.retry_loops
        and person.stop_at is None
    )


def schedule_change(ed: Editor) -> bool:
    sim, rng = ed.sim, ed.rng
    teams: dict[tuple[str, int], list[Contractor]] = {}
    for person in sim.people:
        if settled(ed, person):
            teams.setdefault((person.vendor, person.project), []).append(person)
    mondays = [d for d in range(sim.warmup, sim.days - 5) if weekday(d) == 0]
    choices = sorted(key for key, members in teams.items() if len(members) >= 2)
    if not choices or not mondays:
        return False
    vendor, project = rng.choice(choices)
    first = rng.choice(mondays)
    members = teams[(vendor, project)]
    for person in members:
        ed.busy.add(person.key)
        for monday in range(first, sim.days, 7):
            for index, _ in ed.day_requests(person, monday):
                ed.replace(index, None)
            saturday = monday + 5
            if saturday >= sim.days:
                continue
            for index, _ in ed.day_requests(person, saturday):
                ed.replace(index, None)
            ed.add(ed.work(person, saturday))
        sim.benign.append(
            BenignCase(
                "schedule_change",
                person.key,
                f"proj-{project}",
                sim.day_start(first),
                sim.day_start(sim.days),
            )
        )
    return True


def _on_project(ed: Editor, project: int, day: int) -> list[Contractor]:
    return [
        p
        for p in ed.sim.people
        if p.key not in ed.busy and day in p.worked and ed.sim.project_on(p, day)[0] == project
    ]


def page_size_increase(ed: Editor, project: int) -> bool:
    sim, rng = ed.sim, ed.rng
    first = rng.randint(sim.warmup, sim.days - 3)
    size = round(10 * rng.uniform(1.3, 1.8))
    changed = 0
    for day in range(first, sim.days):
        for person in _on_project(ed, project, day):
            for index, request in ed.day_requests(person, day):
                if is_listing(request) and request.project == f"proj-{project}":
                    ed.resize_listing(index, request, size)
                    changed += 1
    sim.benign.append(
        BenignCase(
            "page_size_increase",
            None,
            f"proj-{project}",
            sim.day_start(first),
            sim.day_start(sim.days),
        )
    )
    return changed > 0


def project_surge(ed: Editor, project: int) -> bool:
    sim, rng = ed.sim, ed.rng
    weekdays = [d for d in range(sim.warmup, sim.days) if weekday(d) < 5]
    length = min(len(weekdays), rng.randint(4, 7))
    start = rng.randrange(len(weekdays) - length + 1)
    window = weekdays[start : start + length]
    added: list[Request] = []
    factors: dict[str, float] = {}
    for day in window:
        for person in _on_project(ed, project, day):
            factor = factors.setdefault(person.key, rng.uniform(1.2, 1.35))
            added.extend(ed.extra_reads(person, day, factor, work=True))
    if not added:
        return False
    sim.benign.append(
        BenignCase(
            "project_surge",
            None,
            f"proj-{project}",
            sim.day_start(window[0]),
            sim.day_start(window[-1] + 1),
        )
    )
    return True


def plant(ed: Editor) -> None:
    """Every twin: per contractor first, then the team, then the project-wide ones."""
    sim, rng = ed.sim, ed.rng
    n = sim.n_contractors
    pool = ed.clean()
    for twin, share in ((catch_up, TWIN_CATCH_UP_SHARE), (reassignment, TWIN_REASSIGN_SHARE)):
        wanted, done = max(1, round(n * share)), 0
        for person in pool:
            if done == wanted:
                break
            if person.key not in ed.busy and twin(ed, person):
                ed.busy.add(person.key)
                done += 1
    schedule_change(ed)
    # Projects with people on them (and free of other cases) halfway through.
    middle = (sim.warmup + sim.days) // 2
    staffed = [
        p
        for p in sorted(sim.projects)
        if len({c.key for d in range(middle - 3, middle + 3) for c in _on_project(ed, p, d)}) >= 3
    ]
    projects = rng.sample(staffed, min(2, len(staffed)))
    if projects:
        page_size_increase(ed, projects[0])
    if len(projects) > 1:
        project_surge(ed, projects[1])
