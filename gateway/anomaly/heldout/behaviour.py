"""Day plans: for each contractor and local day, whether and when they work, how much,
on what, from where, and which refusals they run into.

A plan fixes everything about a day except the exact requests, which `render` draws
from it. Attacks edit plans (never the people), so one contractor's attack cannot shift
anyone else's benign behaviour.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import NamedTuple

from gateway.anomaly.heldout.population import HOUR, Person, World, public_ip, stream


class Denial(NamedTuple):
    ts: float
    project: str
    task: str | None
    path: str


@dataclass(slots=True)
class DayPlan:
    day: int
    units: int  # records worked (read and mostly annotated) on a usual day
    intervals: list[tuple[float, float]]  # working periods, epoch seconds
    ip: str
    mobile: tuple[float, float, str] | None  # (from, to, address) away from desk
    mix: tuple[tuple[str, float], ...]  # project -> share of the day's work
    page_size: int
    agent: str
    annotate_frac: float
    denials: list[Denial]
    short: bool = False  # a habitual weekend half-day
    stale: tuple[str, int] | None = None  # (old project, refusals) after a move
    glance: tuple[str, int] | None = None  # (project, records) looked up elsewhere
    # Attack hooks (None / unset on benign days).
    drift: tuple[str, float, float] | None = None  # (project, share, annotate frac)
    page_returned: int | None = None  # records a listing request returns instead
    attack: str | None = None
    # The day's records as a multiple of the person's usual day, measured on what they
    # received so far when the day is rendered (`usual` keeps that measure).
    size: float | None = None
    baseline: int = 0  # the history is the days before this one (the attack's first)
    keep_annotations: bool = False  # extra records are read only, not annotated
    usual: float | None = None
    target: float | None = None  # records aimed at, when the day is sized on records


Plans = list[list[DayPlan | None]]


def _at_offset(intervals: list[tuple[float, float]], offset: float) -> float:
    for a, b in intervals:
        if offset < b - a:
            return a + offset
        offset -= b - a
    a, b = intervals[-1]
    return b


def uniform_time(intervals: list[tuple[float, float]], rng: random.Random) -> float:
    total = sum(b - a for a, b in intervals)
    return _at_offset(intervals, rng.uniform(0.0, total))


def spread_times(
    intervals: list[tuple[float, float]], count: int, rng: random.Random, per_hour: int
) -> list[float]:
    """`count` times over the working periods, at most `per_hour` in any clock hour."""
    used: dict[int, int] = {}
    out: list[float] = []
    for _ in range(count * 200):
        if len(out) == count:
            break
        ts = uniform_time(intervals, rng)
        hour = int(ts // HOUR)
        if used.get(hour, 0) < per_hour:
            used[hour] = used.get(hour, 0) + 1
            out.append(ts)
    return sorted(out)


def refusal(
    world: World,
    person: Person,
    ts: float,
    rng: random.Random,
    targets: list[str] | None = None,
) -> Denial:
    """A request the policy refuses: a project neither the person nor their vendor holds."""
    if targets is None:
        targets = [q for q in world.projects if not world.granted(person, q, ts)]
    if targets:
        project = rng.choice(targets)
    else:
        # Everything is granted: a mistyped project name in a hand-edited link.
        own = person.mix[0][0][0]
        project = own[:-1] if len(own) > 5 else own + "s"
    r = rng.random()
    if r < 0.2:
        return Denial(ts, project, None, f"/api/projects/{project}/tasks")
    task = f"t{rng.randint(1, 40):04d}"
    base = f"/api/projects/{project}/tasks/{task}/records"
    if r < 0.5:
        return Denial(ts, project, task, f"{base}?page={rng.randint(1, 20)}")
    return Denial(ts, project, task, f"{base}/r-{project}-{task}-{rng.randint(1, 900):05d}")


def intervals_for(
    world: World, person: Person, day: int, rng: random.Random, short: bool
) -> list[tuple[float, float]]:
    jitter = person.start_jitter
    start = person.start_hour[day] + max(-1.2, min(1.2, rng.gauss(0.0, jitter)))
    if short:
        spans = [(start, start + rng.uniform(2.5, 4.5))]
    else:
        length = person.shift_hours + max(-1.0, min(1.0, rng.gauss(0.0, 0.4)))
        if person.split:
            first = length * rng.uniform(0.45, 0.6)
            gap = rng.uniform(3.0, 5.0)
            spans = [(start, start + first), (start + first + gap, start + length + gap)]
        elif length > 5.0:
            noon = start + length * rng.uniform(0.4, 0.6)
            lunch = rng.uniform(0.5, 1.0)
            spans = [(start, noon), (noon + lunch, start + length + lunch)]
        else:
            spans = [(start, start + length)]
    return [(world.at(person, day, a), world.at(person, day, b)) for a, b in spans]


def make_plan(
    world: World,
    person: Person,
    day: int,
    rng: random.Random,
    *,
    short: bool = False,
    units: int | None = None,
    quiet: bool = False,
) -> DayPlan:
    """One day's plan; `units` overrides the volume, `quiet` leaves out the day's chance
    refusals and look-ups (attack days, whose properties should stay crisp)."""
    intervals = intervals_for(world, person, day, rng, short)
    if units is None:
        volume = person.base_units * math.exp(rng.gauss(0.0, person.day_sigma))
        volume *= person.volume.get(day, 1.0)
        if short:
            volume *= rng.uniform(0.3, 0.6)
        units = max(5, round(volume))
    ip = person.vendor.office_ip if rng.random() < person.office_prob else person.home_ip
    mobile = None
    if rng.random() < 0.03:
        a, b = rng.choice(intervals)
        length = min(b - a, rng.uniform(0.5, 2.0) * HOUR)
        at = rng.uniform(a, b - length)
        mobile = (at, at + length, public_ip(rng, carrier=True))
    denials: list[Denial] = []
    glance = None
    if not quiet:
        if rng.random() < 0.1:
            count = 1 if rng.random() < 0.65 else 2
            denials = [
                refusal(world, person, uniform_time(intervals, rng), rng) for _ in range(count)
            ]
        spare = sorted(world.vendor_projects(person.vendor) - {q for q, _ in person.mix[day]})
        if spare and rng.random() < 0.015:
            glance = (rng.choice(spare), rng.randint(1, 4))
    return DayPlan(
        day=day,
        units=units,
        intervals=intervals,
        ip=ip,
        mobile=mobile,
        mix=person.mix[day],
        page_size=person.page_size[day],
        agent=person.agent.format(v=person.version[day]),
        annotate_frac=person.annotate_frac,
        denials=denials,
        short=short,
        glance=glance,
    )


def build_plans(world: World) -> Plans:
    plans: Plans = []
    for person in world.people:
        rng = stream(world.seed, "plan", person.key)
        # A weekend habit shows early: the first such day is always worked.
        forced = set()
        for weekday in person.habit:
            first = person.join_day + (weekday - person.join_day) % 7
            forced.add(first)
        row: list[DayPlan | None] = []
        for day in range(world.days):
            plan = None
            if person.scheduled(day):
                plan = make_plan(world, person, day, rng)
            elif (
                day >= person.join_day
                and day % 7 in person.habit
                and day % 7 not in person.week[day]
                and day not in person.absent
                and day not in person.vendor.holidays
                and (day in forced or rng.random() < 0.35)
            ):
                plan = make_plan(world, person, day, rng, short=True)
            row.append(plan)
        moved = world.stale.get(person.key)
        if moved is not None:
            old, first = moved
            after = [p for p in row[first + 1 :] if p is not None]
            if after:
                after[0].stale = (old, rng.randint(2, 6))
        plans.append(row)
    return plans


def working_days(row: list[DayPlan | None]) -> list[int]:
    """Full working days (habitual weekend half-days aside)."""
    return [p.day for p in row if p is not None and not p.short]


def _listing_share(person: Person) -> float:
    return {"single": 0.0, "listing": 1.0}.get(person.mode, 0.5)


def expected_records(person: Person, plan: DayPlan) -> float:
    """Records a plan should deliver, on average: a listing user receives whole pages, so
    besides the records worked they receive about a page a day more (the tail of the last
    page, and this morning's re-listing of yesterday's page); drift reads are single
    fetches."""
    listing = _listing_share(person)
    drift = plan.units * plan.drift[1] if plan.drift is not None else 0.0
    own = plan.units - drift
    return own * (1.0 + listing * person.open_frac) + listing * plan.page_size + drift


def units_for(person: Person, plan: DayPlan, records: float, drift_share: float = 0.0) -> int:
    """The inverse of `expected_records`: units that deliver `records` on this plan."""
    listing = _listing_share(person)
    per_unit = (1.0 - drift_share) * (1.0 + listing * person.open_frac) + drift_share
    return max(5, round((records - listing * plan.page_size) / per_unit))


def usual_records(person: Person, row: list[DayPlan | None], before: int) -> float:
    """The contractor's usual day so far: the median records of their working days."""
    records = [expected_records(person, p) for p in row[:before] if p is not None and not p.short]
    return float(statistics.median(records)) if records else 0.0
