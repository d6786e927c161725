"""What the weak signals compare a contractor-day with: the contractor's own days, the
team's, everyone's, and the policy grants (see signals.py)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from gateway.anomaly.data import Day
from gateway.anomaly.detectors.common import Context, Peers

# A first-time departure is judged against this many past occurrences at least.
MIN_WEEKDAY_OCCURRENCES = 2


@dataclass
class History:
    """The contractor's own active days before the scored day, within `history_days`."""

    days: list[int]
    facts: dict[int, Day]
    enrolled_from: int  # the contractor's first active day in the data
    history_days: int

    @property
    def n(self) -> int:
        return len(self.days)

    def median_reads(self) -> float:
        return statistics.median(self.facts[d].reads for d in self.days) if self.days else 0.0


def history(facts: dict[int, Day], day: int, history_days: int) -> History:
    active = sorted(d for d, f in facts.items() if f.active)
    window = [d for d in active if day - history_days <= d < day]
    return History(window, facts, active[0] if active else day, history_days)


# --- policy context ----------------------------------------------------------------------


class Grants:
    """Policy grants by subject, to ask: was this project granted to them just before?"""

    def __init__(self, grants: list[Any]) -> None:
        self.by_subject: dict[str, list[tuple[float, str]]] = {}
        self.roles: list[tuple[float, str]] = []
        for grant in grants:
            if grant.subject.startswith("role:"):
                # Role membership is not resolved here: a role grant counts for everyone.
                self.roles.append((grant.ts, grant.project))
            else:
                self.by_subject.setdefault(grant.subject, []).append((grant.ts, grant.project))

    def recent(
        self, key: str, vendor: str | None, project: str | None, start: float, end: float
    ) -> float | None:
        """When `project` was last granted to the contractor, their vendor or a role in
        [start, end); None when it was not."""
        times = [
            ts
            for subject in (key, f"vendor:{vendor}")
            for ts, granted in self.by_subject.get(subject, [])
            if granted == project and start <= ts < end
        ]
        times += [ts for ts, granted in self.roles if granted == project and start <= ts < end]
        return max(times) if times else None

    def any_recent(self, key: str, vendor: str | None, start: float, end: float) -> bool:
        return any(
            start <= ts < end
            for subject in (key, f"vendor:{vendor}")
            for ts, _ in self.by_subject.get(subject, [])
        ) or any(start <= ts < end for ts, _ in self.roles)


def read_grants(ctx: Context) -> list[Any]:
    """The grants any signal of the scan can ask about: those of the look-back too."""
    start = (ctx.since_hour - 24 * (ctx.config.history_days + 8)) * 3600
    return ctx.source.policy_grants(float(start), float(ctx.end_hour * 3600))


def grants_for(ctx: Context) -> Grants:
    """The scan's grants, read once per scan."""
    cached = ctx.cache.get("grants")
    if cached is None:
        cached = ctx.cache["grants"] = Grants(read_grants(ctx))
    return cached


# --- everyone ----------------------------------------------------------------------------


def weekday_novelty(ctx: Context, day: int) -> tuple[int, int]:
    """Over every vendor's contractors in the history window before `day`: (days worked on a
    weekday the contractor had not worked in at least two chances before, such days). The
    base rate of working a new weekday, from the daily reads of everyone."""
    cache = ctx.cache.setdefault("weekday_novelty", {})
    cached = cache.get(day)
    if cached is not None:
        return cached
    active = ctx.cache.get("active_days")
    if active is None:
        active = ctx.cache["active_days"] = {}
        for (d, _), entries in ctx.cache.get("project_days", {}).items():
            for key, reads in entries:
                if reads:
                    active.setdefault(key, set()).add(d)
    history_days = ctx.config.history_days
    odd = chances = 0
    for days in active.values():
        first = min(days)
        for d in range(max(day - history_days, first), day):
            same = range(d - 7, max(d - history_days, first) - 1, -7)
            if len(same) < MIN_WEEKDAY_OCCURRENCES or any(x in days for x in same):
                continue
            chances += 1
            odd += d in days
    cache[day] = (odd, chances)
    return cache[day]


# --- the team ----------------------------------------------------------------------------


class Team:
    """Per day, how each contractor of the vendor departed from their own history: to see
    when a whole team does the same (a schedule change, a client update)."""

    def __init__(self, peers: Peers, history_days: int) -> None:
        self.peers = peers
        self.facts = {key: s.days() for key, s in peers.series.items() if s.who.subject}
        self.history_days = history_days
        self._days: dict[int, list[tuple[str, str | None, bool, float | None]]] = {}
        self._rates: dict[int, float] = {}
        self._novelty: dict[int, tuple[int, int]] = {}

    def refusal_rate(self, day: int) -> float:
        """Refused places per active contractor-day over the team's last two weeks."""
        cached = self._rates.get(day)
        if cached is None:
            places = active = 0
            for facts in self.facts.values():
                for d in range(day - 14, day):
                    f = facts.get(d)
                    if f is not None and f.active:
                        active += 1
                        places += len(f.refused)
            cached = self._rates[day] = (places + 1) / (active + 5)
        return cached

    def novelty(self, day: int) -> tuple[int, int]:
        """Over the team's history window: (days a member read a project they had not read
        before, active days): the base rate of starting on a project here."""
        cached = self._novelty.get(day)
        if cached is None:
            novel = active = 0
            for facts in self.facts.values():
                for d in range(day - self.history_days, day):
                    f = facts.get(d)
                    if f is None or not f.active:
                        continue
                    past = history(facts, d, self.history_days)
                    if past.n < MIN_WEEKDAY_OCCURRENCES:
                        continue
                    active += 1
                    seen = {p for x in past.days for p in past.facts[x].projects}
                    novel += bool(set(f.projects) - seen)
            cached = self._novelty[day] = (novel, active)
        return cached

    def on(self, day: int) -> list[tuple[str, str | None, bool, float | None]]:
        """[(key, main project, weekday never worked before, page ratio)] of that day."""
        cached = self._days.get(day)
        if cached is None:
            cached = []
            for key, facts in self.facts.items():
                today = facts.get(day)
                if today is None or not today.active:
                    continue
                past = history(facts, day, self.history_days)
                odd = weekday_counts(past, day)
                ratio = page_ratio(past, today)
                cached.append((key, today.project, odd is not None and odd[0] == 0, ratio))
            self._days[day] = cached
        return cached


def team_for(peers: Peers, ctx: Context) -> Team:
    team = peers.cache.get("team")
    if team is None:
        team = peers.cache["team"] = Team(peers, ctx.config.history_days)
    return team


def teammates(team: Team, key: str, project: str | None, day: int) -> list[tuple[Any, ...]]:
    return [entry for entry in team.on(day) if entry[0] != key and entry[1] == project]


# --- the signals -------------------------------------------------------------------------


def weekday_counts(past: History, day: int) -> tuple[int, int] | None:
    """(days worked, occurrences) of the scored day's weekday within the history window,
    since the contractor's first active day; None with too few occurrences."""
    first = max(day - past.history_days, past.enrolled_from)
    same = range(day - 7, first - 1, -7)
    if len(same) < MIN_WEEKDAY_OCCURRENCES:
        return None
    worked = sum(1 for d in same if d in past.facts and past.facts[d].active)
    return worked, len(same)


def page_ratio(past: History, today: Day) -> float | None:
    pages = [past.facts[d].page for d in past.days if past.facts[d].page > 0]
    if len(pages) < 3 or today.page <= 0:
        return None
    return today.page / statistics.median(pages)
