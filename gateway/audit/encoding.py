"""Access rows encoded for the audit writer, in the requesting thread.

The writer thread is one per process and every request waits on it, so everything that
can be done before a row reaches it is done here, in the thread of the request that made
the row: the JSON text its chain hash starts with, and (PostgreSQL) the row's fields in
COPY's binary format. The writer then only appends the chain fields (chain_id, seq,
prev_hash, row_hash), hashes, and sends one buffer.

A request's rows share most of their values (time, subject, path, ...), so each distinct
value is encoded once per request, not once per row.

The binary format is PostgreSQL's documented COPY BINARY file format (a signature, a
header, then per tuple a 16-bit field count and each field as a 32-bit length, -1 for
NULL, and its binary value); psycopg's own row writer does the same per value, from
Python, in the writer thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from gateway.audit.chain import HASHED_FIELDS, ROW_FIELDS, canonical_time

COLUMNS = (*HASHED_FIELDS, "row_hash")
_INT4_FIELDS = frozenset({"policy_version", "upstream_status"})
_INT8_FIELDS = frozenset({"bytes"})

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
_FIELD_COUNT = struct.pack("!h", len(COLUMNS))
_NULL = struct.pack("!i", -1)
_LENGTH = struct.Struct("!i").pack
_INT4 = struct.Struct("!ii").pack
_INT8 = struct.Struct("!iq").pack
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_HEX_LENGTH = _LENGTH(64)


class UnloggableValue(ValueError):
    """A value PostgreSQL cannot store as text (a NUL character)."""


def _text(value: Any) -> bytes:
    if value is None:
        return _NULL
    data = value.encode()
    if b"\x00" in data:
        raise UnloggableValue("text with a NUL character cannot be stored")
    return _LENGTH(len(data)) + data


def _int4(value: Any) -> bytes:
    return _NULL if value is None else _INT4(4, value)


def _int8(value: Any) -> bytes:
    return _NULL if value is None else _INT8(8, value)


def _timestamptz(value: Any) -> bytes:
    if value.tzinfo is None:  # naive times are UTC, as canonical_time takes them
        value = value.replace(tzinfo=UTC)
    return _INT8(8, (value - _PG_EPOCH) // _MICROSECOND)


_ENCODERS: tuple[Callable[[Any], bytes], ...] = tuple(
    _timestamptz
    if name == "time"
    else _int4
    if name in _INT4_FIELDS
    else _int8
    if name in _INT8_FIELDS
    else _text
    for name in ROW_FIELDS
)


def copy_chain_fields(chain_id: bytes, seq: int, prev_hash: str, row_hash: str) -> bytes:
    """The four fields the writer appends to an encoded row (`chain_id` already encoded
    with `copy_text`); the hashes are 64 hex digits."""
    return b"%s%s%s%s%s%s" % (
        chain_id,
        _INT8(8, seq),
        _HEX_LENGTH,
        prev_hash.encode(),
        _HEX_LENGTH,
        row_hash.encode(),
    )


def copy_text(value: str) -> bytes:
    return _text(value)


class PreparedRow(NamedTuple):
    values: tuple[Any, ...]  # the ROW_FIELDS values, as stored (SQLite inserts these)
    hash_prefix: bytes  # orjson.dumps of the values (time as canonical text), no "]"
    copy_prefix: bytes | None  # field count + the ROW_FIELDS in COPY binary (PostgreSQL)


# ROW_FIELDS up to `path` are the request's own; the rest can differ from record to record.
_REQUEST_FIELDS = ROW_FIELDS.index("path") + 1


def prepare_rows(rows: list[dict[str, Any]], *, binary_copy: bool) -> list[PreparedRow]:
    """Each row's stored values, hash prefix and (for PostgreSQL) COPY encoding.

    The hash prefix is exactly `orjson.dumps` of the row's HASHED_FIELDS values up to
    `seq`, without the closing bracket (chain.hash_values): the hash definition does not
    change. Raises UnloggableValue for a value the store cannot hold.
    """
    prepared = []
    time_texts: dict[Any, str] = {}
    request_parts: dict[tuple[Any, ...], bytes] = {}
    record_parts: dict[tuple[int, type, Any], bytes] = {}
    try:
        for row in rows:
            prepared.append(_prepare(row, time_texts, request_parts, record_parts, binary_copy))
    except (TypeError, UnicodeEncodeError):  # orjson's JSONEncodeError is a TypeError
        # A lone surrogate in a string: not UTF-8, so it can be neither hashed nor stored.
        raise UnloggableValue("text that is not valid Unicode cannot be stored") from None
    return prepared


def _prepare(
    row: dict[str, Any],
    time_texts: dict[Any, str],
    request_parts: dict[tuple[Any, ...], bytes],
    record_parts: dict[tuple[int, type, Any], bytes],
    binary_copy: bool,
) -> PreparedRow:
    dumps, encoders, split = orjson.dumps, _ENCODERS, _REQUEST_FIELDS
    values = tuple([row[name] for name in ROW_FIELDS])
    stamp = values[0]
    time_text = time_texts.get(stamp) or time_texts.setdefault(stamp, canonical_time(stamp))
    hash_prefix = dumps([time_text, *values[1:]])[:-1]
    copy_prefix = None
    if binary_copy:
        head = values[:split]
        encoded = request_parts.get(head)
        if encoded is None:
            encoded = request_parts[head] = _FIELD_COUNT + b"".join(
                [encode(value) for encode, value in zip(encoders[:split], head, strict=True)]
            )
        fields = [encoded]
        for index in range(split, len(values)):
            value = values[index]
            # Keyed by type too: True == 1, yet they are different values.
            key = (index, type(value), value)
            field = record_parts.get(key)
            if field is None:
                field = record_parts[key] = encoders[index](value)
            fields.append(field)
        copy_prefix = b"".join(fields)
    return PreparedRow(values, hash_prefix, copy_prefix)
