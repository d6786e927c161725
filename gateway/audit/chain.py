"""Row hashing for the per-writer hash chain (docs/DESIGN.md §6)."""

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


# The fields a request supplies; the writer appends chain_id, seq and prev_hash.
ROW_FIELDS = HASHED_FIELDS[:-3]


def canonical_time(value: datetime) -> str:
    """Microsecond UTC text; naive values are taken as UTC, aware ones converted to it."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_values(values: list[Any]) -> str:
    """SHA-256 of the HASHED_FIELDS values in order, the time as canonical text."""
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


def row_hash(row: dict[str, Any], time_text: str | None = None) -> str:
    """The hash of a row given as a mapping of HASHED_FIELDS (used to verify stored rows)."""
    values = [row.get(name) for name in HASHED_FIELDS]
    values[0] = time_text or canonical_time(row["time"])
    return hash_values(values)
