"""The five held-out attack families, planted by editing day plans.

Every attack is modest on purpose and sized against the victim's own history (the median
records of their working days so far, measured on the rendered log when the attack day
is rendered: `DayPlan.size`), never against a detector: volumes stay near the person's
normal day, hours and addresses stay theirs. Victims are people with no individual
benign case, who joined before the log began; attack days avoid their project's deadline
surges, page-size changes, and the first and last day of the log (whose local days
straddle the log's edges).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from gateway.anomaly.heldout.behaviour import (
    DayPlan,
    Plans,
    make_plan,
    refusal,
    spread_times,
    usual_records,
    working_days,
)
from gateway.anomaly.heldout.population import Person, Vendor, World, stream

HELDOUT_FAMILIES = (
    "denial_trickle",
    "project_drift",
    "odd_days",
    "request_inflation",
    "vendor_creep",
)


@dataclass
class PendingLabel:
    """A label whose start and end come from the rendered requests it marks."""

    family: str
    contractor: str
    members: dict[str, list[int]]  # contractor key -> local days attacked
    details: dict[str, Any] = field(default_factory=dict)


def _clean(world: World, plan: DayPlan | None, person: Person) -> bool:
    if plan is None or plan.short or plan.attack is not None:
        return False
    if not world.warmup_days + 1 <= plan.day <= world.days - 2:
        return False
    if plan.day in person.volume:
        return False
    # After a team's change of hours, week or page size, "usual" is ambiguous.
    day = plan.day
    if (
        person.page_size[day] != person.page_size[0]
        or person.start_hour[day] != person.start_hour[0]
        or person.week[day] != person.week[0]
    ):
        return False
    return not any(plan.day in world.surge_days.get(q, ()) for q, _ in plan.mix)


def _steady(person: Person, plans: Plans, before: int) -> bool:
    """Whether this person's daily records follow their work closely enough for a
    change of 20-35% to be meaningful: listing users receive whole pages, so a page
    large against their day (or tasks alternating between listing and single fetches)
    makes their daily total jump by itself."""
    if person.mode == "mixed":
        return False
    usual = usual_records(person, plans[person.index], before)
    return person.mode == "single" or person.page_size[0] * 8 <= usual


def _run(
    world: World, plans: Plans, person: Person, length: int, rng: random.Random
) -> list[int] | None:
    """`length` consecutive working days of this person, all clean."""
    row = plans[person.index]
    days = working_days(row)
    starts = [
        i
        for i in range(len(days) - length + 1)
        if all(_clean(world, row[d], person) for d in days[i : i + length])
    ]
    if not starts:
        return None
    i = rng.choice(starts)
    return days[i : i + length]


def _trickle(world: World, plans: Plans, person: Person, rng: random.Random) -> PendingLabel | None:
    row = plans[person.index]
    run = _run(world, plans, person, rng.choice((1, 2)), rng)
    if run is None:
        return None
    first = row[run[0]]
    assert first is not None
    closed = [q for q in world.projects if not world.granted(person, q, first.intervals[0][0])]
    if not closed:
        return None
    targets = rng.sample(closed, min(len(closed), rng.randint(1, 3)))
    total = rng.randint(6, 15)
    counts = [total] if len(run) == 1 else [rng.randint(3, total - 3)]
    if len(run) == 2:
        counts.append(total - counts[0])
    for day, count in zip(run, counts, strict=True):
        plan = row[day]
        assert plan is not None
        times = spread_times(plan.intervals, count, rng, per_hour=3)
        # The day's chance refusals are dropped, so the label holds exactly the trickle.
        plan.denials = [refusal(world, person, ts, rng, targets) for ts in times]
        plan.attack = "trickle"
    return PendingLabel(
        "denial_trickle",
        person.key,
        {person.key: run},
        {"refusals": total, "projects": targets, "days": run},
    )


def _drift(world: World, plans: Plans, person: Person, rng: random.Random) -> PendingLabel | None:
    row = plans[person.index]
    glanced = {p.glance[0] for p in row if p is not None and p.glance is not None}
    spare = sorted(
        world.vendor_projects(person.vendor) - person.projects_until(world.days - 1) - glanced
    )
    if not spare:
        return None
    run = _run(world, plans, person, rng.randint(3, 5), rng)
    if run is None or not _steady(person, plans, run[0]):
        return None
    project = rng.choice(spare)
    shares = []
    for day in run:
        plan = row[day]
        assert plan is not None
        share = rng.uniform(0.3, 0.6)
        shares.append(round(share, 3))
        # The day's total stays the person's usual one: the drift replaces own work.
        plan.size = rng.uniform(0.93, 1.07)
        plan.baseline = run[0]
        plan.drift = (project, share, rng.uniform(0.0, 0.05))
        plan.glance = None
        plan.attack = "drift"
    return PendingLabel(
        "project_drift",
        person.key,
        {person.key: run},
        {
            "project": project,
            "own_projects": sorted(person.projects_until(world.days - 1)),
            "shares": shares,
            "days": run,
        },
    )


def _odd_days(
    world: World, plans: Plans, person: Person, rng: random.Random
) -> PendingLabel | None:
    if person.key in world.odd_exclude or person.habit:
        return None
    # Someone whose evening runs past local midnight already shows up on the next
    # weekday; keep the victims to people whose days stay within their calendar day.
    gap = 5.0 if person.split else 1.0
    if max(person.start_hour) + person.shift_hours + gap + 2.2 >= 24.0:
        return None
    row = plans[person.index]

    def history(before: int) -> set[int]:
        return {p.day % 7 for p in row[:before] if p is not None}

    def free(day: int, seen: set[int]) -> bool:
        return (
            row[day] is None
            and day % 7 not in seen
            and day not in person.absent
            and day not in person.vendor.holidays
            and not any(day in world.surge_days.get(q, ()) for q, _ in person.mix[day])
        )

    firsts = [d for d in range(world.warmup_days + 1, world.days - 1) if free(d, history(d))]
    if not firsts:
        return None
    first = rng.choice(firsts)
    if not _steady(person, plans, first):
        return None
    seen = history(first)
    wanted = rng.randint(1, 3)
    later = [d for d in range(first + 1, min(first + 9, world.days - 1)) if free(d, seen)]
    days = sorted([first, *rng.sample(later, min(len(later), wanted - 1))])
    plan_rng = stream(world.seed, "odd", person.key)
    for day in days:
        plan = make_plan(world, person, day, plan_rng, quiet=True)
        plan.size = math.exp(max(-0.2, min(0.2, rng.gauss(0.0, 0.08))))
        plan.baseline = days[0]
        plan.attack = "odd"
        row[day] = plan
    return PendingLabel(
        "odd_days",
        person.key,
        {person.key: days},
        {
            "days": days,
            "weekdays": [d % 7 for d in days],
            "usual_weekdays": sorted(seen),
        },
    )


def _inflation(
    world: World, plans: Plans, person: Person, rng: random.Random
) -> PendingLabel | None:
    if person.mode != "listing" or len(set(person.page_size)) > 1:
        return None
    if person.projects_until(world.days - 1) & world.tool_projects:
        return None
    run = _run(world, plans, person, rng.randint(2, 5), rng)
    if run is None:
        return None
    size = person.page_size[0]
    returned = max(math.ceil(size * 1.3), round(size * rng.uniform(1.3, 1.8)))
    for day in run:
        plan = plans[person.index][day]
        assert plan is not None
        plan.page_returned = returned
        # A usual day's work (so a usual number of requests); each page just carries more.
        plan.size = rng.uniform(0.9, 1.1)
        plan.baseline = run[0]
        plan.attack = "inflation"
    return PendingLabel(
        "request_inflation",
        person.key,
        {person.key: run},
        {
            "page_size": size,
            "returned": returned,
            "factor": round(returned / size, 3),
            "project": person.mix[run[0]][0][0],
            "days": run,
        },
    )


def _vendor_days(world: World, vendor: Vendor) -> list[int]:
    return [
        d
        for d in range(world.warmup_days + 1, world.days - 1)
        if d % 7 in vendor.week and d not in vendor.holidays
    ]


def _creep(
    world: World, plans: Plans, vendor: Vendor, pool: list[Person], rng: random.Random
) -> PendingLabel | None:
    staff = [p for p in world.people if p.vendor is vendor and p.join_day == 0]
    least = max(2, math.ceil(0.4 * len(staff)))
    most = math.floor(0.7 * len(staff))
    if len(staff) < 4 or len(pool) < least:
        return None
    wanted = max(least, min(most, round(rng.uniform(0.4, 0.7) * len(staff))))
    projects = {q for p in staff for q, _ in p.mix[0]}
    days = _vendor_days(world, vendor)
    surging = set().union(*(world.surge_days.get(q, set()) for q in projects))
    window: list[int] = []
    # A short scored period may not hold a long window: fall back to shorter ones.
    for length in range(rng.randint(4, 7), 3, -1):
        # Consecutive vendor working days (a weekend or a holiday may fall between),
        # none in a deadline surge of the vendor's projects.
        starts = [
            i
            for i in range(len(days) - length + 1)
            if days[i + length - 1] - days[i] <= length + 3
            and not surging.intersection(days[i : i + length])
        ]
        if starts:
            i = rng.choice(starts)
            window = days[i : i + length]
            break
    if not window:
        return None
    members: dict[str, list[int]] = {}
    chosen: list[Person] = []
    for person in rng.sample(pool, len(pool)):
        if len(members) == wanted:
            break
        row = plans[person.index]
        mine = [d for d in range(window[0], window[-1] + 1) if _clean(world, row[d], person)]
        # At least three days each, so that a page more or less on one day (for
        # listing users) does not decide how much they crept.
        if len(mine) >= 3 and _steady(person, plans, window[0]):
            members[person.key] = mine
            chosen.append(person)
    if len(members) < least:
        return None
    factors: dict[str, float] = {}
    for person in chosen:
        row = plans[person.index]
        factor = rng.uniform(1.2, 1.35)
        factors[person.key] = round(factor, 3)
        for day in members[person.key]:
            plan = row[day]
            assert plan is not None
            plan.size = min(1.4, factor * rng.uniform(0.97, 1.03))
            plan.baseline = members[person.key][0]
            # The extra records are read, not worked: annotations stay at a usual count.
            plan.keep_annotations = True
            plan.attack = "creep"
    return PendingLabel(
        "vendor_creep",
        vendor.vendor_key,
        members,
        {
            "vendor": vendor.name,
            "contractors": sorted(members),
            "member_days": members,
            "factors": factors,
            "share_of_vendor": round(len(members) / len(staff), 3),
            "days": window,
            "projects": sorted(projects),
        },
    )


def plant_attacks(world: World, plans: Plans) -> list[PendingLabel]:
    rng = stream(world.seed, "attacks")
    per_family = max(1, min(4, round(len(world.people) / 50)))
    eligible = [p for p in world.people if p.join_day == 0 and p.key not in world.involved]
    attacked: set[str] = set()
    labels: list[PendingLabel] = []
    creeps = 1 if per_family < 3 else rng.choice((1, 2))
    vendors = rng.sample(world.vendors, len(world.vendors))
    for vendor in vendors:
        if creeps == 0:
            break
        pool = [p for p in eligible if p.vendor is vendor and p.key not in attacked]
        label = _creep(world, plans, vendor, pool, rng)
        if label is not None:
            labels.append(label)
            attacked.update(label.members)
            creeps -= 1
    # The most constrained families choose first.
    for plant in (_drift, _inflation, _odd_days, _trickle):
        planted = 0
        candidates = [p for p in eligible if p.key not in attacked]
        rng.shuffle(candidates)
        for person in candidates:
            if planted == per_family:
                break
            label = plant(world, plans, person, rng)
            if label is not None:
                labels.append(label)
                attacked.add(person.key)
                planted += 1
    return labels
