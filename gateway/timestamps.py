"""The one way the gateway writes a time for people and programs: RFC 3339, UTC, `Z`.

`2026-12-04T03:00:00Z` everywhere; access-log event and checkpoint times keep the
microseconds they are stored (and hashed) with: `2026-12-04T03:00:00.123456Z`.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one (SQLite hands them back so) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rfc3339(moment: datetime | float) -> str:
    """`2026-12-04T03:00:00Z` (whole seconds) from a datetime or epoch seconds."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(moment: datetime) -> str:
    """`2026-12-04T03:00:00.123456Z`: for times whose order within a second matters."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339_micro(text: str) -> datetime:
    """The inverse of `rfc3339_micro`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
