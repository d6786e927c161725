"""What every detector shares: findings, formatting, robust statistics, peers, context."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.anomaly.config import SEVERITIES, AnomalyConfig
from gateway.anomaly.data import (
    LogSource,
    Series,
    Who,
)
from gateway.anomaly.locations import IpLocations

# A slow-exfiltration episode that started up to this many days before `since` keeps its
# key (its first day); the scan loads this much more history for it.
EPISODE_DAYS = 14
EVIDENCE_ROWS = 20
MAD_SCALE = 1.4826


@dataclass
class Finding:
    detector: str
    severity: str
    who: Who
    window_start: float
    window_end: float
    detected_at: float
    score: float
    explanation: str
    dedup_key: str
    project: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    evidence_kinds: tuple[str, ...] = ("read",)

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "severity": self.severity,
            "contractor": self.who.key,
            "vendor": self.who.vendor,
            "project": self.project,
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "detected_at": iso(self.detected_at),
            "score": round(self.score, 3),
            "explanation": self.explanation,
            "dedup_key": self.dedup_key,
            "evidence": self.evidence,
        }


# --- small helpers ---------------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_text(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00 UTC")


def day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def weekend(day: int) -> bool:
    return (day + 3) % 7 >= 5  # epoch day 0 was a Thursday


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    middle = statistics.median(values)
    return middle, statistics.median(abs(v - middle) for v in values)


def median_without(values: Sequence[float], removed: Sequence[float]) -> float:
    """Median of the sorted multiset `values` less the sorted sub-multiset `removed`
    (equal to `statistics.median` of the difference), in O(log² n)."""
    size = len(values) - len(removed)
    if size <= 0:
        raise ValueError("the median of nothing")

    def kth(k: int) -> float:
        # The smallest value v with at least k + 1 remaining elements <= v.
        lo, hi = 0, len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            v = values[mid]
            if bisect.bisect_right(values, v) - bisect.bisect_right(removed, v) >= k + 1:
                hi = mid
            else:
                lo = mid + 1
        return values[lo]

    if size % 2:
        return kth(size // 2)
    return (kth(size // 2 - 1) + kth(size // 2)) / 2


def severity_at_least(severity: str, floor: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(floor)


def spearman(values: Sequence[float]) -> float:
    """Rank correlation between position (time order) and value."""
    n = len(values)
    if n < 3:
        return 0.0
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    mean = (n - 1) / 2
    cov = sum((k - mean) * (r - mean) for k, r in enumerate(ranks))
    var_pos = sum((k - mean) ** 2 for k in range(n))
    var_rank = sum((r - mean) ** 2 for r in ranks)
    if var_rank == 0:
        return 0.0
    return cov / math.sqrt(var_pos * var_rank)


# --- peers -----------------------------------------------------------------------------


class Peers:
    """Baselines from the other contractors of the same vendor (and project)."""

    def __init__(
        self,
        series: dict[str, Series],
        config: AnomalyConfig,
        project_days: dict[tuple[int, str | None], list[tuple[str, int]]] | None = None,
    ) -> None:
        self.config = config
        self.series = series
        # What other detectors derive from these peers once (the weak signals' team view).
        self.cache: dict[str, Any] = {}
        # (day, project) -> [(contractor, reads)] over every vendor: a project's ramp-up
        # or deadline is shared by everyone on it.
        self.project_days = project_days or {}
        # (project or None for vendor-wide) -> sorted [(hour, reads, key)]
        hourly: dict[str | None, list[tuple[int, int, str]]] = {}
        # day -> [(key, project, reads, tasks)]
        self.daily: dict[int, list[tuple[str, str | None, int, int]]] = {}
        for key, s in series.items():
            if s.who.subject is None:
                continue
            for hour, stats in s.hours.items():
                if stats.reads:
                    entry = (hour, stats.reads, key)
                    hourly.setdefault(stats.project, []).append(entry)
                    hourly.setdefault(None, []).append(entry)
            for day, stats in s.days().items():
                if stats.active:
                    self.daily.setdefault(day, []).append(
                        (key, stats.project, stats.reads, len(stats.tasks))
                    )
        for entries in hourly.values():
            entries.sort()
        self.hourly = hourly
        self._hours = {p: [e[0] for e in entries] for p, entries in hourly.items()}
        # group -> key -> ([hours], [reads]) of that contractor alone, in hour order.
        self._own: dict[str | None, dict[str, tuple[list[int], list[int]]]] = {}
        for group, entries in hourly.items():
            own = self._own[group] = {}
            for hour, reads, key in entries:
                hours_reads = own.setdefault(key, ([], []))
                hours_reads[0].append(hour)
                hours_reads[1].append(reads)
        self._window_cache: dict[tuple[str | None, int], list[int]] = {}
        self._level_cache: dict[tuple[str | None, int], float | None] = {}
        self._then_cache: dict[tuple[str | None, int, str], float | None] = {}

    def hour_baseline(
        self, key: str, project: str | None, hour: int
    ) -> tuple[float, float, int, str, float | None] | None:
        """Peers' active hours in the 24 h up to `hour`: (median, MAD, peers, group, then),
        `then` the same peers' median hour over the history before that day."""
        for group in (project, None):
            if group not in self.hourly:
                continue
            hours = self._hours[group]
            entries = self.hourly[group]
            lo = bisect.bisect_right(hours, hour - 24)
            hi = bisect.bisect_right(hours, hour)
            values = [reads for _, reads, other in entries[lo:hi] if other != key]
            peers = {other for _, _, other in entries[lo:hi] if other != key}
            if len(peers) >= self.config.peer_min:
                middle, mad = median_mad(values)
                day = hour // 24
                then_key = (group, day, key)
                if then_key not in self._then_cache:
                    self._then_cache[then_key] = self._history_median(group, day, key)
                return middle, mad, len(peers), group or "all projects", self._then_cache[then_key]
        return None

    def _history_median(self, group: str | None, day: int, key: str) -> float | None:
        """Median of the other contractors' active hours of `group` over the history
        before `day`: every peer's hours in that window, sorted once per (group, day),
        less this contractor's own."""
        start, stop = (day - self.config.history_days) * 24, day * 24
        window = self._window_cache.get((group, day))
        if window is None:
            hours = self._hours[group]
            lo, hi = bisect.bisect_left(hours, start), bisect.bisect_left(hours, stop)
            window = self._window_cache[(group, day)] = sorted(
                reads for _, reads, _ in self.hourly[group][lo:hi]
            )
        own_hours, own_reads = self._own[group].get(key, ([], []))
        lo, hi = bisect.bisect_left(own_hours, start), bisect.bisect_left(own_hours, stop)
        own = sorted(own_reads[lo:hi])
        if len(window) - len(own) < self.config.peer_min:
            return None
        return median_without(window, own)

    def day_baseline(
        self, key: str, project: str | None, day: int
    ) -> tuple[float, int, str] | None:
        """Median reads of the peers active that day: (median, peers, group): same vendor
        and project, else the same project at any vendor, else the whole vendor."""
        entries = self.daily.get(day, [])
        minimum = self.config.peer_min
        values = [r for k, p, r, _ in entries if k != key and p == project]
        if len(values) >= minimum:
            return statistics.median(values), len(values), f"project {project}"
        values = [r for k, r in self.project_days.get((day, project), []) if k != key]
        if len(values) >= minimum:
            return statistics.median(values), len(values), f"project {project}, all vendors"
        values = [r for k, _, r, _ in entries if k != key]
        if len(values) >= minimum:
            return statistics.median(values), len(values), "all projects"
        return None

    def project_level(self, project: str | None, day: int) -> float | None:
        """Median reads per contractor-day on a project that day, all vendors."""
        cache_key = (project, day)
        if cache_key not in self._level_cache:
            values = [r for _, r in self.project_days.get((day, project), [])]
            self._level_cache[cache_key] = (
                statistics.median(values) if len(values) >= self.config.peer_min else None
            )
        return self._level_cache[cache_key]

    def team_rise(
        self, series: Series, project: str | None, day: int, history: list[int]
    ) -> tuple[float, float, float] | None:
        """How the level of the contractor's team moved since their history was recorded:
        (now / then, now, then), in median reads per contractor-day, all vendors. `now` is
        the current project over the last two weekdays, `then` the projects the contractor
        worked on during their history weekdays. A ramp-up, a deadline or a move to a busier
        project raises the team, not
        just one contractor."""
        # Weekdays only: weekend levels rest on a handful of short days.
        recent = [d for d in range(day - 1, day - 8, -1) if not weekend(d)][:2]
        now = [level for d in recent if (level := self.project_level(project, d)) is not None]
        days = series.days()
        then = [
            level
            for d in history
            if d < min(recent, default=day)
            and not weekend(d)
            and (level := self.project_level(days[d].project, d)) is not None
        ]
        if not now or not then:
            return None
        current, before = statistics.median(now), statistics.median(then)
        return current / max(before, 1.0), current, before

    def tasks_p90(self, key: str, day: int) -> tuple[float, int] | None:
        """90th percentile of distinct tasks per active day, vendor-wide, last 7 days."""
        values = [
            tasks
            for d in range(day - 6, day + 1)
            for k, _, _, tasks in self.daily.get(d, [])
            if k != key
        ]
        if len(values) < self.config.peer_min:
            return None
        values.sort()
        return values[min(len(values) - 1, int(0.9 * len(values)))], len(values)


# --- the detectors ---------------------------------------------------------------------


@dataclass
class Context:
    config: AnomalyConfig
    source: LogSource
    since_hour: int
    end_hour: int
    locations: IpLocations | None = None
    # What several detectors derive once per scan (the policy grants, team figures).
    cache: dict[Any, Any] = field(default_factory=dict)


@dataclass
class OwnHistory:
    active_days: list[int]
    active_hour_median: float
    active_hour_mad: float = 0.0

    @property
    def days(self) -> int:
        return len(self.active_days)


def own_history(series: Series, day: int, config: AnomalyConfig) -> OwnHistory:
    days = series.days()
    active = [d for d in range(day - config.history_days, day) if d in days and days[d].active]
    reads = [
        series.hours[h].reads
        for d in active
        for h in days[d].active_hours
        if series.hours[h].reads > 0
    ]
    if not reads:
        return OwnHistory(active, 0.0, 0.0)
    middle, mad = median_mad(reads)
    return OwnHistory(active, middle, mad)
