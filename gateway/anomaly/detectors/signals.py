"""Weak signals: one contractor-day against the contractor's own history, in many dimensions.

Each signal is a departure from the contractor's own baseline of the last `history_days`
(projects, weekdays, hours of day, addresses, refusals, page size, reads, reads left
unannotated), with a *surprise* in nats: -ln of the estimated probability of what was
seen, given the history. A first access to a project after 14 days on one project is
-ln((0 + 0.5) / (14 + 1)) = 3.4 nats on the contractor's own days alone; refused requests at
six places in a day where 0.1 a day is usual is -6 ln(0.1 / 1.1) = 14 nats (a geometric
tail: refusals come in bursts). Probabilities are smoothed (add one half), so a short
history is never certain of anything.

Context lowers a surprise when the departure has an ordinary explanation the gateway can
see: a policy grant of the project shortly before (a reassignment), the whole team doing
the same that day (a schedule change, a client update, a deadline), days off just before
(catching up). The explanation says so.

`combined.py` adds the signals of a day (and carries the last days' with decay) into one
score.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from gateway.anomaly.data import PROBE_KINDS, Day, Series
from gateway.anomaly.detectors.baselines import (
    History,
    Team,
    grants_for,
    history,
    team_for,
    teammates,
    weekday_counts,
    weekday_novelty,
)
from gateway.anomaly.detectors.common import (
    MAD_SCALE,
    Context,
    Peers,
    day_text,
    iso,
    median_mad,
    num,
    weekend,
)

# What a context that explains a departure leaves of its surprise.
EXPLAINED = 0.15
# Pseudo-days of the team's rate in a contractor's own refusal rate, and its floor.
PRIOR_DAYS = 5
MIN_REFUSAL_RATE = 0.1
# Hours with list pages needed on the scored day, and days with them in the history.
MIN_PAGE_HOURS = 2
# Days a project stays new after the first read of it.
NEW_PROJECT_DAYS = 4
MIN_PAGE_DAYS = 5
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def explained(surprise: float, ctx: Context) -> float:
    """What is left of a surprise that context explains: a share of at most the cap, so an
    explained departure never outweighs an unexplained one however large it is."""
    return min(surprise, ctx.config.combined_signal_cap) * EXPLAINED


@dataclass
class Signal:
    """One departure of one contractor-day from the contractor's own baseline."""

    name: str
    day: int
    surprise: float  # nats, after context
    weight: float
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kinds: tuple[str, ...] = ("read",)

    def points(self, cap: float) -> float:
        return self.weight * min(self.surprise, cap)

    def as_dict(self, cap: float) -> dict[str, Any]:
        return {
            "signal": self.name,
            "day": day_text(self.day),
            "surprise": round(self.surprise, 2),
            "weight": self.weight,
            "points": round(self.points(cap), 2),
            "explanation": self.text,
            **{key: value for key, value in self.numbers.items() if key not in ("signal",)},
        }


def contractor_signals(
    series: Series, facts: dict[int, Day], day: int, peers: Peers, ctx: Context
) -> list[Signal]:
    """Every weak signal of one contractor-day (empty without enough history)."""
    today = facts.get(day)
    if today is None:
        return []
    c = ctx.config
    past = history(facts, day, c.history_days)
    signals: list[Signal] = []
    refusal = _refusals(series, today, past, day, peers, ctx)
    if refusal is not None:
        signals.append(refusal)
    if not today.active or past.n < c.min_history_days:
        return signals
    team = team_for(peers, ctx)
    for make in (
        _new_project,
        _weekday,
        _page_size,
        _volume,
        _unannotated,
        _hours,
        _addresses,
    ):
        signal = make(series, today, past, day, ctx, team)
        if signal is not None:
            signals.append(signal)
    return signals


def _new_project(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    first_read: dict[str | None, int] = {}
    novel_days = 0
    for d in past.days:
        projects = set(past.facts[d].projects)
        if first_read and projects - set(first_read):
            novel_days += 1
        for project in projects:
            first_read.setdefault(project, d)
    team_novel, team_active = team.novelty(day)
    best: Signal | None = None
    for project, reads in today.projects.items():
        if not today.reads:
            continue
        # A project stays new for a few days: a move of reads lasts, its first day alone
        # may be a small share.
        began = first_read.get(project, day)
        before = sum(1 for d in past.days if d < began)
        if began < day - NEW_PROJECT_DAYS or before < ctx.config.min_history_days:
            continue
        share = reads / today.reads
        if share < 0.1:
            continue
        # Own history and the team's: how often anyone here starts on a project.
        probability = (novel_days + team_novel + 0.5) / (past.n + team_active + 1)
        surprise = -math.log(probability) * min(1.0, share / 0.3)
        who = series.who
        # The grant that explains it came before (or on) the first day of reading it.
        granted = grants_for(ctx).recent(
            who.key,
            who.vendor,
            project,
            (began - ctx.config.grant_recent_days) * 86400.0,
            (began + 1) * 86400.0,
        )
        since = "first" if began == day else f"since {day_text(began)}, the first"
        text = (
            f"reads of project {project} ({since} in {before} active days): {num(reads)} of "
            f"{num(today.reads)} records that day ({share:.0%})"
        )
        if granted is not None:
            surprise = explained(surprise, ctx)
            text += f", granted by a policy change at {iso(granted)}"
        else:
            text += f", no grant of it in the {ctx.config.grant_recent_days} days before"
            mates = teammates(team, who.key, project, day)
            if len(mates) >= 2:
                surprise = explained(surprise, ctx)
                text += f"; {len(mates)} teammates read it that day too"
        signal = Signal(
            "new_project",
            day,
            surprise,
            1.0,
            text,
            {"project": project, "records": reads, "share": round(share, 3), "granted": granted},
        )
        if best is None or signal.surprise > best.surprise:
            best = signal
    return best


def _weekday(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    counts = weekday_counts(past, day)
    if counts is None or counts[0] > 0:
        return None
    worked, occurrences = counts
    name = WEEKDAYS[(day + 3) % 7]
    usual = past.median_reads()
    volume = min(1.0, today.reads / usual) if usual else 0.0
    odd, chances = weekday_novelty(ctx, day)
    surprise = -math.log((odd + 0.5) / (chances + 1)) * volume
    text = (
        f"works a {name} ({num(today.reads)} records), in {worked} of the last "
        f"{occurrences} {name}s before; all contractors worked {odd} of {chances} such days "
        f"in the {ctx.config.history_days} days before"
    )
    mates = teammates(team, series.who.key, today.project, day)
    odd = [m for m in mates if m[2]]
    if len(odd) >= 2 and len(odd) * 2 >= len(mates):
        surprise = explained(surprise, ctx)
        text += f"; so do {len(odd)} of {len(mates)} teammates (a schedule change)"
    return Signal("unusual_weekday", day, surprise, 1.0, text, {"weekday": name})


def _page_size(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    """Larger list pages than the own history's: each of the day's hours with pages is
    ranked among the history's hours (how many were at least as large), and the ranks are
    combined by Fisher's method; a client with a fixed page size gets a tiny rank at once."""
    earlier = sorted(p for d in past.days for p in past.facts[d].pages)
    days_with = sum(1 for d in past.days if past.facts[d].pages)
    if days_with < MIN_PAGE_DAYS or len(today.pages) < MIN_PAGE_HOURS:
        return None
    usual = statistics.median(earlier)
    ratio = today.page / usual
    if ratio < 1.15:
        return None
    total = len(earlier)
    fisher = -sum(
        math.log((total - bisect.bisect_left(earlier, p - 1e-9) + 0.5) / (total + 1))
        for p in today.pages
    )
    surprise = -_gamma_log_tail(len(today.pages), fisher)
    text = (
        f"{today.page:.1f} records per list request in {len(today.pages)} hours, "
        f"{ratio:.2f}x the usual {usual:.1f} of {total} hours over {days_with} past days"
    )
    mates = [m for m in teammates(team, series.who.key, today.project, day) if m[3] is not None]
    risen = [m for m in mates if m[3] >= 1 + (ratio - 1) / 2]
    if len(risen) >= 2 and len(risen) * 2 >= len(mates):
        surprise = explained(surprise, ctx)
        text += f"; {len(risen)} of {len(mates)} teammates' pages grew too (a client change)"
    return Signal("page_size", day, surprise, 1.0, text, {"ratio": round(ratio, 3)})


def _gamma_log_tail(k: int, x: float) -> float:
    """ln P(Gamma(k, 1) >= x): Fisher's combination of k ranks (as -ln of each)."""
    terms = [i * math.log(x) - math.lgamma(i + 1) for i in range(k)] if x > 0 else [0.0]
    top = max(terms)
    return min(0.0, -x + top + math.log(sum(math.exp(t - top) for t in terms)))


def _volume(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    """Reads above the own level, both taken relative to the peers of the day (so that a
    team's deadline or ramp-up moves the baseline, not the signal)."""
    peers = team.peers

    def level(d: int, f: Day) -> float | None:
        baseline = peers.day_baseline(series.who.key, f.project, d)
        return None if baseline is None else math.log((f.reads + 10) / (baseline[0] + 10))

    now = level(day, today)
    values = [v for d in past.days if (v := level(d, past.facts[d])) is not None]
    if now is None or len(values) < ctx.config.min_history_days:
        return None
    middle, spread = median_mad(values)
    z = (now - middle) / max(MAD_SCALE * spread, 0.15)
    if z < 2:
        return None
    ratio = math.exp(now - middle)
    text = (
        f"{num(today.reads)} records, {ratio:.2f}x the own level against the peers "
        f"(z {z:.1f} over {len(values)} days)"
    )
    surprise = z * z / 2
    off = [d for d in range(day - 4, day) if not weekend(d) and d not in past.days]
    if len(off) >= 2 and past.enrolled_from < day - 4:
        surprise = explained(surprise, ctx)
        text += f"; catching up after {len(off)} working days off"
    return Signal("volume", day, surprise, 0.5, text, {"ratio": round(ratio, 3), "z": round(z, 2)})


def _unannotated(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    """Records fetched and not worked on: read requests per annotation above the own level."""
    annotated = [d for d in past.days if past.facts[d].annotations]
    if len(annotated) < ctx.config.min_history_days or not today.read_requests:
        return None
    values = [
        math.log((past.facts[d].read_requests + 1) / (past.facts[d].annotations + 1))
        for d in past.days
    ]
    middle, spread = median_mad(values)
    now = math.log((today.read_requests + 1) / (today.annotations + 1))
    z = (now - middle) / max(MAD_SCALE * spread, 0.1)
    if z < 2:
        return None
    off = [p for p in today.projects if p not in today.annotated_projects]
    text = (
        f"{num(today.read_requests)} read requests for {num(today.annotations)} annotations, "
        f"{math.exp(now - middle):.2f}x the own ratio (z {z:.1f})"
    )
    if off:
        text += f"; nothing annotated on {', '.join(str(p) for p in sorted(off, key=str))}"
    return Signal("unannotated", day, z * z / 2, 0.5, text, {"z": round(z, 2)})


def _hours(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    usual: set[int] = set()
    for d in past.days:
        for hour in past.facts[d].hours_of_day:
            usual |= {(hour - 1) % 24, hour, (hour + 1) % 24}
    outside = sum(r for h, r in today.hours_of_day.items() if h not in usual)
    if not today.reads or outside / today.reads < 0.25:
        return None
    share = outside / today.reads
    surprise = share * math.log(past.n + 1)
    text = f"{share:.0%} of the day's records in hours of day never worked in {past.n} days"
    return Signal("unusual_hours", day, surprise, 0.5, text, {"share": round(share, 3)})


def _addresses(
    series: Series, today: Day, past: History, day: int, ctx: Context, team: Team
) -> Signal | None:
    seen: set[str | None] = set()
    for d in past.days:
        seen |= set(past.facts[d].addresses)
    total = sum(today.addresses.values())
    new = {a: n for a, n in today.addresses.items() if a not in seen}
    if not total or not new or sum(new.values()) / total < 0.25:
        return None
    share = sum(new.values()) / total
    text = f"{share:.0%} of the day's requests from {len(new)} address(es) unseen in {past.n} days"
    return Signal(
        "new_address",
        day,
        share * math.log(past.n + 1),
        0.3,
        text,
        {"addresses": sorted(str(a) for a in new)[:5]},
    )


def _refusals(
    series: Series, today: Day, past: History, day: int, peers: Peers, ctx: Context
) -> Signal | None:
    """Refused requests, counted by place (a retrying client is one place), weighed down on
    projects the contractor worked on (stale links after a move)."""
    if not today.refused:
        return None
    worked: set[str | None] = set()
    for d in past.days:
        worked |= set(past.facts[d].projects)

    def places(f: Day) -> float:
        total = 0.0
        for target, hours in f.refused_hours.items():
            weight = 0.3 if target[0] in worked else 1.0
            total += weight * (1 + 0.25 * (hours - 1))
        return total

    count = places(today)
    if count < 2:
        return None
    # The own rate, pulled towards the team's (five days' worth), and never below one
    # refused place in ten days: a short quiet history is no proof that refusals never
    # happen. Refusals come in bursts (a stale bookmark, a wrong task): a geometric tail,
    # heavier than Poisson's.
    team = team_for(peers, ctx)
    prior = team.refusal_rate(day)
    rate = (sum(places(past.facts[d]) for d in past.days) + PRIOR_DAYS * prior) / (
        past.n + PRIOR_DAYS
    )
    rate = max(rate, MIN_REFUSAL_RATE)
    surprise = -math.floor(count) * math.log(rate / (1 + rate))
    requests = sum(today.refused.values())
    text = (
        f"{requests} refused requests at {len(today.refused)} places on {day_text(day)} "
        f"(weighted {count:.1f}), against {rate:.2f} a day over {past.n} past days"
    )
    who = series.who
    if grants_for(ctx).any_recent(
        who.key, who.vendor, (day - ctx.config.grant_recent_days) * 86400.0, (day + 1) * 86400.0
    ):
        surprise *= 0.5
        text += "; a policy change for them in the days before"
    return Signal(
        "refusals",
        day,
        surprise,
        1.0,
        text,
        {"requests": requests, "places": len(today.refused), "rate": round(rate, 3)},
        tuple(sorted(PROBE_KINDS)),
    )
