"""Hard benign variety: the changes a fair detector must take in its stride.

Each planting edits the per-day schedules of the people it touches from some day on and
records a `BenignCase`. Group-level cases (vendor holidays, team shift changes, tool
updates, deadline surges) are planted first; individual cases (start-hour shifts,
reassignments, holidays with catch-up days, new joiners) then go to distinct people, who
are kept out of the attacks so that labels stay clean.
"""

from __future__ import annotations

import random

from gateway.anomaly.heldout.population import (
    UPDATED_VERSION,
    PendingGrant,
    Person,
    World,
    stream,
)
from gateway.anomaly.simulate import BenignCase


def _scaled(world: World, frac: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(len(world.people) * frac)))


def _case(
    world: World,
    kind: str,
    who: str | None,
    project: str | None,
    people: list[Person],
    first: int,
    last: int,
) -> None:
    start, end = world.local_bounds(people, first, last)
    world.benign.append(BenignCase(kind, who, project, start, end))


def _on_project(world: World, project: str, day: int) -> list[Person]:
    return [
        p for p in world.people if p.join_day <= day and any(q == project for q, _ in p.mix[day])
    ]


def _vendor_holidays(world: World, rng: random.Random) -> None:
    w, d = world.warmup_days, world.days
    for vendor in rng.sample(world.vendors, min(2, len(world.vendors))):
        day = rng.choice([x for x in range(w, d - 1) if x % 7 in vendor.week])
        vendor.holidays.add(day)
        members = [p for p in world.people if p.vendor is vendor]
        _case(world, "vendor_holiday", vendor.vendor_key, None, members, day, day)


def _team_changes(world: World, rng: random.Random) -> None:
    teams: dict[tuple[str, str], list[Person]] = {}
    for p in world.people:
        if p.join_day == 0:
            teams.setdefault((p.vendor.name, p.mix[0][0][0]), []).append(p)
    ranked = sorted(teams.items(), key=lambda item: (len(item[1]) < 3, item[0]))
    big = [t for t in ranked if len(t[1]) >= 2]
    chosen = rng.sample(big[: max(2, len(big) // 2)], min(2, len(big)))
    for n, ((_, project), members) in enumerate(chosen):
        first = rng.randint(world.warmup_days, world.days - 6)
        if n == 0:
            # A new weekly schedule for the whole team, e.g. Mon-Fri to Tue-Sat.
            for p in members:
                for day in range(first, world.days):
                    p.week[day] = frozenset((x + 1) % 7 for x in p.week[day])
                world.odd_exclude.add(p.key)
        else:
            delta = rng.choice((-3.0, -2.0, 2.0, 3.0))
            for p in members:
                for day in range(first, world.days):
                    p.start_hour[day] = min(16.0, max(4.5, p.start_hour[day] + delta))
        _case(world, "team_shift_change", None, project, members, first, world.days - 1)


def _tool_update(world: World, rng: random.Random) -> None:
    first = rng.randint(world.warmup_days, world.days - 6)
    listing: dict[str, int] = {}
    for p in world.people:
        if p.mode != "single":
            for project, _ in p.mix[first]:
                listing[project] = listing.get(project, 0) + 1
    if not listing:
        return
    # The project with most listing users, so the update is visible.
    project = max(sorted(listing), key=lambda q: listing[q])
    members = _on_project(world, project, first)
    for p in members:
        for day in range(first, world.days):
            p.page_size[day] = min(100, p.page_size[day] * 2)
            p.version[day] = UPDATED_VERSION
    world.tool_projects.add(project)
    _case(world, "tool_update", None, project, members, first, world.days - 1)


def _surges(world: World, rng: random.Random) -> None:
    worked = sorted({q for p in world.people for q, _ in p.mix[0]})
    for project in rng.sample(worked, min(2, len(worked))):
        first = rng.randint(world.warmup_days, world.days - 6)
        days = list(range(first, first + rng.randint(3, 5)))
        factor = rng.uniform(1.2, 1.5)
        members = _on_project(world, project, first)
        for p in members:
            for day in days:
                mine = min(1.5, max(1.2, factor * rng.uniform(0.95, 1.05)))
                p.volume[day] = p.volume.get(day, 1.0) * mine
        world.surge_days.setdefault(project, set()).update(days)
        _case(world, "deadline_surge", None, project, members, days[0], days[-1])


def _scheduled_days(p: Person, first: int, last: int) -> list[int]:
    return [d for d in range(first, last + 1) if p.scheduled(d)]


def _start_shifts(world: World, rng: random.Random, people: list[Person]) -> None:
    for p in people:
        first = rng.randint(world.warmup_days - 2, world.days - 6)
        delta = rng.choice((-3.0, -2.5, -2.0, -1.5, -1.0, 1.0, 1.5, 2.0, 2.5, 3.0))
        for day in range(first, world.days):
            p.start_hour[day] = min(16.5, max(4.5, p.start_hour[day] + delta))
        _case(world, "start_shift", p.key, None, [p], first, world.days - 1)


def _reassignments(world: World, rng: random.Random, people: list[Person]) -> None:
    worked = {q for p in world.people for q, _ in p.mix[0]}
    for n, p in enumerate(people):
        old = p.mix[0][0][0]
        fresh = [q for q in world.projects if q != old and not world.granted(p, q, world.end)]
        if not fresh:
            continue
        staffed = [q for q in fresh if q in worked]
        new = rng.choice(staffed or fresh)
        days = _scheduled_days(p, world.warmup_days, world.days - 5)
        if not days:
            continue
        first = rng.choice(days)
        full = n % 2 == 0
        if full:
            mix: tuple[tuple[str, float], ...] = ((new, 1.0),)
            # The old grant is withdrawn with the move: yesterday's links now fail.
            world.stale[p.key] = (old, first)
        else:
            keep = rng.uniform(0.3, 0.6)
            mix = ((old, keep), (new, 1.0 - keep))
        for day in range(first, world.days):
            p.mix[day] = mix
        # The first day after a move goes to the new project (getting to know it), so the
        # grant is announced shortly before the first access to it.
        p.mix[first] = ((new, 1.0),)
        world.pending_grants.append(PendingGrant(p.key, new, first))
        _case(world, "reassignment", p.key, new, [p], first, world.days - 1)


def _holidays(world: World, rng: random.Random, people: list[Person]) -> None:
    caught_up = 0
    for n, p in enumerate(people):
        length = rng.randint(1, 10)
        # Back at work a few days before the log ends, so the return (and any catch-up)
        # is seen.
        latest = max(world.warmup_days - 3, world.days - length - 4)
        first = rng.randint(world.warmup_days - 3, latest)
        last = min(world.days - 1, first + length - 1)
        p.absent.update(range(first, last + 1))
        _case(world, "holiday", p.key, None, [p], first, last)
        back = _scheduled_days(p, last + 1, world.days - 1)[: rng.choice((1, 2))]
        # Most people catch up after an absence; make sure the kind always appears.
        wants = rng.random() < 0.65 or (caught_up == 0 and n == len(people) - 1)
        if back and wants:
            for day in back:
                p.volume[day] = p.volume.get(day, 1.0) * rng.uniform(1.5, 2.5)
            _case(world, "catch_up", p.key, None, [p], back[0], back[-1])
            caught_up += 1


def _joiners(world: World, rng: random.Random) -> None:
    for p in world.people:
        if p.join_day == 0:
            continue
        ramp = _scheduled_days(p, p.join_day, world.days - 1)[: rng.randint(3, 5)]
        for i, day in enumerate(ramp):
            p.volume[day] = 0.3 + 0.7 * i / len(ramp)
        project = p.mix[p.join_day][0][0]
        world.pending_grants.append(PendingGrant(p.key, project, p.join_day))
        world.involved.add(p.key)
        last = ramp[-1] if ramp else p.join_day
        _case(world, "new_contractor", p.key, project, [p], p.join_day, last)


def plant_benign(world: World) -> None:
    rng = stream(world.seed, "benign")
    _vendor_holidays(world, rng)
    _team_changes(world, rng)
    _tool_update(world, rng)
    _surges(world, rng)
    pool = [p for p in world.people if p.join_day == 0]
    rng.shuffle(pool)
    counts = (
        _scaled(world, 0.02, 1, 4),  # start-hour shifts
        _scaled(world, 0.02, 2, 4),  # reassignments
        _scaled(world, 0.04, 2, 8),  # holidays
    )
    groups = []
    for count in counts:
        groups.append(pool[:count])
        pool = pool[count:]
    for group in groups:
        world.involved.update(p.key for p in group)
    _start_shifts(world, rng, groups[0])
    _reassignments(world, rng, groups[1])
    _holidays(world, rng, groups[2])
    _joiners(world, rng)
