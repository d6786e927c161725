"""The held-out world: vendors, projects, contractors and the grants in force at the start.

This generator is written from the behaviour specification alone, independently of the
detectors and of the main simulator, so that it can judge them honestly. Everything here
is static or changes only through explicit per-day schedules (`Person.week`,
`Person.start_hour`, ...) that the benign plantings edit from some day on.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.anomaly.data import PolicyGrant
from gateway.anomaly.simulate import BenignCase

DAY = 86400.0
HOUR = 3600.0
# A Monday, so that day d of the log is weekday d % 7 (Monday = 0) everywhere.
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()

MON_FRI = frozenset({0, 1, 2, 3, 4})
SUN_THU = frozenset({6, 0, 1, 2, 3})
PAGE_SIZES = (10, 20, 25, 50)

# (name, UTC offset in hours, usual working week): spread over the world, one with a
# half-hour offset and one with a Sunday-Thursday week, so that "Monday to Friday, 9 to
# 5, UTC" is never a safe assumption.
_VENDORS = (
    ("kestrel", -7.0, MON_FRI),
    ("tidewater", -3.0, MON_FRI),
    ("ostrava", 1.0, MON_FRI),
    ("qamar", 3.0, SUN_THU),
    ("lotus", 5.5, MON_FRI),
    ("sampaguita", 8.0, MON_FRI),
    ("condor", -5.0, MON_FRI),
    ("baobab", 2.0, MON_FRI),
    ("mekong", 7.0, MON_FRI),
    ("sakura", 9.0, MON_FRI),
    ("prairie", -6.0, MON_FRI),
    ("thames", 0.0, MON_FRI),
)
_PROJECTS = (
    "atlas",
    "borealis",
    "cobalt",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "iris",
    "juniper",
    "kelp",
    "lumen",
    "magnet",
    "nimbus",
)
_AGENTS = (
    "LabelDesk/{v} (Windows NT 10.0; Win64; x64)",
    "LabelDesk/{v} (Macintosh; Intel Mac OS X 14_4)",
    "LabelDesk/{v} (X11; Ubuntu; Linux x86_64)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 LabelDesk-web/{v}",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1 LabelDesk-web/{v}",
)
CLIENT_VERSIONS = ("4.2.0", "4.2.1", "4.3.0")
UPDATED_VERSION = "4.4.0"
# Public-looking first octets; private and reserved ranges are avoided on purpose so the
# addresses look like real ISP and carrier space.
_ISP_OCTETS = (24, 31, 37, 41, 49, 58, 71, 82, 88, 93, 101, 112, 122, 175, 186, 190, 201)
_CARRIER_OCTETS = (39, 42, 100, 106, 117, 166, 172, 174, 197, 223)


def stream(seed: int, *parts: object) -> random.Random:
    """An independent random stream per purpose, so that planting one thing never shifts
    the draws of another (string seeds are hashed deterministically)."""
    return random.Random(":".join(["heldout", str(seed), *map(str, parts)]))


def public_ip(rng: random.Random, carrier: bool = False) -> str:
    first = rng.choice(_CARRIER_OCTETS if carrier else _ISP_OCTETS)
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


@dataclass
class Vendor:
    name: str
    tz: float
    office_ip: str
    week: frozenset[int]
    projects: list[str] = field(default_factory=list)
    holidays: set[int] = field(default_factory=set)

    @property
    def issuer(self) -> str:
        return f"{self.name}-idp"

    @property
    def vendor_key(self) -> str:
        return f"vendor:{self.name}"


@dataclass
class Person:
    index: int
    subject: str
    vendor: Vendor
    join_day: int
    home_ip: str
    office_prob: float
    agent: str  # user agent template, {v} = client version
    mode: str  # "single", "listing" or "mixed" (per task)
    open_frac: float  # listing users: share of listed records also opened one by one
    annotate_frac: float
    reviewer: bool
    base_units: float  # records worked on a usual day
    day_sigma: float  # day-to-day spread of the volume (log scale)
    start_jitter: float  # hours
    shift_hours: float
    split: bool
    habit: frozenset[int]  # weekdays outside the week worked now and then, as a habit
    # Per-day schedules, indexed by day; benign plantings rewrite them from some day on.
    week: list[frozenset[int]]
    start_hour: list[float]
    mix: list[tuple[tuple[str, float], ...]]
    page_size: list[int]
    version: list[str]
    absent: set[int] = field(default_factory=set)
    volume: dict[int, float] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.vendor.issuer

    @property
    def key(self) -> str:
        return f"{self.issuer}:{self.subject}"

    @property
    def tz(self) -> float:
        return self.vendor.tz

    def projects_until(self, day: int) -> set[str]:
        """Every project this person worked on in days [0, day]."""
        return {p for d in range(min(day + 1, len(self.mix))) for p, _ in self.mix[d]}

    def scheduled(self, day: int) -> bool:
        """Whether `day` is one of this person's usual working days (absences aside)."""
        return (
            day >= self.join_day
            and day % 7 in self.week[day]
            and day not in self.vendor.holidays
            and day not in self.absent
        )


@dataclass
class PendingGrant:
    """A grant whose time depends on the day's plan: a few hours before the first access."""

    key: str
    project: str
    day: int


@dataclass
class World:
    seed: int
    days: int
    warmup_days: int
    start: float
    vendors: list[Vendor]
    projects: list[str]
    people: list[Person]
    grants: list[PolicyGrant]
    benign: list[BenignCase] = field(default_factory=list)
    pending_grants: list[PendingGrant] = field(default_factory=list)
    # Bookkeeping the attack planting needs to keep labels clean of benign confounders.
    involved: set[str] = field(default_factory=set)  # individual benign cases
    odd_exclude: set[str] = field(default_factory=set)  # teams whose week changed
    tool_projects: set[str] = field(default_factory=set)
    surge_days: dict[str, set[int]] = field(default_factory=dict)
    stale: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (old, day)
    _grant_index: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.days * DAY

    def by_key(self) -> dict[str, Person]:
        return {p.key: p for p in self.people}

    def at(self, person: Person, day: int, hour: float) -> float:
        """Epoch seconds of a local hour on a local day of this person."""
        return self.start + day * DAY + (hour - person.tz) * HOUR

    def local_day(self, person: Person, ts: float) -> int:
        return math.floor((ts - self.start + person.tz * HOUR) / DAY)

    def add_grant(self, grant: PolicyGrant) -> None:
        self.grants.append(grant)
        index = (grant.subject, grant.project)
        self._grant_index[index] = min(self._grant_index.get(index, math.inf), grant.ts)

    def granted(self, person: Person, project: str, ts: float) -> bool:
        for subject in (person.key, person.vendor.vendor_key):
            since = self._grant_index.get((subject, project))
            if since is not None and since <= ts:
                return True
        # Grants not yet timed count from the eve of their day: a refusal drawn before
        # they are resolved must never name a project the person is about to hold.
        return any(
            g.key == person.key and g.project == project and ts >= self.at(person, g.day - 1, 0)
            for g in self.pending_grants
        )

    def vendor_projects(self, vendor: Vendor) -> set[str]:
        """Projects granted to the whole vendor from the start."""
        return {
            g.project for g in self.grants if g.subject == vendor.vendor_key and g.ts < self.start
        }

    def local_bounds(self, people: list[Person], first: int, last: int) -> tuple[float, float]:
        """From the earliest local midnight of `first` to the latest end of `last`, clipped
        to the log."""
        lo = min(self.at(p, first, 0.0) for p in people)
        hi = max(self.at(p, last + 1, 0.0) for p in people) - 1.0
        return max(lo, self.start), min(hi, self.end - 1.0)


def _week_of(rng: random.Random, default: frozenset[int]) -> tuple[frozenset[int], bool]:
    """A personal weekly schedule; the flag says part-time."""
    r = rng.random()
    if r < 0.70:
        return default, False
    if r < 0.80:
        # Shifted by a day: Tue-Sat for a Mon-Fri vendor.
        return frozenset((d + 1) % 7 for d in default), False
    if r < 0.93:
        ordered = sorted(default)
        return frozenset(rng.sample(ordered, rng.choice((3, 3, 4)))), True
    return default, False


def _person(rng: random.Random, index: int, vendor: Vendor, join_day: int, days: int) -> Person:
    week, part_time = _week_of(rng, vendor.week)
    habit: frozenset[int] = frozenset()
    if not part_time and week == vendor.week and rng.random() < 0.2:
        off = sorted(set(range(7)) - week)
        habit = frozenset(rng.sample(off, rng.choice((1, 1, 2)) if len(off) > 1 else 1))
    r = rng.random()
    split = False
    if r < 0.12:
        start = rng.uniform(5.0, 7.0)
    elif r < 0.78:
        start = rng.uniform(7.5, 10.5)
    elif r < 0.90:
        start = rng.uniform(11.5, 15.0)
    else:
        start, split = rng.uniform(7.0, 9.5), True
    shift = rng.uniform(4.0, 7.0) if part_time else rng.uniform(6.5, 9.0)
    r = rng.random()
    if r < 0.3:
        office = rng.uniform(0.0, 0.15)
    elif r < 0.7:
        office = rng.uniform(0.35, 0.7)
    else:
        office = rng.uniform(0.85, 1.0)
    r = rng.random()
    mode = "single" if r < 0.35 else "listing" if r < 0.8 else "mixed"
    open_frac = 0.0 if mode == "single" or rng.random() < 0.5 else rng.uniform(0.05, 0.35)
    reviewer = rng.random() < 0.15
    annotate = rng.uniform(0.15, 0.5) if reviewer else rng.uniform(0.8, 0.98)
    # Paces differ a lot between people: log-normal around 170 records a day.
    base = min(420.0, max(60.0, 170.0 * math.exp(rng.gauss(0.0, 0.4))))
    page = rng.choices(PAGE_SIZES, weights=(0.2, 0.35, 0.25, 0.2))[0]
    projects = vendor.projects
    project = (
        projects[0]
        if len(projects) == 1
        else rng.choices(projects, weights=[2.0] + [1.0] * (len(projects) - 1))[0]
    )
    version = rng.choice(CLIENT_VERSIONS)
    return Person(
        index=index,
        subject=f"c{index:04d}",
        vendor=vendor,
        join_day=join_day,
        home_ip=public_ip(rng),
        office_prob=office,
        agent=rng.choice(_AGENTS),
        mode=mode,
        open_frac=open_frac,
        annotate_frac=annotate,
        reviewer=reviewer,
        base_units=base,
        day_sigma=rng.uniform(0.1, 0.25),
        start_jitter=rng.uniform(0.15, 0.5),
        shift_hours=shift,
        split=split,
        habit=habit,
        week=[week] * days,
        start_hour=[start] * days,
        mix=[((project, 1.0),)] * days,
        page_size=[page] * days,
        version=[version] * days,
    )


def build_population(
    seed: int, contractors: int, vendors: int, days: int, warmup_days: int
) -> World:
    if not 1 <= vendors <= len(_VENDORS):
        raise ValueError(f"vendors must be between 1 and {len(_VENDORS)}")
    if contractors < 2 * vendors:
        raise ValueError("need at least two contractors per vendor")
    if warmup_days < 5 or days < warmup_days + 7:
        raise ValueError("need a warm-up of at least 5 days and 7 scored days")
    rng = stream(seed, "population")
    names = [f"prj-{name}" for name in _PROJECTS[: min(len(_PROJECTS), max(3, vendors + 2))]]
    vendor_list = []
    for i, (name, tz, week) in enumerate(_VENDORS[:vendors]):
        vendor = Vendor(name, tz, public_ip(rng), week)
        # Each vendor has a main project (spread so projects are shared between vendors)
        # and sometimes one or two more.
        extra = rng.choices((0, 1, 2), weights=(0.45, 0.4, 0.15))[0]
        others = [p for p in names if p != names[i % len(names)]]
        vendor.projects = [names[i % len(names)], *rng.sample(others, extra)]
        vendor_list.append(vendor)
    joiners = max(1, min(4, round(contractors * 0.02)))
    weights = [rng.uniform(0.6, 1.4) for _ in vendor_list]
    assignment = list(range(len(vendor_list))) * 2
    assignment += rng.choices(range(len(vendor_list)), weights, k=contractors - len(assignment))
    rng.shuffle(assignment)
    people = []
    for index, v in enumerate(assignment):
        join = 0
        if index >= contractors - joiners:
            join = rng.randint(max(1, warmup_days - 3), days - 8)
        people.append(_person(rng, index, vendor_list[v], join, days))
    world = World(seed, days, warmup_days, START, vendor_list, names, people, [])
    initial = START - DAY
    for vendor in vendor_list:
        members = [p for p in people if p.vendor is vendor and p.join_day == 0]
        for project in vendor.projects:
            if rng.random() < 0.45:
                world.add_grant(PolicyGrant(initial, vendor.vendor_key, project))
            else:
                for p in members:
                    if p.mix[0][0][0] == project:
                        world.add_grant(PolicyGrant(initial, p.key, project))
        # Reference access: projects the vendor may read but does not work on.
        spare = [p for p in names if p not in vendor.projects]
        for _ in range(1 + (rng.random() < 0.3)):
            if spare and rng.random() < 0.85:
                project = spare.pop(rng.randrange(len(spare)))
                world.add_grant(PolicyGrant(initial, vendor.vendor_key, project))
    return world
