"""Detectors of how much a contractor reads: volume spikes, slow exfiltration, breadth."""

from __future__ import annotations

import math
import statistics
from typing import Any

from gateway.anomaly.data import (
    Series,
)
from gateway.anomaly.detectors.common import (
    EPISODE_DAYS,
    MAD_SCALE,
    Context,
    Finding,
    OwnHistory,
    Peers,
    day_text,
    hour_text,
    median_mad,
    num,
    own_history,
    weekend,
)


def _window_reads(series: Series, last_hour: int, width: int) -> int:
    return sum(
        series.hours[h].reads
        for h in range(last_hour - width + 1, last_hour + 1)
        if h in series.hours
    )


def volume_spike(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """An hour (or two) far above the contractor's own hours of the same kind, and above
    peers; new contractors against peers only.

    Two- and three-hour windows catch a burst that straddles an hour boundary or is
    spread over a few hours.
    """
    c = ctx.config
    found: list[Finding] = []
    cache: dict[int, OwnHistory] = {}
    days = series.days()
    for hour in sorted(series.hours):
        if hour < ctx.since_hour or series.hours[hour].reads == 0:
            continue
        for width in (1, 2, 3):
            x = _window_reads(series, hour, width)
            if x < c.volume_min_records:
                continue
            finding = _volume_window(series, peers, ctx, hour, width, x, cache, days)
            if finding is not None:
                found.append(finding)
                break
    return found


def _volume_window(
    series: Series,
    peers: Peers,
    ctx: Context,
    hour: int,
    width: int,
    x: int,
    cache: dict[int, OwnHistory],
    days: dict[int, Any],
) -> Finding | None:
    c = ctx.config
    stats = series.hours[hour]
    day = hour // 24
    own = cache.get(day) or cache.setdefault(day, own_history(series, day, c))
    peer = peers.hour_baseline(series.who.key, stats.project, hour)
    established = own.days >= c.min_history_days
    first_hour = hour - width + 1
    span = (
        f"the hour {hour_text(hour)}"
        if width == 1
        else f"the {width} hours from {hour_text(first_hour)}"
    )
    parts = [f"fetched {num(x)} records in {span}"]
    peer_level = peer[0] * width if peer else None
    if established:
        same_kind = [d for d in own.active_days if weekend(d) == weekend(day)]
        label = f"{'weekend' if weekend(day) else 'weekday'} {first_hour % 24:02d}:00 hours"
        sample = [_window_reads(series, d * 24 + hour % 24, width) for d in same_kind]
        if len(sample) < 4:
            sample = [
                _window_reads(series, h, width)
                for d in own.active_days
                for h in days[d].active_hours
                if series.hours[h].reads
            ]
            label = "active hours"
        middle = statistics.median(sample)
        # A rise the whole team shares is no one contractor's spike. Preferably the same
        # peers' hours now (last 24 h, today's included) against their hours during the
        # history; without enough peers on the project, the project's level across
        # vendors (weekdays, daily); else the whole vendor's hours.
        trend: tuple[float, ...] | None = None
        if peer is not None and peer[4] and peer[3] == stats.project:
            trend = (peer[0] / peer[4],)
        else:
            trend = peers.team_rise(series, stats.project, day, own.active_days)
            if trend is None and peer is not None and peer[4]:
                trend = (peer[0] / peer[4],)
        rise = max(1.0, trend[0]) if trend else 1.0
        middle *= rise
        level = max(middle, own.active_hour_median * width * rise, 1.0)
        # The expected value is hour-of-week aware; the spread comes from all the
        # contractor's active hours (a handful of same-hour samples gives no stable MAD).
        scale = max(
            MAD_SCALE * own.active_hour_mad * math.sqrt(width), 0.3 * level, c.volume_min_scale
        )
        z_own = (x - middle) / scale
        ratio_own = x / level
        if z_own < c.volume_own_z or ratio_own < c.volume_own_ratio:
            return None
        if peer_level is not None and x / max(peer_level, 1.0) < c.volume_peer_ratio:
            return None
        score = ratio_own
        parts.append(
            f"own median for {label} {num(middle)} (MAD of own hours {num(own.active_hour_mad)}, "
            f"{own.days} active days; "
            f"z {z_own:.1f}, {ratio_own:.1f}x own level {num(level)})"
        )
        if rise > 1.0 and trend is not None:
            parts.append(f"own levels scaled by {rise:.2f} for the rise of the team's level")
    else:
        if peer is None or peer_level is None:
            return None
        scale = max(MAD_SCALE * peer[1] * math.sqrt(width), 0.3 * peer_level, c.volume_min_scale)
        z_peer = (x - peer_level) / scale
        ratio_peer = x / max(peer_level, 1.0)
        if ratio_peer < c.volume_new_peer_ratio or z_peer < c.volume_new_peer_z:
            return None
        score = ratio_peer
        parts.append(
            f"new contractor ({own.days} active days): scored against peers only (z {z_peer:.1f})"
        )
    if peer is not None and peer_level is not None:
        parts.append(
            f"peers ({series.who.vendor}/{peer[3]}, {peer[2]} contractors, last 24 h) median "
            f"{num(peer[0])} an hour ({x / max(peer_level, 1.0):.1f}x)"
        )
    else:
        parts.append("no peer baseline (too few peers)")
    severity = "critical" if score >= 10 else "high" if score >= 5 else "medium"
    return Finding(
        "volume_spike",
        severity,
        series.who,
        first_hour * 3600,
        (hour + 1) * 3600,
        (hour + 1) * 3600,
        score,
        "; ".join(parts),
        f"volume_spike:{series.who.key}:{day_text(day)}",
        project=stats.project,
        evidence={
            "hours": [
                {"hour": hour_text(h), "records": series.hours[h].reads}
                for h in range(first_hour, hour + 1)
                if h in series.hours
            ],
            "row_range": [
                min(
                    series.hours[h].first_id
                    for h in range(first_hour, hour + 1)
                    if h in series.hours
                ),
                stats.last_id,
            ],
        },
    )


def slow_exfiltration(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Reads per day rising for days (EWMA), against own baseline, peers and own work."""
    c = ctx.config
    days = series.days()
    active = sorted(d for d, stats in days.items() if stats.active)
    if not active:
        return []
    first_day = ctx.since_hour // 24 - EPISODE_DAYS
    last_day = (ctx.end_hour - 1) // 24
    # y: log reads relative to the peers that day; w: log read requests per annotation
    # (requests, not records: a browsed list page is one request, many records).
    y: dict[int, float] = {}
    w: dict[int, float] = {}
    peer_reads: dict[int, float] = {}
    peer_group: dict[int, str] = {}
    for d in active:
        stats = days[d]
        baseline = peers.day_baseline(series.who.key, stats.project, d)
        if baseline is None:
            continue
        peer_reads[d] = baseline[0]
        peer_group[d] = baseline[2]
        y[d] = math.log((stats.reads + 1) / (baseline[0] + 1))
        w[d] = math.log((stats.read_requests + 1) / (stats.annotations + 1))
    # Days without a peer baseline (a weekend nobody else worked) are not scored.
    active = [d for d in active if d in y]
    alpha = c.exfil_alpha
    threshold = math.log(c.exfil_ratio)
    unworked_threshold = math.log(c.exfil_unworked_ratio)
    firing: dict[int, dict[str, Any]] = {}
    for d in active:
        if d < first_day or d > last_day or d not in y:
            continue
        history = [h for h in active if d - c.history_days <= h < d - c.exfil_baseline_gap_days]
        history = [h for h in history if h in y]
        if len(history) < c.exfil_min_baseline_days:
            continue
        recent = [h for h in active if d - c.exfil_baseline_gap_days <= h <= d and h in y]
        base_y, spread_y = median_mad([y[h] for h in history])
        annotated = sum(days[h].annotations for h in history) > 0
        base_w, spread_w = median_mad([w[h] for h in history])
        weights = [alpha * (1 - alpha) ** i for i in range(len(recent))]
        total = sum(weights)
        # The EWMA's own noise: the day-to-day spread (robust) times this factor.
        damping = math.sqrt(sum(wt * wt for wt in weights)) / total
        newest_first = list(reversed(recent))
        e_y = sum(wt * (y[h] - base_y) for wt, h in zip(weights, newest_first, strict=True)) / total
        e_w = sum(wt * (w[h] - base_w) for wt, h in zip(weights, newest_first, strict=True)) / total
        z_y = e_y / (max(MAD_SCALE * spread_y, 0.05) * damping)
        z_w = e_w / (max(MAD_SCALE * spread_w, 0.05) * damping)
        if e_y < threshold:
            continue
        if annotated:
            # Both signals up: reads above the own level (peer-normalised), and read
            # requests per annotation up (records fetched, not worked on); the z-score of
            # the latter, or of both combined.
            if e_w < unworked_threshold or max(z_w, (z_y + z_w) / math.sqrt(2)) < c.exfil_z:
                continue
        elif z_y < c.exfil_z:
            continue
        if annotated:
            # Fetches the contractor's own annotation rate does not account for.
            excess = sum(
                days[h].read_requests + 1 - math.exp(base_w) * (days[h].annotations + 1)
                for h in recent
            )
        else:
            excess = sum(days[h].reads + 1 - math.exp(base_y) * (peer_reads[h] + 1) for h in recent)
        if excess < c.exfil_min_excess_records:
            continue
        firing[d] = {
            "z": z_y,
            "z_unworked": z_w,
            "group": peer_group.get(d, "-"),
            "ewma_ratio": math.exp(e_y),
            "unworked_ratio": math.exp(e_w) if annotated else None,
            "base_daily": math.exp(base_y) * (statistics.median(peer_reads[h] for h in history)),
            "recent": recent,
            "excess": excess,
            "baseline_days": len(history),
        }
    # Sustained: the condition holds on `exfil_min_days` consecutive active days.
    index = {d: i for i, d in enumerate(active)}
    sustained = [
        d
        for d in sorted(firing)
        if index[d] + 1 >= c.exfil_min_days
        and all(active[index[d] - k] in firing for k in range(c.exfil_min_days))
    ]
    found: list[Finding] = []
    episode_start: int | None = None
    previous: int | None = None
    for d in sustained:
        if previous is None or index[d] != index[previous] + 1:
            episode_start = active[index[d] - c.exfil_min_days + 1]
        previous = d
        if d < ctx.since_hour // 24:
            continue
        info = firing[d]
        recent = info["recent"]
        recent_reads = statistics.mean(days[h].reads for h in recent)
        peer_now = statistics.median(peer_reads[h] for h in recent)
        parts = [
            f"reads per day rose for {c.exfil_min_days}+ active days to "
            f"{info['ewma_ratio']:.2f}x the contractor's own level relative to peers (EWMA, "
            f"alpha {alpha}, z {info['z']:.1f}): {num(round(recent_reads))}/day over the last "
            f"{len(recent)} active days vs a baseline of about "
            f"{num(round(info['base_daily']))}/day "
            f"({info['baseline_days']} earlier active days)",
            f"peers ({series.who.vendor}, {info['group']}) median {num(round(peer_now))}/day",
            f"about {num(round(info['excess']))} fetches above the expected level",
        ]
        if info["unworked_ratio"] is not None:
            parts.append(
                f"read requests per annotation submitted "
                f"{info['unworked_ratio']:.2f}x own baseline "
                f"(z {info['z_unworked']:.1f}: records fetched but not worked on)"
            )
        score = info["ewma_ratio"]
        assert episode_start is not None
        found.append(
            Finding(
                "slow_exfiltration",
                "high" if score >= 1.5 else "medium",
                series.who,
                recent[0] * 86400,
                (d + 1) * 86400,
                (d + 1) * 86400,
                score,
                "; ".join(parts),
                f"slow_exfiltration:{series.who.key}:{day_text(episode_start)}",
                project=days[d].project,
                evidence={
                    "days": [
                        {
                            "day": day_text(h),
                            "records": days[h].reads,
                            "annotations": days[h].annotations,
                            "peer_median": round(peer_reads[h], 1),
                        }
                        for h in recent
                    ]
                },
            )
        )
    return found


def breadth(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Far more distinct projects/tasks in a day than the vendor's contractors touch."""
    c = ctx.config
    found: list[Finding] = []
    days = series.days()
    for day, stats in days.items():
        if day < ctx.since_hour // 24 or len(stats.tasks) < c.breadth_min_tasks:
            continue
        p90 = peers.tasks_p90(series.who.key, day)
        if p90 is None:
            continue
        limit = max(c.breadth_min_tasks, c.breadth_peer_ratio * max(p90[0], 1))
        own = own_history(series, day, c)
        own_max = max((len(days[d].tasks) for d in own.active_days), default=0)
        if own.days >= c.min_history_days:
            limit = max(limit, 2 * own_max)
        if len(stats.tasks) < limit:
            continue
        seen: set[tuple[str | None, str | None]] = set()
        crossed = day * 24
        for hour in sorted(stats.active_hours):
            seen |= series.hours[hour].tasks
            if len(seen) >= limit:
                crossed = hour
                break
        projects = sorted({p or "-" for p, _ in stats.tasks})
        explanation = (
            f"touched {len(stats.tasks)} distinct project/tasks in {len(projects)} projects on "
            f"{day_text(day)}; peers ({series.who.vendor}, {p90[1]} contractor-days, last 7 days) "
            f"p90 {num(p90[0])}; own maximum {num(own_max)} over {own.days} active days"
        )
        found.append(
            Finding(
                "breadth",
                "high" if len(stats.tasks) >= 2 * limit else "medium",
                series.who,
                day * 86400,
                (day + 1) * 86400,
                (crossed + 1) * 3600,
                len(stats.tasks) / max(p90[0], 1),
                explanation,
                f"breadth:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={"projects": projects[:50], "tasks": len(stats.tasks)},
            )
        )
    return found
