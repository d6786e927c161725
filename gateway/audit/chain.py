"""Row hashing for the per-writer hash chain (DESIGN.md §6)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = "0" * 64

# The fields a row hash covers, in a fixed order; adding one is a schema change.
HASHED_FIELDS = (
    "time",
    "request_id",
    "issuer",
    "subject",
    "vendor",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "project",
    "task",
    "record_id",
    "record_sha256",
    "action",
    "decision",
    "reason",
    "policy_version",
    "upstream_status",
    "bytes",
    "chain_id",
    "seq",
    "prev_hash",
)


def canonical_time(value: datetime) -> str:
    """Microsecond UTC text; naive values are taken as UTC, aware ones converted to it."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(row: dict[str, Any], time_text: str | None = None) -> str:
    """SHA-256 over the hashed fields; `time_text` saves re-formatting a shared timestamp."""
    values = [row.get(name) for name in HASHED_FIELDS]
    values[0] = time_text or canonical_time(row["time"])
    return hashlib.sha256(orjson.dumps(values)).hexdigest()
