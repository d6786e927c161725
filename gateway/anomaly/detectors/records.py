"""Detectors of single records: canary records touched, records asked for under another
project's path (the record catalogue's mismatches)."""

from __future__ import annotations

from typing import Any

from gateway.anomaly.data import (
    Who,
    contractor_key,
)
from gateway.anomaly.detectors.common import (
    EVIDENCE_ROWS,
    Context,
    Finding,
    iso,
)


def canary_touches(ctx: Context) -> list[Finding]:
    hits = ctx.source.canary_hits(ctx.since_hour * 3600, ctx.end_hour * 3600)
    grouped: dict[tuple[str, str], list[Any]] = {}
    for hit in hits:
        key = contractor_key(hit.issuer, hit.subject, hit.client_ip)
        grouped.setdefault((key, hit.record_id), []).append(hit)
    found = []
    for (key, record_id), group in grouped.items():
        group.sort(key=lambda h: (h.ts, h.id))
        first = group[0]
        who = Who(
            key,
            first.issuer,
            first.subject,
            first.vendor,
            first.client_ip if first.subject is None else None,
        )
        released = sum(1 for h in group if h.decision == "allow")
        found.append(
            Finding(
                "canary_touch",
                "critical" if released else "high",
                who,
                first.ts,
                group[-1].ts + 1,
                first.ts,
                float(len(group)),
                f"canary record {record_id} touched {len(group)} time(s) "
                f"({released} released), first at {iso(first.ts)} from {first.client_ip}: "
                f"records marked as never to be fetched",
                f"canary_touch:{key}:{record_id}",
                project=first.project,
                evidence={
                    "rows": [h.id for h in group[:EVIDENCE_ROWS]],
                    "request_ids": list(dict.fromkeys(h.request_id for h in group))[:EVIDENCE_ROWS],
                    "record_id": record_id,
                },
            )
        )
    return found
