"""Access rows prepared for the audit writer, in the requesting thread.

The writer thread is one per process and every request waits on it, so what can be done
before a row reaches it is done here, in the thread of the request that made the row:
picking the stored values, the JSON text the row's chain hash starts with, and refusing a
value the store cannot hold. The writer then only appends the chain fields (chain_id,
seq, prev_hash, row_hash), hashes and copies.

(Encoding whole rows in COPY's binary format here was tried too, with each distinct
value encoded once per request: from Python it cost four times what psycopg's C row
formatter costs in the writer, so the writer keeps using it.)
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from gateway.audit.chain import HASHED_FIELDS, ROW_FIELDS, canonical_time

COLUMNS = (*HASHED_FIELDS, "row_hash")
# One C-level call picks a row's ROW_FIELDS values.
_ROW_VALUES = itemgetter(*ROW_FIELDS)
# orjson writes a NUL character as this escape; the text is searched once per row and
# only rows that contain it are looked at value by value.
_ESCAPED_NUL = b"\\u0000"


class UnloggableValue(ValueError):
    """A value the access log cannot hold or hash."""


class PreparedRow(NamedTuple):
    values: tuple[Any, ...]  # the ROW_FIELDS values, as stored
    hash_prefix: bytes  # orjson.dumps of the values (time as canonical text), no "]"


def prepare_rows(rows: list[dict[str, Any]], *, refuse_nul: bool) -> list[PreparedRow]:
    """Each row's stored values and the JSON text its chain hash starts with.

    The text is exactly `orjson.dumps` of the row's HASHED_FIELDS values up to `seq`,
    without the closing bracket (chain.hash_values): the hash definition does not change.
    Raises UnloggableValue for text that is not valid Unicode (it can be neither hashed
    nor stored) and, with `refuse_nul` (PostgreSQL's text cannot hold it), for a NUL.
    """
    prepared = []
    time_texts: dict[Any, str] = {}
    row_values, dumps = _ROW_VALUES, orjson.dumps
    try:
        for row in rows:
            values = row_values(row)
            stamp = values[0]
            time_text = time_texts.get(stamp) or time_texts.setdefault(stamp, canonical_time(stamp))
            prefix = dumps([time_text, *values[1:]])[:-1]
            if refuse_nul and _ESCAPED_NUL in prefix and _has_nul(values):
                raise UnloggableValue("text with a NUL character cannot be stored")
            prepared.append(PreparedRow(values, prefix))
    except TypeError:  # orjson's JSONEncodeError: a lone surrogate is not UTF-8
        raise UnloggableValue("text that is not valid Unicode cannot be stored") from None
    return prepared


def _has_nul(values: tuple[Any, ...]) -> bool:
    return any(isinstance(value, str) and "\x00" in value for value in values)
