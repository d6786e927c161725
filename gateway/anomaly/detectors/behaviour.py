"""Detectors of how a contractor reads: enumeration, probing, shared credentials, travel,
off-hours work, attempts after a lock."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.data import (
    KINDS,
    PROBE_KINDS,
    DetailRow,
    Hour,
    Series,
    split_record_id,
)
from gateway.anomaly.detectors.common import (
    EVIDENCE_ROWS,
    Context,
    Finding,
    OwnHistory,
    Peers,
    clock,
    day_text,
    hour_text,
    iso,
    num,
    own_history,
    spearman,
)


def sequence_stats(rows: Sequence[DetailRow], max_stride: int) -> dict[str, Any]:
    """Runs of sequential record ids across requests, and id-vs-time rank correlation."""
    by_prefix: dict[str, list[tuple[str, int, str]]] = {}
    for row in rows:
        if row.record_id is None:
            continue
        parts = split_record_id(row.record_id)
        if parts is not None:
            by_prefix.setdefault(parts[0], []).append((row.request_id, parts[1], row.record_id))
    best: dict[str, Any] = {"run": 0, "requests": 0, "spearman": 0.0, "median_step": None}
    for prefix, items in by_prefix.items():
        run_requests: set[str] = set()
        longest = 0
        previous: int | None = None
        first_of_run = last_of_run = ""
        best_span = ("", "")
        for request_id, number, record_id in items:
            if previous is not None and 1 <= number - previous <= max_stride:
                run_requests.add(request_id)
            else:
                run_requests = {request_id}
                first_of_run = record_id
            previous = number
            last_of_run = record_id
            if len(run_requests) > longest:
                longest = len(run_requests)
                best_span = (first_of_run, last_of_run)
        firsts: list[int] = []
        seen: set[str] = set()
        for request_id, number, _ in items:
            if request_id not in seen:
                seen.add(request_id)
                firsts.append(number)
        steps = [b - a for a, b in itertools.pairwise(firsts)]
        rho = spearman(firsts)
        if longest > best["run"] or (longest == best["run"] and rho > best["spearman"]):
            best = {
                "run": longest,
                "run_ids": f"{best_span[0]}..{best_span[1]}",
                "requests": len(firsts),
                "spearman": rho,
                "median_step": statistics.median(steps) if steps else None,
                "prefix": prefix,
            }
    return best


def enumeration(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Runs of sequential record ids fetched request after request, faster than people work."""
    c = ctx.config
    found: list[Finding] = []
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if (
            hour < ctx.since_hour
            or stats.read_requests + stats.other_requests < c.enum_min_requests
        ):
            continue
        rows = ctx.source.detail(
            series.who, hour * 3600, (hour + 1) * 3600, ("read", "other"), 50_000
        )
        result = sequence_stats(rows, c.enum_max_stride)
        by_run = result["run"] >= c.enum_min_run
        by_order = (
            result["requests"] >= c.enum_min_requests
            and result["spearman"] >= c.enum_min_spearman
            and result["median_step"] is not None
            and 0 < result["median_step"] <= c.enum_max_median_step
        )
        if not (by_run or by_order):
            continue
        explanation = (
            f"{result['requests']} requests for records {result.get('prefix', '')}* in the hour "
            f"{hour_text(hour)}; longest run of consecutive ids (step 1..{c.enum_max_stride}) "
            f"across requests {result['run']} ({result.get('run_ids', '-')}); id order vs time "
            f"rank correlation {result['spearman']:.2f}, median step {result['median_step']}"
        )
        severity = "high" if result["run"] >= 3 * c.enum_min_run else "medium"
        found.append(
            Finding(
                "enumeration",
                severity,
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                float(max(result["run"], 1)) / c.enum_min_run,
                explanation,
                f"enumeration:{series.who.key}:{day_text(hour // 24)}",
                project=stats.project,
                evidence={
                    "rows": [r.id for r in rows[:EVIDENCE_ROWS]],
                    "request_ids": list(dict.fromkeys(r.request_id for r in rows))[:EVIDENCE_ROWS],
                    "row_range": [rows[0].id, rows[-1].id] if rows else None,
                },
                evidence_kinds=("read", "other"),
            )
        )
    return found


def probing(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Bursts of refused requests over many distinct paths (not one client retrying)."""
    c = ctx.config
    found: list[Finding] = []
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if hour < ctx.since_hour or stats.probe_requests < c.probe_min_requests:
            continue
        rows = ctx.source.detail(
            series.who, hour * 3600, (hour + 1) * 3600, tuple(sorted(PROBE_KINDS)), 20_000
        )
        requests = list(dict.fromkeys(r.request_id for r in rows))
        paths = Counter(r.path for r in rows)
        if len(requests) < c.probe_min_requests or len(paths) < c.probe_min_distinct_paths:
            continue
        reasons = Counter(r.reason or "-" for r in rows)
        top = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common(4))
        explanation = (
            f"{len(requests)} refused requests over {len(paths)} distinct paths in the hour "
            f"{hour_text(hour)} ({clock(rows[0].ts)}-{clock(rows[-1].ts)}); reasons: {top}; "
            f"e.g. {', '.join(list(paths)[:3])}"
        )
        severity = "high" if len(requests) >= 50 or len(paths) >= 20 else "medium"
        found.append(
            Finding(
                "probing",
                severity,
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                len(paths) / c.probe_min_distinct_paths,
                explanation,
                f"probing:{series.who.key}:{day_text(hour // 24)}",
                evidence={
                    "rows": [r.id for r in rows[:EVIDENCE_ROWS]],
                    "request_ids": requests[:EVIDENCE_ROWS],
                    "row_range": [rows[0].id, rows[-1].id],
                    "reasons": dict(reasons),
                },
                evidence_kinds=tuple(sorted(PROBE_KINDS)),
            )
        )
    return found


def _overlaps(stats: Hour, c: AnomalyConfig) -> list[tuple[str, str, float]]:
    busy = [
        (ip or "-", first, last)
        for ip, (first, last, requests) in stats.ips.items()
        if requests >= c.share_min_requests
    ]
    pairs = []
    for i, (ip_a, first_a, last_a) in enumerate(busy):
        for ip_b, first_b, last_b in busy[i + 1 :]:
            overlap = min(last_a, last_b) - max(first_a, first_b)
            if overlap >= c.share_min_overlap_minutes * 60:
                pairs.append((ip_a, ip_b, overlap))
    return pairs


def credential_sharing(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """One contractor active from several addresses at the same time, hour after hour."""
    c = ctx.config
    flagged: dict[int, list[tuple[int, list[tuple[str, str, float]]]]] = {}
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if hour < ctx.since_hour or len(stats.ips) < 2:
            continue
        pairs = _overlaps(stats, c)
        if pairs:
            flagged.setdefault(hour // 24, []).append((hour, pairs))
    found: list[Finding] = []
    for day, hours in flagged.items():
        if len(hours) < c.share_min_hours:
            continue
        detected_hour = hours[c.share_min_hours - 1][0]
        first_hour, first_pairs = hours[0]
        stats = series.hours[first_hour]
        ip_a, ip_b, overlap = first_pairs[0]
        addresses = sorted({ip for _, pairs in hours for pair in pairs for ip in pair[:2]})

        def describe(ip: str, stats: Hour = stats) -> str:
            first, last, requests = stats.ips[None if ip == "-" else ip]
            return f"{ip} ({int(requests)} requests, {clock(first)}-{clock(last)})"

        explanation = (
            f"active from {len(addresses)} addresses at the same time in {len(hours)} hours on "
            f"{day_text(day)}; first at {hour_text(first_hour)}: {describe(ip_a)} and "
            f"{describe(ip_b)}, overlapping {overlap / 60:.0f} min"
        )
        found.append(
            Finding(
                "credential_sharing",
                "high",
                series.who,
                first_hour * 3600,
                (hours[-1][0] + 1) * 3600,
                (detected_hour + 1) * 3600,
                float(len(hours)),
                explanation,
                f"credential_sharing:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={
                    "addresses": addresses[:20],
                    "hours": [hour_text(h) for h, _ in hours],
                },
                evidence_kinds=("read", "annotate", "other"),
            )
        )
    return found


def impossible_travel(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Seen in two places further apart than anyone could travel in the time between
    (only where the addresses' locations are known: `ip_locations`)."""
    if ctx.locations is None:
        return []
    c = ctx.config
    # (first, last, address, place, hour) of every located address, hour by hour; the day
    # before `since` too, so a jump across the boundary is seen.
    sightings = []
    for hour in sorted(series.hours):
        if hour < ctx.since_hour - 24:
            continue
        for ip, (first, last, _) in series.hours[hour].ips.items():
            place = ctx.locations.lookup(ip)
            if place is not None:
                sightings.append((first, last, ip or "-", place, hour))
    sightings.sort(key=lambda s: (s[0], s[1]))
    jumps: dict[int, tuple[Any, ...]] = {}
    latest = None
    for sighting in sightings:
        if latest is not None and sighting[3] != latest[3] and sighting[0] >= ctx.since_hour * 3600:
            km = latest[3].km_apart(sighting[3])
            hours = max(sighting[0] - latest[1], 0.0) / 3600
            speed = km / max(hours, 1 / 60)
            if km >= c.travel_min_km and speed > c.travel_max_kmh:
                jumps.setdefault(int(sighting[0] // 86400), (latest, sighting, km, hours, speed))
        if latest is None or sighting[1] >= latest[1]:
            latest = sighting
    found = []
    for day, (before, after, km, hours, speed) in jumps.items():
        gap = f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"
        explanation = (
            f"seen at {before[3].name} ({before[2]}) until {clock(before[1])} and at "
            f"{after[3].name} ({after[2]}) at {clock(after[0])} on {day_text(day)}: "
            f"{num(round(km))} km apart {'at the same time' if hours == 0 else 'in ' + gap} "
            f"(over {num(round(speed))} km/h; the limit is {num(round(c.travel_max_kmh))} km/h)"
        )
        start, end = sorted((before[1], after[0]))
        found.append(
            Finding(
                "impossible_travel",
                "high",
                series.who,
                start,
                end + 60,
                (after[4] + 1) * 3600,
                speed / c.travel_max_kmh,
                explanation,
                f"impossible_travel:{series.who.key}:{day_text(day)}",
                project=series.hours[after[4]].project,
                evidence={
                    "addresses": [before[2], after[2]],
                    "places": [before[3].name, after[3].name],
                    "km": round(km),
                },
                evidence_kinds=KINDS,
            )
        )
    return found


def off_hours(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Work at hours of day the contractor is never active, from an address their usual
    hours did not use (a shifted schedule from one address, e.g. travel, is not flagged),
    or in volume."""
    c = ctx.config
    found: list[Finding] = []
    days = series.days()
    profiles: dict[int, tuple[OwnHistory, list[float]]] = {}
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        volume = stats.reads + stats.annotations
        if hour < ctx.since_hour or volume < c.offhours_min_records:
            continue
        day = hour // 24
        if day not in profiles:
            own = own_history(series, day, c)
            share = [0.0] * 24
            for d in own.active_days:
                for hod in {h % 24 for h in days[d].active_hours}:
                    share[hod] += 1 / max(own.days, 1)
            profiles[day] = (own, share)
        own, share = profiles[day]
        if own.days < c.min_history_days:
            continue
        hod = hour % 24
        usual = [h for h in range(24) if share[h] >= c.offhours_usual_share]
        if not usual or share[hod] > c.offhours_max_share:
            continue
        distance = min(min(abs(hod - h), 24 - abs(hod - h)) for h in usual)
        if distance < c.offhours_min_distance_hours:
            continue
        known: set[str | None] = set()
        for h in range(hour - 24, hour):
            if h % 24 in usual and h in series.hours and series.hours[h].active:
                known |= set(series.hours[h].ips)
        if not known:
            continue  # no usual-hours work in the last day: a shifted schedule
        new_ips = sorted(ip or "-" for ip in set(stats.ips) - known)
        heavy = stats.reads >= c.offhours_volume_ratio * max(own.active_hour_median, 1)
        if not new_ips and not heavy:
            continue
        usual_text = ", ".join(f"{h:02d}" for h in usual)
        reason = (
            f"from {', '.join(new_ips)}, not used in the usual hours of the last 24 h"
            if new_ips
            else f"{stats.reads / max(own.active_hour_median, 1):.1f}x own median hour "
            f"{num(own.active_hour_median)}"
        )
        found.append(
            Finding(
                "off_hours",
                "medium" if heavy else "low",
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                float(distance),
                f"{num(volume)} records at {hour_text(hour)}, {distance} h outside own usual "
                f"hours (UTC {usual_text}; this hour of day seen on {share[hod]:.0%} of "
                f"{own.days} active days); {reason}",
                f"off_hours:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={"hour": hour_text(hour), "records": volume, "new_addresses": new_ips},
            )
        )
    return found


def locked_attempts(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Any request refused by a lock: the contractor (or their script) keeps trying."""
    found: list[Finding] = []
    for reason, (rows, first_ts, last_ts, first_id, last_id) in series.locks.items():
        if last_ts < ctx.since_hour * 3600:
            continue
        lock_id = reason.partition(":")[2] if reason.startswith("locked:") else reason
        found.append(
            Finding(
                "locked_attempt",
                "high",
                series.who,
                first_ts,
                last_ts + 1,
                first_ts,
                float(rows),
                f"{num(rows)} requests refused by lock {lock_id} between {iso(first_ts)} and "
                f"{iso(last_ts)}: access attempts after the lock",
                f"locked_attempt:{series.who.key}:{lock_id}",
                evidence={"row_range": [int(first_id), int(last_id)], "lock": lock_id},
                evidence_kinds=("locked",),
            )
        )
    return found
